"""`nanodreamer data import video`: video files and folders of numbered frames as action-free
episodes, one per input. Each input is decoded whole (imageio and its ffmpeg plugin), its
frames centre-cropped to a square and resized with area averaging to `resolution`, and written
as one episode marked `actions: false`. An input that cannot be read is reported in one line
and skipped; the others still import.
"""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from nanodreamer.data.store import MANIFEST, EpisodeStore
from nanodreamer.errors import UserError

VIDEO_SUFFIXES = {".mp4", ".webm", ".gif", ".mkv", ".avi", ".mov", ".m4v"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
DEFAULT_RESOLUTION = 64


class UnreadableInput(UserError):
    """One input that cannot become an episode; the others still import."""


def import_videos(
    paths: list[str | Path], out: str | Path, resolution: int | None = None, progress=True
) -> tuple[list[int], list[str]]:
    """Import every input into the dataset `out` (created as env "video" with no actions, or
    appended to at its resolution) -> (new episode indices, one error line per failed input)."""
    inputs = _expand(paths)
    with _open_store(Path(out), resolution) as store:
        size = store.manifest["obs_shape"][0]
        zero_action = np.zeros((1, store.manifest["action_dim"]), np.float32)
        added, errors = [], []
        for source in tqdm(inputs, desc="import video", unit="file", disable=not progress):
            try:
                obs = _read(source, size)
            except UnreadableInput as err:
                errors.append(str(err))
                continue
            n = len(obs)
            episode = dict(obs=obs, action=zero_action.repeat(n, 0), reward=np.zeros(n, np.float32))
            episode |= dict(is_first=np.arange(n) == 0, is_terminal=np.zeros(n, bool))
            added.append(store.add(episode, actions=False, source=str(source)))
    return added, errors


def _expand(paths: list[str | Path]) -> list[Path]:
    """Inputs: video files, folders of frames, and folders of video files (one input each)."""
    inputs = []
    for path in map(Path, paths):
        if path.is_dir() and not _frame_files(path):
            inputs += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            inputs.append(path)
    if not inputs:
        shown = ", ".join(map(str, paths)) or "(none given)"
        raise UserError(f"no video files or frame folders in {shown}: give mp4/webm/gif files")
    return inputs


def _open_store(out: Path, resolution: int | None) -> EpisodeStore:
    if (out / MANIFEST).exists():
        manifest = EpisodeStore(out).manifest
        height, width, channels = manifest["obs_shape"]
        if resolution not in (None, height) or height != width or channels != 3:
            raise UserError(
                f"{out} holds {height}x{width}x{channels} frames: import {height}x{height} RGB "
                "(drop --resolution) or use a new --out folder"
            )
        spec = {k: manifest[k] for k in ("env", "env_options", "action_dim", "action_bins")}
        return EpisodeStore.create(out, obs_shape=(height, width, channels), **spec)
    size = resolution or DEFAULT_RESOLUTION
    if size < 8:
        raise UserError(f"--resolution must be at least 8 pixels, got {size}")
    return EpisodeStore.create(out, env="video", obs_shape=(size, size, 3), action_dim=0)


def _read(source: Path, size: int) -> np.ndarray:
    """All frames of one input as (T, size, size, 3) uint8."""
    if source.is_dir():
        files = _frame_files(source)
        if not files:
            raise UnreadableInput(f"{source} holds no frames (png, jpg, bmp, webp) or videos")
        frames = [_decode_image(file) for file in files]
        shapes = {f.shape[:2] for f in frames}
        if len(shapes) > 1:
            first, other = frames[0].shape[:2], next(s for s in shapes if s != frames[0].shape[:2])
            raise UnreadableInput(
                f"{source} mixes frame sizes ({first[1]}x{first[0]} and {other[1]}x{other[0]}): "
                "give one episode's frames one size"
            )
    else:
        if not source.is_file():
            raise UnreadableInput(f"{source} does not exist")
        try:
            frames = list(iio.imiter(source))
        except Exception as err:  # every decoder failure is one input's problem
            raise UnreadableInput(f"cannot decode {source}: {_first_line(err)}") from None
        if not frames:
            raise UnreadableInput(f"{source} has no frames")
    return np.stack([square(rgb(frame), size) for frame in frames])


def _frame_files(folder: Path) -> list[Path]:
    """Image files of a folder in frame order: by the last number in the name, then by name."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES]

    def order(path: Path):
        numbers = re.findall(r"\d+", path.stem)
        return (int(numbers[-1]) if numbers else -1, path.name)

    return sorted(files, key=order)


def _decode_image(file: Path) -> np.ndarray:
    try:
        return iio.imread(file)
    except Exception as err:
        raise UnreadableInput(f"cannot decode {file}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'unreadable'}"


def rgb(frame: np.ndarray) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3) or (H,W,4) frames of any integer or float range -> (H,W,3) uint8."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        top = 1.0 if frame.dtype.kind == "f" else np.iinfo(frame.dtype).max
        frame = np.clip(frame.astype(np.float64) / top * 255, 0, 255).round().astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[..., None]
    return np.broadcast_to(frame[..., :3], (*frame.shape[:2], 3)).copy()


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H,W,3) to a square, then resize to (size, size, 3) with area averaging."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(frame[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BOX))
