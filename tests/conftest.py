import os

import numpy as np
import pytest
import torch

from nanodreamer.cli import main
from nanodreamer.data import EpisodeStore
from nanodreamer.tokenizer import TokenizerConfig


def synthetic_episode(length: int, episode: int, size: int = 8, action_dim: int = 2) -> dict:
    """Frames whose pixels spell (episode, t), so a window's origin can be read back."""
    t = np.arange(length)
    obs = np.zeros((length, size, size, 3), np.uint8)
    obs[..., 0] = episode
    obs[..., 1] = (t % 256)[:, None, None]
    obs[..., 2] = (t // 256)[:, None, None]
    rng = np.random.default_rng(episode)
    action = rng.uniform(-1, 1, (length, action_dim)).astype(np.float32)
    reward = rng.normal(size=length).astype(np.float32)
    action[0], reward[0] = 0, 0
    is_first = t == 0
    return {
        "obs": obs,
        "action": action,
        "reward": reward,
        "is_first": is_first,
        "is_terminal": np.zeros(length, bool),
    }


def make_store(path, lengths, size=8, action_dim=2) -> EpisodeStore:
    with EpisodeStore.create(
        path, env="synthetic", obs_shape=(size, size, 3), action_dim=action_dim
    ) as store:
        for i, length in enumerate(lengths):
            store.add(synthetic_episode(length, i, size, action_dim))
    return EpisodeStore(path)


@pytest.fixture
def synthetic_store(tmp_path):
    return make_store(tmp_path / "data", [40, 25, 60, 5, 33, 47])


TINY_TOKENIZER = TokenizerConfig(
    image_size=16, patch=4, n_latents=4, latent_dim=3, dim=32, heads=2, enc_depth=2,
    dec_depth=2, window=4,
)  # fmt: skip


def cli(command: str) -> None:
    """Run a `nanodreamer` command line in this process, with fast CPU test settings for
    training commands (paths must not contain spaces)."""
    words = command.split()
    if words[0] == "train":
        words += ["--workers", "0", "--no-tensorboard", "--batch-size", "2"]
    main(words)


def train_world_model(root, data, steps: int = 3) -> None:
    """root/tok and root/dyn: a tokenizer and a dynamics model trained for a few steps."""
    cli(f"train tokenizer --data {data} --out {root}/tok --steps {steps} --seq-len 4")
    cli(
        f"train dynamics --data {data} --tokenizer {root}/tok --out {root}/dyn --steps {steps} "
        "--seq-len 8 --long-seq-len 12"
    )


def pytest_collection_modifyitems(items):
    """Tests marked `long` (minutes each) run first, so with `-n 2 --dist worksteal` the other
    worker runs the rest of the suite beside them (stealing the tests queued behind them) and
    the suite ends when they do."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_configure(config):
    """One thread per test process (and for the processes tests start): `make test` runs two
    xdist workers on two cores, and a third thread would make the long test wait for a core.
    torch.compile's C++ builds run in the test's own process too (not a pool of workers)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    torch.set_num_threads(1)
