"""`nanodreamer pack` and `--pretrained`: trained models as a folder that works on its own."""

import json
import shutil

import pytest
from conftest import cli, train_world_model

from nanodreamer import pretrained as shipped
from nanodreamer.cli import build_parser, main
from nanodreamer.data import EpisodeStore
from nanodreamer.eval.agent import AgentPolicy, evaluate_agent
from nanodreamer.pipeline import record_acting
from nanodreamer.runs import load_world_model, read_run


def test_packed_run_works_alone_after_its_training_folders_are_gone(tmp_path, monkeypatch, capsys):
    train = tmp_path / "train"
    data = train / "data"
    cli(f"collect --env dot --episodes 8 --out {data} --workers 1")
    collected = {e["seed"] for e in EpisodeStore(data).episodes}
    train_world_model(train, data, steps=2)
    cli(f"train agent --data {data} --world-model {train}/dyn --out {train}/agent --steps 2")
    cli(
        f"train imagination --run {train}/agent --out {train}/im --steps 2 --horizon 2 "
        "--sampling-steps 1"
    )
    record_acting(train / "im", "greedy")  # as a rounds round records its choice
    main(["pack", "--run", str(train / "im"), "--out", str(tmp_path / "made"), "--episodes", "2"])
    folder = tmp_path / "shipped" / "dot-test"
    folder.parent.mkdir()
    (tmp_path / "made").rename(folder)
    shutil.rmtree(train)

    info = read_run(folder / "agent")
    assert info["tokenizer"] == str((folder / "tokenizer").resolve())
    assert len(EpisodeStore(info["data"])) == 2
    assert info["acting"] == "greedy" and AgentPolicy(folder / "agent").mode  # the round's choice
    assert not AgentPolicy(folder / "agent", mode=False).mode
    world = load_world_model(folder / "agent")
    assert world.dynamics.config.action_dim == 2
    results = evaluate_agent(folder / "agent", "dot", 2, random=False)
    assert not collected & set(results["seeds"])  # fresh seeds, though only 2 episodes shipped

    monkeypatch.setattr(shipped, "PRETRAINED", folder.parent)
    capsys.readouterr()
    cli("eval agent --pretrained dot-test --env dot --episodes 2 --json")
    printed = json.loads(capsys.readouterr().out)
    assert printed["episodes"] == 2 and "imagined_real_corr" in printed
    for flags, mode in (("", None), ("--mode", True), ("--sample", False)):
        args = build_parser().parse_args(f"eval agent --run r --env dot {flags}".split())
        assert args.mode is mode
    with pytest.raises(SystemExit):
        cli("eval agent --pretrained nope --env dot")
    assert "no pretrained models named 'nope': use one of dot-test" in capsys.readouterr().err


def test_the_shipped_car_racing_agent_acts_on_a_fresh_install():
    """`--pretrained car-racing` needs nothing but the package: its world model, tokenizer and
    episodes load, and it acts in the real env (its score is a benchmark: bench/RESULTS.md)."""
    folder = shipped.pretrained("car-racing")
    assert read_run(folder / "agent")["agent_config"]["action_bins"] == 8
    results = evaluate_agent(
        folder / "agent", "car-racing", 1, random=False, mode=True, max_episode_steps=80
    )
    assert results["episodes"] == 1 and results["env_options"]["action_repeat"] == 8
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert size < 10 * 2**20
