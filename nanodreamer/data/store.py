"""Episode store: one compressed `.npz` file per episode plus a JSON manifest.

    manifest.json          env, spaces, resolution, counts, format version, one entry per episode
    episodes/ep_000000.npz obs (T,H,W,C uint8), action (T,A float32), reward (T float32),
                           is_first (T bool), is_terminal (T bool)

Alignment (SPEC): step t holds obs[t], the action that *led to* obs[t] and the reward received
with it; index 0 holds a zero action and reward, masked out of every loss. An action-free
episode (imported video; manifest `"actions": false`, format 1: none) holds zeros no loss reads.
Files are written to a temporary name and renamed, the manifest rewritten so after each
episode: a killed writer loses at most the episode in flight. A missing or corrupt file is
skipped with one warning line; `nanodreamer data verify DIR --repair` moves it to `DIR/corrupt/`.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from nanodreamer.errors import UserError
from nanodreamer.io import atomic_write, write_json

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no "actions" marker, every episode labelled
KEYS = ("obs", "action", "reward", "is_first", "is_terminal")
MANIFEST = "manifest.json"


class CorruptEpisodeError(UserError):
    """An episode file that cannot be read back (truncated, corrupt, inconsistent)."""


class EpisodeStore:
    """A folder of episodes; `len()`, indexing and iteration give dicts with exactly `KEYS`.
    Open one with `EpisodeStore(path)`, create or append with `EpisodeStore.create(path, ...)`."""

    keys = KEYS

    def __init__(self, path: str | Path, *, _writable: bool = False):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise UserError(f"{self.path} is not a dataset (no {MANIFEST}): collect one first")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            message = f"{manifest_path} is corrupt ({err}): restore it or re-collect"
            raise UserError(message) from None
        version = self.manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise UserError(
                f"{self.path} has dataset format {version}, this nanodreamer reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}: re-collect it or update nanodreamer"
            )
        self._lock = _acquire_lock(self.path) if _writable else None
        self.episodes = self._check_episode_files()

    @classmethod
    def create(cls, path, *, env: str, obs_shape: tuple, action_dim: int, action_bins=None,
               env_options=None) -> EpisodeStore:  # fmt: skip
        """Create a dataset, or open an existing one for appending if it holds the same env."""
        path = Path(path)
        spec = dict(env=env, env_options=env_options or {}, obs_shape=list(obs_shape))
        spec |= dict(action_dim=action_dim, action_bins=action_bins)
        try:
            (path / "episodes").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write dataset to {path}: {err.strerror}") from None
        if not os.access(path, os.W_OK) or not os.access(path / "episodes", os.W_OK):
            raise UserError(f"cannot write dataset to {path}: permission denied")
        if not (path / MANIFEST).exists():
            manifest = {"format_version": FORMAT_VERSION, **spec, "episodes": []}
            _write_manifest(path, manifest)
        store = cls(path, _writable=True)
        for key, value in spec.items():
            if store.manifest[key] != value:
                store.close()
                raise UserError(
                    f"{path} holds {key}={store.manifest[key]!r}, not {value!r}: "
                    "append only the same env and options, or use a new --out folder"
                )
        return store

    # reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.load(index)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([e["length"] for e in self.episodes], np.int64)

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def labelled(self) -> np.ndarray:
        """(episodes,) bool: whether each episode's actions (and rewards) are known."""
        return np.array([e.get("actions", True) for e in self.episodes], bool)

    def load(self, index: int, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
        """Read episode `index` (only `keys`); a damaged file raises CorruptEpisodeError."""
        entry = self.episodes[index]
        return load_episode_file(self.path / entry["file"], keys)

    # writing ---------------------------------------------------------------------------------
    def add(self, episode: dict[str, np.ndarray], *, actions: bool = True, **info) -> int:
        """Validate and write one episode atomically; `info` (seed, ...) goes to the manifest.
        `actions=False` marks an action-free episode (its action and reward must be zero)."""
        if self._lock is None:
            raise UserError(f"{self.path} was opened read-only: use EpisodeStore.create to append")
        episode = self._validate(episode)
        if not actions and (episode["action"].any() or episode["reward"].any()):
            raise UserError("an action-free episode must hold zero actions and rewards")
        numbers = (int(Path(e["file"]).stem.split("_")[1]) for e in self.episodes)  # ep_NNNNNN
        number = 1 + max(numbers, default=-1)
        relative = f"episodes/ep_{number:06d}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **episode)

        atomic_write(self.path / relative, write)
        self.episodes.append(self._entry(relative, episode, actions) | info)
        self.manifest["episodes"] = self.episodes
        _write_manifest(self.path, self.manifest)
        return len(self.episodes) - 1

    def annotate(self, **fields) -> None:
        """Add fields to the manifest (e.g. `collection_seeds`), written atomically."""
        if self._lock is None:
            raise UserError(f"{self.path} was opened read-only: use EpisodeStore.create to append")
        self.manifest.update(fields)
        _write_manifest(self.path, self.manifest)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # checks ----------------------------------------------------------------------------------
    def _validate(self, episode: dict) -> dict[str, np.ndarray]:
        if set(episode) != set(KEYS):
            raise UserError(f"an episode needs exactly the keys {KEYS}, got {tuple(episode)}")
        ep = {k: np.asarray(episode[k]) for k in KEYS}
        length = len(ep["reward"])
        shape = tuple(self.manifest["obs_shape"])
        if ep["obs"].dtype != np.uint8 or ep["obs"].shape != (length, *shape):
            raise UserError(
                f"obs must be uint8 of shape ({length}, {', '.join(map(str, shape))}), "
                f"got {ep['obs'].dtype} {ep['obs'].shape}"
            )
        action_shape = (length, self.manifest["action_dim"])
        if ep["action"].shape != action_shape:
            raise UserError(f"action must have shape {action_shape}, got {ep['action'].shape}")
        ep["action"] = ep["action"].astype(np.float32)
        if not np.all(np.abs(ep["action"]) <= 1.0):
            raise UserError(
                f"actions must lie in [-1, 1] (found {ep['action'].min():.3g}.."
                f"{ep['action'].max():.3g}): normalise them per dimension"
            )
        ep["reward"] = ep["reward"].astype(np.float32).reshape(length)
        for key in ("is_first", "is_terminal"):
            if ep[key].shape != (length,):
                raise UserError(f"{key} must have shape ({length},), got {ep[key].shape}")
            ep[key] = ep[key].astype(bool)
        if length < 1 or not ep["is_first"][0] or ep["is_first"][1:].any():
            raise UserError("is_first must be True at index 0 only (one episode per call)")
        if np.any(ep["action"][0] != 0) or ep["reward"][0] != 0:
            raise UserError("index 0 must hold a zero action and zero reward (SPEC alignment)")
        return ep

    def _check_episode_files(self) -> list[dict]:
        """Entries whose files exist with the recorded size, plus complete files the manifest
        missed (a writer killed between the rename and the manifest update)."""
        entries, known = [], set()
        for entry in self.manifest["episodes"]:
            known.add(entry["file"])
            file = self.path / entry["file"]
            size = file.stat().st_size if file.exists() else None
            if size != entry["bytes"]:
                problem = "missing" if size is None else f"{size} bytes, expected {entry['bytes']}"
                warnings.warn(
                    f"skipping episode {file} ({problem}): "
                    f"run `nanodreamer data verify {self.path} --repair`",
                    stacklevel=3,
                )
                continue
            entries.append(entry)
        for file in sorted((self.path / "episodes").glob("ep_*.npz")):
            relative = f"episodes/{file.name}"
            if relative in known:
                continue
            try:
                found = load_episode_file(file, ("action", "reward", "is_terminal"))
            except CorruptEpisodeError as err:
                warnings.warn(f"skipping {err}", stacklevel=3)
                continue
            # the marker was in the lost manifest entry: all-zero actions mean none
            entries.append(self._entry(relative, found, bool(found["action"].any())))
        return sorted(entries, key=lambda e: e["file"])

    def _entry(self, relative: str, episode: dict, actions: bool) -> dict:
        """The manifest entry of the episode (file) `relative`."""
        reward, ended = episode["reward"], bool(episode["is_terminal"][-1])
        size = (self.path / relative).stat().st_size
        entry = dict(file=relative, length=len(reward), bytes=size, actions=actions)
        return entry | {"return": float(reward.sum()), "terminated": ended}


def load_episode_file(file: Path, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
    """Read `keys` of one episode file; damage of any kind becomes one clear error line."""
    try:
        with np.load(file, allow_pickle=False) as data:
            episode = {k: data[k] for k in keys}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise CorruptEpisodeError(
            f"episode file {file} is truncated or corrupt ({type(err).__name__}: {err}); "
            f"run `nanodreamer data verify {file.parent.parent} --repair` to move it aside"
        ) from None
    lengths = {len(v) for v in episode.values()}
    if len(lengths) != 1:
        raise CorruptEpisodeError(f"episode file {file} has arrays of different lengths")
    return episode


def verify(path: str | Path, repair: bool = False) -> list[str]:
    """Fully read every episode; return the problems found. With `repair`, move damaged files
    to `path/corrupt/` and drop them from the manifest."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = EpisodeStore(path, _writable=repair)
    problems = [str(w.message) for w in caught]
    bad = {e["file"] for e in store.manifest["episodes"] if e not in store.episodes}
    for entry in store.episodes:
        try:
            load_episode_file(store.path / entry["file"])
        except CorruptEpisodeError as err:
            problems.append(str(err))
            bad.add(entry["file"])
    if repair and bad:
        (store.path / "corrupt").mkdir(exist_ok=True)
        for relative in bad:
            file = store.path / relative
            if file.exists():
                file.rename(store.path / "corrupt" / file.name)
        store.episodes = [e for e in store.episodes if e["file"] not in bad]
        store.manifest["episodes"] = store.episodes
        _write_manifest(store.path, store.manifest)
    store.close()
    return problems


def _write_manifest(path: Path, manifest: dict) -> None:
    """Write the manifest in the current format (a format-1 one gains the actions marker)."""
    for entry in manifest["episodes"]:
        entry.setdefault("actions", True)
    lengths = [e["length"] for e in manifest["episodes"]]
    manifest.update(
        format_version=FORMAT_VERSION, num_episodes=len(lengths), num_frames=int(sum(lengths))
    )
    write_json(path / MANIFEST, manifest)


def _acquire_lock(path: Path):
    lock = open(path / ".lock", "w")  # noqa: SIM115 - held open for the writer's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"{path} is being written by another process: wait for it") from None
    return lock


def summarize(store: EpisodeStore) -> dict:
    """Counts and statistics of a dataset (what `nanodreamer data info` prints)."""
    lengths = store.lengths
    returns = np.array([e["return"] for e in store.episodes], np.float64)
    labelled = np.flatnonzero(store.labelled)
    actions = [store.load(int(i), ("action",))["action"][1:] for i in labelled]
    actions = np.concatenate(actions) if actions else np.zeros((0, store.manifest["action_dim"]))

    def stats(x: np.ndarray) -> dict:
        names = ("mean", "std", "min", "max")
        return {k: getattr(x, k)(0).tolist() if x.size else None for k in names}

    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    spec = ("env", "env_options", "obs_shape", "action_dim", "action_bins")
    terminated = sum(e["terminated"] for e in store.episodes)
    summary = {"path": str(store.path)} | {key: store.manifest[key] for key in spec}
    summary |= {"episodes": len(store), "labelled_episodes": int(store.labelled.sum())}
    summary |= {"frames": int(lengths.sum()), "terminated_episodes": terminated}
    summary |= {
        "episode_length": stats(lengths.astype(np.float64)),
        "episode_return": stats(returns),
    }
    return summary | {"action": stats(actions), "bytes_on_disk": size}
