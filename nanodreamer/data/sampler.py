"""Training windows: fixed-length slices of T frames that never cross episode boundaries.

Item `i` of a `WindowDataset` is a pure function of (seed, i), so any number of loader workers
yields the same batches and a resumed run sees the same data as an uninterrupted one. Windows
are drawn uniformly over the split's start positions; an episode shorter than T gives one
window, zero-padded, `valid` False on the padding. `has_action` marks frames with a known
action (not an episode's first, not an action-free episode's). Episodes are read lazily
through a small LRU cache per worker, so datasets larger than RAM work.
"""

from __future__ import annotations

import itertools
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from nanodreamer.data.store import EpisodeStore
from nanodreamer.errors import UserError

VAL_FRACTION, CACHE_BYTES = 0.1, 1 << 30  # held-out episodes; decoded episodes kept per worker
# Env frames at the start of an episode that are not gameplay (car racing zooms in for ~50).
SETTLE_FRAMES = {"car-racing": 50}


def split_episodes(store: EpisodeStore, split: str) -> list[int]:
    """Indices of the episodes in `split` ("train", "val" or "all"), by a hash of each file
    name (or its `split_of`: frame episodes share their dataset episode's split), so a growing
    dataset never moves an episode. With two or more episodes, each split gets one at least."""
    if split == "all":
        return list(range(len(store)))
    keys = [e.get("split_of", e["file"]) for e in store.episodes]
    buckets = [zlib.crc32(key.encode()) % 10_000 / 10_000 for key in keys]
    val = [i for i, b in enumerate(buckets) if b < VAL_FRACTION]
    if len(store) >= 2:
        if not val:
            val = [i for i, b in enumerate(buckets) if b == min(buckets)]
        if len(val) == len(store):
            val = val[:-1]
    if split == "val":
        return val
    if split == "train":
        return [i for i in range(len(store)) if i not in set(val)]
    raise UserError(f"unknown split {split!r}: use train, val or all")


def settle_frames(store: EpisodeStore) -> int:
    """Stored frames to skip at an episode's start: `SETTLE_FRAMES` at the data's action repeat."""
    repeat = store.manifest["env_options"].get("action_repeat", 1)
    return -(-SETTLE_FRAMES.get(store.manifest["env"], 0) // repeat)


def spread_windows(store, length: int, count: int, split: str, span: int | None = None):
    """(episode, start) of windows of `length` frames, `count` spread evenly over the split's
    episodes (every episode's if the split is empty), after the settle frames where the
    episode is long enough and, with `span`, at most `span` frames later. Deterministic."""
    skip, episodes = settle_frames(store), split_episodes(store, split) or range(len(store))
    per_episode, windows = max(1, -(-count // len(episodes))), []
    for index in episodes:
        n = store.episodes[index]["length"]
        if n < length:
            continue
        first = skip if n >= skip + length else 0
        last = n - length if span is None else min(n - length, first + span)
        windows += [(index, int(s)) for s in np.linspace(first, last, per_episode).round()]
    return windows


def labelled_episodes(store, labelled_frac: float = 1.0, seed: int = 0) -> np.ndarray:
    """(episodes,) bool: the episodes whose actions training may read. `labelled_frac` < 1
    keeps round(F x labelled) of them, first in an order hashed from (seed, file name)."""
    if not 0.0 <= labelled_frac <= 1.0:
        raise UserError(f"labelled_frac must lie in [0, 1], got {labelled_frac}")
    labelled = np.array([e.get("actions", True) for e in store.episodes], bool)
    ids = np.flatnonzero(labelled)
    keys = [zlib.crc32(f"{seed}:{store.episodes[i]['file']}".encode()) for i in ids]
    hidden = ids[np.argsort(keys, kind="stable")][round(labelled_frac * len(ids)) :]
    labelled[hidden] = False
    return labelled


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset of windows; any index >= 0 is valid, `len()` (the split's frames) is
    a nominal epoch. `labelled` (episodes,) overrides which episodes have actions;
    `labelled_only` keeps only those (the agent phases)."""

    def __init__(self, source, seq_len: int, *, split="train", seed=0, keys=None, labelled=None,
                 labelled_only=False):  # fmt: skip
        """`source`: a dataset folder, an EpisodeStore or anything with its reading interface
        (a LatentStore); `keys`: those to read (default: all of the store's)."""
        self.store = EpisodeStore(source) if isinstance(source, str | Path) else source
        self.seq_len, self.seed = seq_len, seed
        self.keys = keys or self.store.keys
        self.labelled = labelled_episodes(self.store) if labelled is None else labelled
        self.episode_ids = split_episodes(self.store, split)
        if labelled_only:
            self.episode_ids = [i for i in self.episode_ids if self.labelled[i]]
        if not self.episode_ids:
            which = "action-labelled episodes" if labelled_only else "episodes"
            raise UserError(f"{source} has no {which} in the {split!r} split: collect more")
        lengths = self.store.lengths[self.episode_ids]
        self.starts_per_episode = np.maximum(lengths - seq_len + 1, 1)
        self.cumulative = np.cumsum(self.starts_per_episode)
        self.num_frames = int(lengths.sum())
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.num_frames

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index in the store, start frame) of window `index`."""
        rng = np.random.default_rng((self.seed, index))
        u = int(rng.integers(self.cumulative[-1]))
        k = int(np.searchsorted(self.cumulative, u, side="right"))
        start = u - (int(self.cumulative[k - 1]) if k else 0)
        return self.episode_ids[k], start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        episode_id, start = self.locate(index)
        episode = self._episode(episode_id)
        window = {k: v[start : start + self.seq_len] for k, v in episode.items()}
        length = len(next(iter(window.values())))
        valid = np.arange(self.seq_len) < length
        if length < self.seq_len:
            pad = lambda v: np.zeros((self.seq_len - length, *v.shape[1:]), v.dtype)  # noqa: E731
            window = {k: np.concatenate([v, pad(v)]) for k, v in window.items()}
        out = {k: torch.from_numpy(np.array(v)) for k, v in window.items()}  # copies memmaps
        out |= {"valid": torch.from_numpy(valid), "episode": torch.tensor(episode_id)}
        out["start"] = torch.tensor(start)
        if "is_first" in out:
            out["has_action"] = ~out["is_first"] & bool(self.labelled[episode_id])
        return out

    def _episode(self, episode_id: int) -> dict[str, np.ndarray]:
        if episode_id in self._cache:
            self._cache.move_to_end(episode_id)
            return self._cache[episode_id]
        episode = self.store.load(episode_id, self.keys)
        self._cache[episode_id] = episode
        self._cached_bytes += sum(v.nbytes for v in episode.values())
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= sum(v.nbytes for v in dropped.values())
        return episode


class StepSampler(torch.utils.data.Sampler):
    """Item indices for this rank, step after step: step s of rank r takes items
    (s * world + r) * batch_size + [0, batch_size)."""

    def __init__(self, start_step: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start_step, self.batch_size = start_step, batch_size
        self.rank, self.world = rank, world

    def __iter__(self):
        for step in itertools.count(self.start_step):
            first = (step * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return 1 << 62


def window_loader(dataset, batch_size: int, *, start_step=0, rank=0, world=1, workers=0):
    """Endless loader of batches; pass the step to resume from to continue the same stream."""
    sampler = StepSampler(start_step, batch_size, rank, world)
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    # its own generator leaves the global RNG alone, so resumed runs match
    return torch.utils.data.DataLoader(
        dataset, batch_size, sampler=sampler, generator=torch.Generator(), **options
    )
