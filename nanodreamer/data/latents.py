"""Latent cache: every episode encoded once by a frozen tokenizer, so dynamics training never
runs it. In `DATA/latents/<fingerprint of the tokenizer's weights>/` (a retrained tokenizer
gets a new cache): float16 `.npy` files, memory-mapped; the rest is read from the episodes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodreamer.data.store import EpisodeStore
from nanodreamer.errors import UserError
from nanodreamer.io import atomic_write, write_json
from nanodreamer.runs import fingerprint, load_tokenizer
from nanodreamer.tokenizer import TokenizerConfig, frames_from_uint8

LATENT_KEYS = ("latents", "action", "reward", "is_first", "is_terminal")


class LatentStore:
    """Read side of a latent cache; the same reading interface as EpisodeStore."""

    keys = LATENT_KEYS

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"{self.folder} is not a latent cache: run dynamics training")
        self.manifest = json.loads(manifest.read_text())
        self.data = EpisodeStore(self.manifest["data"])
        self._data_index = {e["file"]: i for i, e in enumerate(self.data.episodes)}
        known = [f for f in self.manifest["encoded"] if f in self._data_index]
        self.episodes = [self.data.episodes[self._data_index[f]] for f in known]

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([e["length"] for e in self.episodes], np.int64)

    def load(self, index: int, keys: tuple[str, ...] = LATENT_KEYS) -> dict[str, np.ndarray]:
        entry = self.episodes[index]
        out = {}
        if "latents" in keys:
            out["latents"] = np.load(self.folder / _latent_name(entry["file"]), mmap_mode="r")
        rest = tuple(k for k in keys if k != "latents")
        if rest:
            out.update(self.data.load(self._data_index[entry["file"]], rest))
        return out


def _latent_name(episode_file: str) -> str:
    return Path(episode_file).stem + ".npy"


@torch.no_grad()
def encode_dataset(
    data: str | Path, tokenizer_run: str | Path, device: str | torch.device = "cpu"
) -> LatentStore:
    """The latent cache of `data` under the tokenizer of `tokenizer_run`, encoding only the
    episodes not cached yet (so a killed run resumes, and new episodes are added)."""
    store = EpisodeStore(data)
    tokenizer = load_tokenizer(tokenizer_run, device)
    check_dataset_matches(store.path, tokenizer.config)
    folder = store.path / "latents" / fingerprint(tokenizer_run)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    c = tokenizer.config
    manifest = {"data": str(store.path.resolve()), "tokenizer": str(Path(tokenizer_run).resolve())}
    manifest |= {"n_latents": c.n_latents, "latent_dim": c.latent_dim, "encoded": []}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    done = set(manifest["encoded"])
    for index, entry in enumerate(tqdm(store.episodes, desc="encode latents", unit="ep")):
        if entry["file"] in done:
            continue
        obs = torch.from_numpy(store.load(index, ("obs",))["obs"])
        cache, chunks = tokenizer.new_cache(), []
        for chunk in obs.split(64):
            frames = frames_from_uint8(chunk.to(device))[None]
            chunks.append(tokenizer.encode(frames, cache)[0].half().cpu())
        latents = torch.cat(chunks).numpy()  # (T,N,Dl)
        atomic_write(folder / _latent_name(entry["file"]), functools.partial(np.save, arr=latents))
        manifest["encoded"].append(entry["file"])
        write_json(manifest_path, manifest)
    return LatentStore(folder)


def check_dataset_matches(data: Path, config: TokenizerConfig) -> None:
    shape = EpisodeStore(data).manifest["obs_shape"]
    expected = [config.image_size, config.image_size, config.channels]
    if shape != expected:
        raise UserError(
            f"{data} holds {'x'.join(map(str, shape))} frames but the tokenizer expects "
            f"{'x'.join(map(str, expected))}: collect at that resolution or change image_size"
        )
