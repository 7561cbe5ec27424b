"""Tokenizer -> latent cache -> dynamics -> evaluation and imagination, through the CLI."""

import json

import numpy as np
import pytest
import torch
from conftest import cli, make_store, train_world_model

from nanodreamer.data.latents import LatentStore, encode_dataset
from nanodreamer.errors import UserError
from nanodreamer.runs import load_tokenizer, load_world_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = make_store(root / "data", [40, 36, 50, 44], size=16).path
    train_world_model(root, data)
    return root, data


def test_latent_cache_matches_tokenizer_and_is_reused(runs):
    root, data = runs
    folders = list((data / "latents").iterdir())
    assert len(folders) == 1
    store = LatentStore(folders[0])
    assert len(store) == 4 and store.lengths.tolist() == [40, 36, 50, 44]
    tokenizer = load_tokenizer(root / "tok")
    obs = torch.from_numpy(store.data[1]["obs"]).movedim(-1, -3).float()[None] / 255
    expected = tokenizer.encode(obs)[0].half().numpy()
    np.testing.assert_allclose(store.load(1)["latents"], expected, atol=2e-3)
    mtime = (folders[0] / "ep_000000.npy").stat().st_mtime_ns
    encode_dataset(data, root / "tok")
    assert (folders[0] / "ep_000000.npy").stat().st_mtime_ns == mtime


def test_eval_dynamics_json(runs, capsys):
    root, data = runs
    capsys.readouterr()
    trained = (root / "dyn" / "imagination.gif").read_bytes()
    cli(f"eval dynamics --run {root}/dyn --data {data} --json --windows 2 --context 4 --split all")
    results = json.loads(capsys.readouterr().out)
    # its own GIF: the one training wrote stays
    assert results["gif"] == str(root / "dyn" / "eval_imagination.gif")
    assert (root / "dyn" / "imagination.gif").read_bytes() == trained
    keys = "psnr_h1 psnr_h8 baseline_psnr_h8 ceiling_psnr_h8 shuffled_psnr_h8 fps fps_no_cache"
    for key in keys.split():
        assert np.isfinite(results[key]), key
    assert results["fps"] > 0


@pytest.mark.parametrize("suffix, actions", [(".gif", "recorded"), (".mp4", "random")])
def test_imagine_writes_video(runs, suffix, actions, capsys):
    import imageio.v3 as iio

    root, data = runs
    out = root / f"imagined{suffix}"
    cli(
        f"imagine --run {root}/dyn --data {data} --out {out} --frames 5 --actions {actions} "
        "--context 3 --samples 2"
    )
    video = iio.imread(out)
    assert video.shape[0] == 8 and video.shape[-1] == 3


def test_changed_tokenizer_is_refused(runs, tmp_path):
    import shutil

    root, data = runs
    shutil.copytree(root / "tok", tmp_path / "tok")
    shutil.copytree(root / "dyn", tmp_path / "dyn")
    info = json.loads((tmp_path / "dyn" / "run.json").read_text())
    info["tokenizer"] = str(tmp_path / "tok")
    (tmp_path / "dyn" / "run.json").write_text(json.dumps(info))
    load_world_model(tmp_path / "dyn")
    cli(f"train tokenizer --data {data} --out {tmp_path}/tok --steps 4 --seq-len 4 --resume")
    with pytest.raises(UserError, match="changed after"):
        load_world_model(tmp_path / "dyn")
    assert len(list((data / "latents").iterdir())) == 1  # a new cache only when asked for


def test_wrong_phase_and_bad_action_dims(runs, tmp_path):
    root, data = runs
    with pytest.raises(UserError, match="tokenizer run, but a dynamics run"):
        load_world_model(root / "tok")
    other = make_store(tmp_path / "three", [30, 30], size=16, action_dim=3).path
    with pytest.raises(UserError, match="3-D actions, the dynamics model 2-D"):
        from nanodreamer.dynamics import DYNAMICS_PRESETS
        from nanodreamer.train.dynamics import DynamicsPhase
        from nanodreamer.train.trainer import TrainConfig

        config = load_world_model(root / "dyn").dynamics.config
        DynamicsPhase(other, root / "tok", config, TrainConfig())
    assert DYNAMICS_PRESETS["base"].dim == 512 and DYNAMICS_PRESETS["base"].depth == 16


def test_action_bins_of_continuous_actions(runs, tmp_path):
    """`--action-bins` sets the bins of continuous actions (the agent's policy follows them);
    a discrete dataset's bins are its choices, and another count is refused."""
    root, data = runs
    cli(
        f"train dynamics --data {data} --tokenizer {root}/tok --out {tmp_path}/dyn --steps 2 "
        "--seq-len 4 --long-seq-len 0 --action-bins 8 --rollout-frac 0.5"
    )
    config = load_world_model(tmp_path / "dyn").dynamics.config
    assert config.action_bins == 8 and config.rollout_frac == 0.5
    cli(f"train agent --data {data} --world-model {tmp_path}/dyn --out {tmp_path}/agent --steps 1")
    agent = json.loads((tmp_path / "agent" / "run.json").read_text())
    assert agent["agent_config"]["action_bins"] == 8
    from nanodreamer.dynamics import DYNAMICS_PRESETS
    from nanodreamer.recipes import DynamicsSettings
    from nanodreamer.train.dynamics import dynamics_config_for

    def config_for(action_bins):
        settings = DynamicsSettings(action_bins=action_bins)
        return dynamics_config_for(latents, DYNAMICS_PRESETS["tiny"], settings, window=4)

    latents = encode_dataset(data, root / "tok")
    latents.data.manifest["action_bins"] = [2, 2]  # as a discrete dataset's manifest says
    assert config_for(None).action_bins == 2
    with pytest.raises(UserError, match="discrete actions with 2 choices: drop --action-bins 8"):
        config_for(8)
    latents.data.manifest["action_bins"] = None
    with pytest.raises(UserError, match="at least 2"):
        config_for(1)
