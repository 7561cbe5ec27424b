import numpy as np
import pytest
import torch
from conftest import make_store

from nanodreamer.data import EpisodeStore, WindowDataset, split_episodes, window_loader
from nanodreamer.data.sampler import settle_frames, spread_windows


def origin(window) -> tuple[np.ndarray, np.ndarray]:
    obs = window["obs"].numpy()
    return obs[:, 0, 0, 0], obs[:, 0, 0, 1].astype(int) + 256 * obs[:, 0, 0, 2].astype(int)


def test_windows_never_cross_episodes(synthetic_store):
    data = WindowDataset(synthetic_store.path, 16, split="all")
    lengths = synthetic_store.lengths
    for i in range(300):
        window = data[i]
        episode, t = origin(window)
        valid = window["valid"].numpy()
        assert (episode[valid] == window["episode"].item()).all()
        assert (np.diff(t[valid]) == 1).all() and t[0] == window["start"].item()
        assert t[valid][-1] < lengths[window["episode"].item()]
        assert window["is_first"][0].item() == (t[0] == 0)


def test_short_episode_padded_with_mask(tmp_path):
    store = make_store(tmp_path, [5])
    window = WindowDataset(store.path, 8, split="all")[0]
    assert window["valid"].tolist() == [True] * 5 + [False] * 3
    assert window["obs"].shape == (8, 8, 8, 3) and (window["obs"][5:] == 0).all()
    assert window["is_first"].tolist() == [True] + [False] * 7


def test_windows_cover_every_start_uniformly(tmp_path):
    store = make_store(tmp_path, [12, 6])
    data = WindowDataset(store.path, 4, split="all")
    counts = {}
    for i in range(4000):
        key = data.locate(i)
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 9 + 3  # every valid start of both episodes, nothing else
    assert max(counts.values()) / min(counts.values()) < 1.5


def test_deterministic_under_seed_and_workers(synthetic_store):
    def batches(workers, seed, start_step=0):
        data = WindowDataset(synthetic_store.path, 8, seed=seed)
        loader = window_loader(data, 4, start_step=start_step, workers=workers)
        out = []
        for i, batch in enumerate(loader):
            out.append(batch["obs"].clone())
            if i == 5:
                return out

    a, b, c = batches(0, 1), batches(2, 1), batches(0, 2)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))
    resumed = batches(0, 1, start_step=3)
    assert all((x == y).all() for x, y in zip(a[3:], resumed[:3], strict=True))
    rank0, rank1 = (
        iter(window_loader(WindowDataset(synthetic_store.path, 8, seed=1), 2, rank=r, world=2))
        for r in (0, 1)
    )
    first = torch.cat([next(rank0)["obs"], next(rank1)["obs"]])
    assert (first == a[0]).all()  # two ranks of batch 2 see exactly one batch of 4


def test_split_by_episode_disjoint_and_stable(tmp_path):
    store = make_store(tmp_path, [10] * 30)
    train, val = split_episodes(store, "train"), split_episodes(store, "val")
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(30))
    assert 1 <= len(val) <= 8
    train_windows = WindowDataset(store.path, 4, split="train")
    assert {train_windows.locate(i)[0] for i in range(500)} <= set(train)
    grown = make_store(tmp_path / "bigger", [10] * 40)
    assert set(val) <= set(split_episodes(grown, "val"))


def test_settle_frames_count_env_frames(tmp_path):
    """Car racing's zoom-in (50 env frames) is 7 stored frames at action repeat 8."""
    for options, skip in (({}, 50), ({"action_repeat": 8}, 7), ({"action_repeat": 4}, 13)):
        store = EpisodeStore.create(
            tmp_path / str(skip), env="car-racing", obs_shape=(8, 8, 3), action_dim=2,
            env_options=options,
        )  # fmt: skip
        assert settle_frames(store) == skip
        store.close()


def test_spread_windows_cover_the_split_evenly_inside_each_episode(synthetic_store):
    """Evaluation windows: as many per episode, first and last start included, none crossing
    an episode's end or starting past `span`; an empty split falls back to every episode."""
    store = synthetic_store
    windows = spread_windows(store, 10, 18, "all")  # 3 per episode
    per_episode = {i: [s for j, s in windows if j == i] for i in range(len(store))}
    assert per_episode[3] == []  # 5 frames: no 10-frame window
    for i, starts in per_episode.items():
        if store.lengths[i] >= 10:
            assert starts == [0, round((store.lengths[i] - 10) / 2), store.lengths[i] - 10]
    assert all(s <= 4 for _, s in spread_windows(store, 10, 12, "all", span=4))
    val = spread_windows(store, 10, 4, "val")
    assert {i for i, _ in val} <= set(split_episodes(store, "val"))
    assert {i for i, _ in spread_windows(store, 41, 4, "val")} <= {2, 5}  # long enough


def test_two_episodes_give_both_splits(tmp_path):
    store = make_store(tmp_path, [10, 10])
    assert len(split_episodes(store, "val")) == 1 and len(split_episodes(store, "train")) == 1
    with pytest.raises(ValueError, match="unknown split"):
        split_episodes(store, "test")


def test_has_action_false_on_first_frames_and_action_free_episodes(tmp_path):
    from conftest import synthetic_episode

    from nanodreamer.data import EpisodeStore

    with EpisodeStore.create(tmp_path, env="synthetic", obs_shape=(8, 8, 3), action_dim=2) as s:
        s.add(synthetic_episode(12, 0))
        free = synthetic_episode(12, 1)
        s.add(free | {"action": 0 * free["action"], "reward": 0 * free["reward"]}, actions=False)
    data = WindowDataset(tmp_path, 12, split="all")
    seen = {}
    for i in range(40):
        w = data[i]
        seen[int(w["episode"])] = w["has_action"]
        assert w["has_action"].tolist() == (~w["is_first"] & (w["episode"] == 0)).tolist()
    assert set(seen) == {0, 1} and seen[0][1:].all() and not seen[1].any()
    labelled = WindowDataset(tmp_path, 4, split="all", labelled_only=True)
    assert {int(labelled[i]["episode"]) for i in range(30)} == {0}


def test_labelled_frac_per_episode_and_deterministic(tmp_path):
    from nanodreamer.data.sampler import labelled_episodes

    store = make_store(tmp_path, [5] * 20)
    tenth = labelled_episodes(store, 0.1, seed=0)
    assert tenth.sum() == 2 and (tenth == labelled_episodes(store, 0.1, seed=0)).all()
    assert (tenth != labelled_episodes(store, 0.1, seed=1)).any()  # another seed, other ones
    half = labelled_episodes(store, 0.5, seed=0)
    assert half.sum() == 10 and half[tenth].all()  # a larger share keeps the smaller one's
    assert not labelled_episodes(store, 0.0).any() and labelled_episodes(store, 1.0).all()
    data = WindowDataset(store, 5, split="all", labelled=tenth)
    for i in range(50):
        w = data[i]
        assert w["has_action"][1:].all() == tenth[int(w["episode"])]
    with pytest.raises(Exception, match=r"labelled_frac must lie in \[0, 1\]"):
        labelled_episodes(store, 1.5)
