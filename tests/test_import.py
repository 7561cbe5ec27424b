"""Bringing data in: video files and frame folders as action-free episodes, Minari datasets
both ways, and action-free frames in dynamics training."""

import json

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import synthetic_episode

from nanodreamer.cli import main
from nanodreamer.data import EpisodeStore, WindowDataset, collect, verify
from nanodreamer.data.video import import_videos
from nanodreamer.errors import UserError

minari = pytest.importorskip("minari")  # the dev extra installs it


def moving_square(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """A bright square crossing a dark, textured background: (T, H, W, 3) uint8."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    clip[..., 2] = np.linspace(20, 120, width, dtype=np.uint8)
    for t in range(frames):
        x = 8 + 2 * t
        clip[t, 16:32, x : x + 16] = (230, 200, 40)
    return clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-10))


def expected_frames(clip: np.ndarray, size: int) -> np.ndarray:
    from nanodreamer.data.video import square

    return np.stack([square(frame, size) for frame in clip])


# video ----------------------------------------------------------------------------------------
def test_video_files_and_frame_folders_give_their_frames_back(tmp_path):
    clip = moving_square()
    iio.imwrite(tmp_path / "clip.mp4", clip, fps=10, codec="libx264", macro_block_size=1)
    iio.imwrite(tmp_path / "clip.gif", clip, duration=100, loop=0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(len(clip)):  # numbered, not zero-padded: frame_10 comes after frame_9
        iio.imwrite(folder / f"frame_{t}.png", clip[t])
    paths = [tmp_path / "clip.mp4", tmp_path / "clip.gif", folder]
    added, errors = import_videos(paths, tmp_path / "data", resolution=32, progress=False)
    assert errors == [] and added == [0, 1, 2]
    store = EpisodeStore(tmp_path / "data")
    assert store.manifest["env"] == "video" and store.manifest["obs_shape"] == [32, 32, 3]
    assert not store.labelled.any()
    truth = expected_frames(clip, 32)  # centre-cropped to 48x48, area-resized to 32x32
    mp4, gif, png = store[0], store[1], store[2]
    assert len(mp4["obs"]) == len(clip) and psnr(mp4["obs"], truth) > 30  # lossy codec
    assert psnr(gif["obs"], truth) > 30
    np.testing.assert_array_equal(png["obs"], truth)  # lossless
    for ep in (mp4, gif, png):
        assert not ep["action"].any() and not ep["reward"].any()
        assert ep["is_first"].tolist() == [True] + [False] * (len(clip) - 1)
        assert not ep["is_terminal"].any()


def test_bad_inputs_give_one_line_errors_and_the_rest_imports(tmp_path, capsys):
    clip = moving_square(6)
    iio.imwrite(tmp_path / "good.gif", clip, duration=100, loop=0)
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video at all" * 50)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "0.png", clip[0])
    iio.imwrite(mixed / "1.png", clip[1, :40])
    data = tmp_path / "data"
    words = ["data", "import", "video", f"{tmp_path}/broken.mp4", f"{tmp_path}/good.gif"]
    with pytest.raises(SystemExit) as exit_:
        main([*words, str(mixed), "--out", str(data)])
    assert exit_.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 2 and "cannot decode" in err[0] and "broken.mp4" in err[0]
    assert "mixes frame sizes (64x48 and 64x40)" in err[1]
    store = EpisodeStore(data)
    assert len(store) == 1 and store.episodes[0]["source"].endswith("good.gif")
    assert verify(data) == []  # nothing half-written
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no video files or frame folders"):
        import_videos([empty], data, progress=False)
    with pytest.raises(UserError, match="holds 64x64x3 frames"):
        import_videos([tmp_path / "good.gif"], data, resolution=32, progress=False)


def test_video_appended_to_a_labelled_dataset_trains_without_actions(tmp_path):
    """Imported into a dataset of collected episodes, video frames take its resolution and
    action size, and reach the dynamics loss with the no-action embedding only."""
    from nanodreamer.dynamics import Dynamics, DynamicsConfig
    from nanodreamer.train.dynamics import DynamicsObjective

    data = collect("dot", tmp_path / "data", 2, seed=0, progress=False).path
    iio.imwrite(tmp_path / "dot.gif", EpisodeStore(data)[0]["obs"][:20], duration=100, loop=0)
    import_videos([tmp_path / "dot.gif"], data, progress=False)
    store = EpisodeStore(data)
    assert store.labelled.tolist() == [True, True, False]
    config = DynamicsConfig(n_latents=4, latent_dim=3, dim=32, depth=2, heads=2, kv_heads=1,
                            window=4, action_dim=2, registers=1)  # fmt: skip
    model = Dynamics(config)
    windows = WindowDataset(store, 4, split="all", keys=("action", "is_first"))
    for labelled in (False, True):
        items = [w for w in map(windows.__getitem__, range(200))
                 if store.labelled[w["episode"]] == labelled][:4]  # fmt: skip
        batch = torch.utils.data.default_collate(items)
        batch["latents"] = torch.randn(len(items), 4, 4, 3)
        model.zero_grad()
        loss, _ = DynamicsObjective(model)(batch)
        loss.backward()
        assert model.action_base.grad.abs().sum() > 0
        assert (model.action_embed.weight.grad.abs().sum() > 0) == labelled


# Minari ---------------------------------------------------------------------------------------
@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


def test_minari_round_trip_is_exact_and_aligned_with_the_env(minari_home, capsys):
    data = collect("dot", minari_home / "data", 3, seed=0, progress=False).path
    main(f"data export minari {data} --dataset-id nanodreamer/dot-random-v0".split())
    dataset = minari.load_dataset("nanodreamer/dot-random-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 3 * 50
    env = dataset.recover_environment()  # gymnasium.make of the stored spec
    ours = EpisodeStore(data)
    metadata = dataset.storage.get_episode_metadata(dataset.episode_indices)
    for episode, meta, entry in zip(
        dataset.iterate_episodes(), metadata, ours.episodes, strict=True
    ):
        assert meta["seed"] == entry["seed"]
        obs, _ = env.reset(seed=int(meta["seed"]))
        np.testing.assert_array_equal(obs, episode.observations[0])
        for i, action in enumerate(episode.actions):  # a_i, then r_i, o_{i+1}
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_array_equal(obs, episode.observations[i + 1])
            assert reward == pytest.approx(episode.rewards[i])
            assert (terminated, truncated) == (episode.terminations[i], episode.truncations[i])
    main(f"data import minari nanodreamer/dot-random-v0 --out {minari_home}/back".split())
    back = EpisodeStore(minari_home / "back")
    assert back.manifest["env"] == "dot" and len(back) == 3
    for i in range(3):
        for key, value in ours[i].items():
            np.testing.assert_array_equal(back[i][key], value, err_msg=key)
        assert back.episodes[i]["seed"] == ours.episodes[i]["seed"]


def image_buffers(actions: list, size: int = 8):
    from minari.data_collector import EpisodeBuffer

    steps = len(actions)
    rng = np.random.default_rng(0)
    return [
        EpisodeBuffer(
            id=0,
            observations=rng.integers(0, 255, (steps + 1, size, size, 3), dtype=np.uint8),
            actions=np.array(actions),
            rewards=np.arange(steps, dtype=np.float64),
            terminations=[False] * (steps - 1) + [True],
            truncations=[False] * steps,
            infos={},
        )
    ]


def test_minari_foreign_discrete_and_box_actions_normalised(minari_home):
    obs_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    discrete = image_buffers([0, 2, 1])
    minari.create_dataset_from_buffers(
        "test/discrete-v0", discrete, observation_space=obs_space,
        action_space=gym.spaces.Discrete(3), jpeg_encoding=False,
    )  # fmt: skip
    from nanodreamer.data.minari_io import import_minari
    from nanodreamer.envs.wrappers import DiscreteAsBins, bin_centers

    store = import_minari("test/discrete-v0", minari_home / "d", progress=False)
    ep = store[0]
    np.testing.assert_allclose(ep["action"][1:, 0], bin_centers(3)[[0, 2, 1]])
    assert (
        store.manifest["action_bins"] == [3] and store.manifest["env"] == "minari:test/discrete-v0"
    )
    bins = DiscreteAsBins(gym.make("MountainCar-v0"))  # Discrete(3)
    assert [bins.action(a) for a in ep["action"][1:]] == [0, 2, 1]  # back to the choice
    np.testing.assert_array_equal(ep["reward"], [0, 0, 1, 2])
    assert ep["is_terminal"].tolist() == [False, False, False, True]
    np.testing.assert_array_equal(ep["obs"], discrete[0].observations)
    box = image_buffers(np.array([[0.0, 10.0], [5.0, 0.0]], np.float32))
    minari.create_dataset_from_buffers(
        "test/box-v0", box, observation_space=obs_space, jpeg_encoding=False,
        action_space=gym.spaces.Box(np.array([0, 0], np.float32), np.array([10, 10], np.float32)),
    )  # fmt: skip
    ep = import_minari("test/box-v0", minari_home / "b", progress=False)[0]
    np.testing.assert_allclose(ep["action"][1:], [[-1, 1], [0, -1]])


def test_minari_refuses_non_image_observations_and_action_free_data(minari_home):
    from minari.data_collector import EpisodeBuffer

    from nanodreamer.data.minari_io import export_minari, import_minari

    buffer = EpisodeBuffer(
        observations=np.zeros((3, 4), np.float32), actions=np.array([0, 1]),
        rewards=[1.0, 1.0], terminations=[False, True], truncations=[False, False], infos={},
    )  # fmt: skip
    minari.create_dataset_from_buffers("test/state-v0", [buffer], env="CartPole-v1")
    with pytest.raises(UserError, match=r"observations are Box\(.*only uint8 images"):
        import_minari("test/state-v0", minari_home / "s", progress=False)
    with EpisodeStore.create(
        minari_home / "v", env="video", obs_shape=(8, 8, 3), action_dim=2
    ) as s:
        ep = synthetic_episode(5, 0)
        s.add(ep | {"action": 0 * ep["action"], "reward": 0 * ep["reward"]}, actions=False)
    with pytest.raises(UserError, match="1 action-free episodes: Minari datasets need actions"):
        export_minari(minari_home / "v", "test/video-v0", progress=False)
    with pytest.raises(UserError, match="no local Minari dataset 'test/missing-v0'"):
        import_minari("test/missing-v0", minari_home / "m", progress=False)


def test_labelled_frac_recorded_and_hides_actions(tmp_path):
    from conftest import cli

    data = collect("dot", tmp_path / "data", 4, seed=0, progress=False).path
    cli(f"train tokenizer --data {data} --out {tmp_path}/tok --steps 1")
    cli(f"train dynamics --data {data} --tokenizer {tmp_path}/tok --out {tmp_path}/dyn "
        "--steps 1 --seq-len 4 --labelled-frac 0.5")  # fmt: skip
    run = json.loads((tmp_path / "dyn" / "run.json").read_text())
    assert run["train"]["labelled_frac"] == 0.5


def test_a_folder_of_mp4_files_to_a_world_model_you_can_play(tmp_path, capsys):
    """The README's worked example, at test scale: videos -> tokenizer + dynamics -> play."""
    import asyncio

    from aiohttp import WSMsgType
    from conftest import train_world_model
    from test_play import receive_until, serve_in_test

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        clip = np.roll(moving_square(30), 3 * i, axis=2)
        iio.imwrite(clips / f"clip{i}.mp4", clip, fps=10, codec="libx264", macro_block_size=1)
    main(f"data import video {clips} --out {tmp_path}/data --resolution 16".split())
    assert len(EpisodeStore(tmp_path / "data")) == 3
    train_world_model(tmp_path, tmp_path / "data", steps=2)

    async def check(http, url, shared):
        async with http.ws_connect(url + "/ws") as ws:
            assert (await receive_until(ws, "hello"))["action_dim"] == 0
            await ws.send_str('{"type": "action", "action": []}')
            await ws.send_str('{"type": "step"}')
            await receive_until(ws, "status")
            frame = await asyncio.wait_for(ws.receive(), timeout=30)
            while frame.type != WSMsgType.BINARY:
                frame = await asyncio.wait_for(ws.receive(), timeout=30)
            assert frame.data[:2] == b"\xff\xd8"  # an imagined frame, as a JPEG

    serve_in_test((tmp_path, tmp_path / "data"), check)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the agent phase needs actions and rewards
        main(f"train agent --data {tmp_path}/data --world-model {tmp_path}/dyn --out "
             f"{tmp_path}/agent --steps 1 --workers 0".split())  # fmt: skip
    assert "no action-labelled episodes" in capsys.readouterr().err
