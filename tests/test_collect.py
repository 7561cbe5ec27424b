import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nanodreamer import envs
from nanodreamer.cli import main
from nanodreamer.data import EpisodeStore, RandomPolicy, collect, split_episodes, verify
from nanodreamer.data.collect import random_policy
from nanodreamer.errors import UserError

SHORT = {"max_episode_steps": 40}


def test_replaying_recorded_actions_reproduces_frames(tmp_path):
    """Alignment: action[t] led to obs[t] and reward[t]; index 0 is the reset frame."""
    store = collect("car-racing", tmp_path, 2, workers=2, seed=5, env_options=SHORT)
    for entry, episode in zip(store.episodes, store, strict=True):
        assert episode["is_first"][0] and not episode["is_first"][1:].any()
        assert (episode["action"][0] == 0).all() and episode["reward"][0] == 0
        env = envs.make("car-racing", **SHORT)
        obs, _ = env.reset(seed=entry["seed"])
        np.testing.assert_array_equal(obs, episode["obs"][0])
        for t in range(1, len(episode["obs"])):
            obs, reward, terminated, truncated, _ = env.step(episode["action"][t])
            np.testing.assert_array_equal(obs, episode["obs"][t])
            assert reward == pytest.approx(episode["reward"][t], abs=1e-5)
            assert terminated == episode["is_terminal"][t]
        assert truncated or terminated
        env.close()


def test_frames_keep_every_stepped_frame_of_the_same_episodes(tmp_path):
    """`collect --frames`: each episode's every frame (all repeats), one action-free episode per
    phase of the repeat; the dataset itself is the one collected without it."""
    options = "--env car-racing --episodes 2 --workers 2 --action-repeat 4 --max-episode-steps 42"
    main(f"collect {options} --out {tmp_path / 'a'} --frames {tmp_path / 'f'}".split())
    main(f"collect {options} --out {tmp_path / 'b'}".split())
    data, frames, plain = (EpisodeStore(tmp_path / name) for name in "afb")
    assert list(frames.lengths) == [11, 11, 11, 10] * 2 and not frames.labelled.any()
    assert [e["phase"] for e in frames.episodes] == [0, 1, 2, 3] * 2
    assert frames.manifest["env_options"] == data.manifest["env_options"]  # phases step as data
    assert split_episodes(frames, "val") == [
        4 * k + p for k in split_episodes(data, "val") for p in range(4)
    ]
    for k in range(2):
        obs, phases = data[k]["obs"], [frames[4 * k + p]["obs"] for p in range(4)]
        np.testing.assert_array_equal(obs, plain[k]["obs"])
        np.testing.assert_array_equal(obs[:-1], phases[0])  # decision t: frame 4t
        np.testing.assert_array_equal(obs[-1], phases[2][-1])  # frame 42: cut after 2 repeats
        assert {e["seed"] for e in frames.episodes[4 * k : 4 * k + 4]} == {data.episodes[k]["seed"]}


def test_append_gives_new_episodes(tmp_path):
    collect("car-racing", tmp_path, 1, seed=0, env_options=SHORT, progress=False)
    store = collect("car-racing", tmp_path, 2, seed=0, env_options=SHORT, progress=False)
    assert len(store) == 3 and len({e["seed"] for e in store.episodes}) == 3
    assert not np.array_equal(store[0]["action"], store[1]["action"])
    with pytest.raises(UserError, match="env_options"):
        collect("car-racing", tmp_path, 1, env_options={"max_episode_steps": 41})


def test_random_policy_holds_actions():
    policy = RandomPolicy(1, 2, hold=4, seed=0)
    actions = np.stack([policy.act(None, np.array([t == 0]))[0] for t in range(200)])
    assert np.abs(actions).max() <= 1
    changes = (np.diff(actions, axis=0) != 0).any(1).sum()
    assert 199 / 4 <= changes <= 199 / 1.5


def test_random_policy_per_env():
    """Car racing: held actions, mostly throttle; dot: a fresh action every step."""
    car = random_policy("car-racing", 1, 2, seed=0)
    dot = random_policy("dot", 1, 2, seed=0)
    car_actions = np.stack([car.act(None, np.array([t == 0]))[0] for t in range(100)])
    dot_actions = np.stack([dot.act(None, np.array([t == 0]))[0] for t in range(100)])
    assert car_actions[:, 1].min() >= -0.3 and (np.diff(car_actions, axis=0) == 0).all(1).any()
    assert (np.diff(dot_actions, axis=0) != 0).all()


def test_cli_collect_then_info(tmp_path, capsys):
    out = str(tmp_path / "D")
    main(
        [
            "collect",
            "--env",
            "car-racing",
            "--episodes",
            "2",
            "--out",
            out,
            "--max-episode-steps",
            "30",
        ]
    )
    capsys.readouterr()
    main(["data", "info", out, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["frames"] == 62


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "--env", "nope", "--episodes", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown environment 'nope'") and err.count("\n") == 1
    blocked = tmp_path / "ro"
    blocked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root may write anywhere
        with pytest.raises(SystemExit):
            main(["collect", "--episodes", "1", "--out", str(blocked / "x")])
        assert "cannot write dataset" in capsys.readouterr().err
    file_in_the_way = tmp_path / "file"
    file_in_the_way.write_text("x")
    with pytest.raises(SystemExit):
        main(["collect", "--episodes", "1", "--out", str(file_in_the_way / "x")])
    assert "cannot write dataset" in capsys.readouterr().err


def test_sigkill_mid_collection_leaves_loadable_dataset(tmp_path):
    command = [sys.executable, "-m", "nanodreamer", "collect", "--episodes", "1000"]
    command += ["--out", str(tmp_path), "--max-episode-steps", "15", "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        manifest = tmp_path / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["num_episodes"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = EpisodeStore(tmp_path)
    assert len(store) >= 3
    assert verify(tmp_path) == []
    assert all(len(ep["obs"]) == 16 for ep in store)
    more = collect("car-racing", tmp_path, 1, env_options=store.manifest["env_options"])
    assert len(more) == len(store) + 1
