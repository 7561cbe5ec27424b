"""`nanodreamer rounds`: collect -> train -> evaluate, round after round, in one folder."""

import json

import pytest

from nanodreamer.cli import main
from nanodreamer.data import EpisodeStore
from nanodreamer.recipes import RoundsConfig
from nanodreamer.runs import read_run


def test_two_rounds_grow_the_data_continue_the_weights_and_resume(tmp_path, capsys):
    out = tmp_path / "rounds"
    command = (
        f"rounds --out {out} --env dot --rounds 2 --first-episodes 4 --episodes-per-round 4 "
        "--random-share 0.25 --minutes 0.1 --eval-episodes 2 --workers 1 --max-episode-steps 48 "
        "--first-minutes 0.12 --action-repeat 2 --window 4 --rollout-frac 0.5"
        " --recipe car-racing"
    ).split()  # the rest: the car-racing recipe's defaults
    main(command)
    printed = capsys.readouterr().out
    assert "round 0: imagination" in printed and "round 1: imagination" in printed
    store = EpisodeStore(out / "data")
    assert "max_gas" not in store.manifest["env_options"]  # car racing's gas cap is its own
    policies = [e["policy"] for e in store.episodes]
    first_policy = str((out / "round_0" / "imagination").resolve())
    assert policies == ["random"] * 5 + [first_policy] * 3  # 4 first, then 1 random + 3 policy
    for phase in ("dynamics", "agent", "imagination"):
        run = read_run(out / "round_1" / phase)
        assert run["finished"] and run["init"] == str((out / "round_0" / phase).resolve())
        assert read_run(out / "round_0" / phase)["init"] is None
    world = read_run(out / "round_1" / "dynamics")["model_config"]
    assert (world["action_bins"], world["window"], world["rollout_frac"]) == (8, 4, 0.5)
    settings = read_run(out / "round_1" / "imagination")["imagination"]
    assert (settings["horizon"], settings["sampling_steps"], settings["prior"]) == (3, 2, "data")
    assert read_run(out / "round_1" / "agent")["value_gamma"] == 0.9
    assert read_run(out / "tokenizer")["train"]["minutes"] == pytest.approx(0.12 * 0.3)
    assert not (out / "round_1" / "tokenizer").exists()  # frozen after round 0
    frames = EpisodeStore(out / "frames")  # round 0's every stepped frame: the tokenizer's data
    assert len(frames) == 8 and 0 < 2 * store.lengths[:4].sum() - frames.frames <= 8
    assert read_run(out / "tokenizer")["data"] == str((out / "frames").resolve())
    results = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in results] == [0, 1]
    keys = {"return_mean", "sampled_return_mean", "bc_best_return_mean", "random_return_mean"}
    real_env = results[1]["real_env"]
    assert keys | {"greedy_return_mean", "acting_returns", "acting_frames"} <= set(real_env)
    acting = real_env["acting"]  # the better mode on the validation seeds, then the headline
    assert acting == max(real_env["acting_returns"], key=real_env["acting_returns"].get)
    assert real_env["return_mean"] == real_env[f"{acting}_return_mean"]
    assert read_run(out / "round_1" / "imagination")["acting"] == acting  # eval agent follows it
    assert not set(real_env["seeds"]) & {e["seed"] for e in store.episodes}
    assert f"(acting {acting})" in printed
    assert (out / "learning_curve.png").stat().st_size > 0
    # rerun: everything done is kept; a lost evaluation and an unfinished phase are redone
    (out / "round_1" / "eval.json").unlink()
    run_json = out / "round_1" / "imagination" / "run.json"
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"finished": False}))
    metrics = (out / "round_1" / "dynamics" / "metrics.jsonl").read_text()
    figures = (out / "round_1" / "dynamics.json").stat().st_mtime_ns
    main(command)
    assert (out / "round_1" / "dynamics" / "metrics.jsonl").read_text() == metrics
    assert (out / "round_1" / "dynamics.json").stat().st_mtime_ns == figures  # not measured again
    assert read_run(out / "round_1" / "imagination")["finished"]
    assert read_run(out / "round_1" / "imagination")["acting"] == acting
    assert (out / "round_1" / "eval.json").exists() and len(EpisodeStore(out / "data")) == 8


def test_the_gas_cap_is_car_racings_alone(tmp_path, capsys):
    collect = RoundsConfig().collect
    assert collect.options("car-racing")["max_gas"] == 0.2
    assert collect.options("dot") == {"action_repeat": 8, "max_episode_steps": 400}
    for command in ("rounds", "collect --episodes 1"):
        with pytest.raises(SystemExit):
            main(f"{command} --env dot --out {tmp_path / 'x'} --max-gas 0.5".split())
        assert "--max-gas is for --env car-racing only" in capsys.readouterr().err


def test_any_gymnasium_pixel_env_runs_on_a_recipe_derived_from_its_spaces(tmp_path):
    """Pendulum-v1 (rendered 500x500 frames, a continuous torque, 200-step episodes): no
    setting flag, only a budget of seconds."""
    out = tmp_path / "pendulum"
    main(
        f"rounds --env Pendulum-v1 --out {out} --rounds 1 --first-steps 500 --first-minutes 0.1 "
        "--eval-episodes 1 --workers 1 --no-figures".split()
    )
    store = EpisodeStore(out / "data")
    assert store.manifest["obs_shape"] == [64, 64, 3] and store.manifest["env_options"] == {
        "action_repeat": 1, "resolution": 64}  # fmt: skip
    assert sum(e["length"] - 1 for e in store.episodes) == 500
    assert read_run(out / "round_0" / "dynamics")["model_config"]["action_bins"] == 8
    real_env = json.loads((out / "rounds.json").read_text())[0]["real_env"]
    assert real_env["random_return_mean"] < 0 and len(real_env["returns"]) == 1


def test_the_same_seed_gives_the_same_figures(tmp_path):
    """`rounds --seed S` with step budgets: two runs agree on every figure but the timings;
    another seed collects other episodes."""

    def run(name: str, seed: int) -> dict:
        main(
            f"rounds --recipe dot --out {tmp_path / name} --rounds 2 --first-episodes 4 "
            f"--episodes-per-round 2 --train-steps 3 --eval-episodes 2 --workers 1 "
            f"--no-figures --seed {seed}".split()
        )
        return json.loads((tmp_path / name / "rounds.json").read_text())

    def untimed(figures):  # every figure but the measured speeds and the folder's path
        if isinstance(figures, dict):
            return {k: untimed(v) for k, v in figures.items() if "fps" not in k and k != "path"}
        return [untimed(f) for f in figures] if isinstance(figures, list) else figures

    first, again = run("a", 1), run("b", 1)
    assert untimed(first) == untimed(again)
    assert first[1]["real_env"]["returns"] == again[1]["real_env"]["returns"]
    assert json.loads((tmp_path / "a" / "rounds_config.json").read_text())["seed"] == 1
    from nanodreamer.pipeline import _collect
    from nanodreamer.recipes import recipe

    other = RoundsConfig(**{**vars(recipe("dot")), "seed": 2, "first_episodes": 4, "workers": 1})
    _collect(tmp_path / "c" / "data", other, 0)
    seeds = [[e["seed"] for e in EpisodeStore(tmp_path / n / "data").episodes[:4]] for n in "ac"]
    assert not set(seeds[0]) & set(seeds[1])
