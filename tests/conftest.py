import numpy as np
import pytest

from nanodreamer.data import EpisodeStore


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
