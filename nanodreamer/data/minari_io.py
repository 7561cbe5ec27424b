"""Minari import and export (`pip install nanodreamer[minari]`).

Minari's alignment: observations o_0..o_N, actions a_0..a_{N-1}, and after each action a_i its
reward r_i, termination and truncation. Ours (SPEC): step t holds obs[t], the action that led
to it and the reward that came with it, step 0 a zero action and reward. So, exactly:

    obs[t] = o_t                  (t = 0..N)
    action[t], reward[t] = a_{t-1}, r_{t-1}   (t = 1..N; the normalised action)
    is_terminal[N] = terminations[N-1]; a last step that did not terminate was truncated

Actions are normalised to [-1, 1] as `envs.make` exposes them (a Box rescaled, Discrete(n) as
bin centres); image observations only. An export keeps our env name and options in its
metadata (key "nanodreamer") and the env spec that rebuilds it; a foreign dataset's env is
rebuilt from its spec's id and keyword arguments.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from nanodreamer import envs
from nanodreamer.data.store import MANIFEST, EpisodeStore
from nanodreamer.envs.wrappers import bin_centers, resize_frame
from nanodreamer.errors import UserError

METADATA_KEY = "nanodreamer"


def _minari():
    try:
        import minari  # optional: the [minari] extra
    except ImportError:
        raise UserError("Minari is not installed: pip install 'nanodreamer[minari]'") from None
    return minari


def export_minari(data: str | Path, dataset_id: str, progress: bool = True):
    """Write the dataset `data` as the local Minari dataset `dataset_id`; returns it."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer  # after _minari's check

    store = EpisodeStore(data)
    manifest = store.manifest
    if not store.labelled.all():
        raise UserError(
            f"{store.path} holds {int((~store.labelled).sum())} action-free episodes: Minari "
            "datasets need actions (export a dataset of collected episodes)"
        )
    if not len(store) or store.lengths.min() < 2:
        raise UserError(f"{store.path} has no episodes or one of a single frame: nothing to step")
    spec, obs_space = _env_spec(manifest), gym.spaces.Box(0, 255, manifest["obs_shape"], np.uint8)
    action_space = gym.spaces.Box(-1.0, 1.0, (manifest["action_dim"],), np.float32)
    buffers = []
    for i, entry in enumerate(tqdm(store.episodes, desc="export", disable=not progress)):
        ep = store.load(i)
        terminated, before = bool(ep["is_terminal"][-1]), [False] * (len(ep["reward"]) - 2)
        steps = dict(observations=ep["obs"], actions=ep["action"][1:], infos={})
        steps |= dict(
            rewards=ep["reward"][1:].astype(np.float64), terminations=before + [terminated]
        )
        steps["truncations"] = before + [not terminated]
        buffers.append(EpisodeBuffer(id=i, seed=entry.get("seed"), **steps))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari's "author is None" reminders
            about = f"{manifest['env']} episodes exported by nanodreamer from {store.path}"
            names = dict(
                algorithm_name="nanodreamer collect", author="nanodreamer", description=about
            )
            spaces = dict(env=spec, observation_space=obs_space, action_space=action_space)
            # jpeg_encoding off: lossless, the round trip gives the same frames
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, **spaces, **names, jpeg_encoding=False
            )
    except ValueError as err:
        raise UserError(f"Minari refused dataset id {dataset_id!r}: {err}") from None
    ours = {k: manifest[k] for k in ("env", "env_options", "action_bins")}
    dataset.storage.update_metadata({METADATA_KEY: json.dumps(ours)})
    return dataset


def _env_spec(manifest: dict) -> gym.envs.registration.EnvSpec | None:
    """The spec that rebuilds the dataset's env, when it is one `envs.make` knows and it has one
    frame stream (a multi-car env's views are separate episodes: no single env spec fits)."""
    try:
        env = envs.make(manifest["env"], **manifest["env_options"])
    except UserError:
        return None
    spec = env.spec if envs.num_streams(env) == 1 else None
    env.close()
    return spec


def import_minari(dataset_id: str, out: str | Path, progress: bool = True) -> EpisodeStore:
    """Import the local Minari dataset `dataset_id` into a new dataset folder `out`."""
    minari = _minari()
    out = Path(out)
    if (out / MANIFEST).exists():
        raise UserError(f"{out} is already a dataset: import into a new --out folder")
    try:
        dataset = minari.load_dataset(dataset_id)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"no local Minari dataset {dataset_id!r} ({err})") from None
    to_frames = _frame_converter(dataset.observation_space)
    to_actions, action_dim, bins = _action_converter(dataset.action_space)
    obs_shape = to_frames(np.zeros((1, *dataset.observation_space.shape), np.uint8)).shape[1:]
    spec = {"action_bins": bins} | _our_env(dataset)
    store = EpisodeStore.create(out, obs_shape=obs_shape, action_dim=action_dim, **spec)
    indices = list(dataset.episode_indices)
    metadata = list(dataset.storage.get_episode_metadata(indices))
    with store:
        episodes = zip(dataset.iterate_episodes(indices), metadata, strict=True)
        for episode, meta in tqdm(
            episodes, total=len(indices), desc="import", disable=not progress
        ):
            steps = len(episode.rewards)
            action = np.zeros((steps + 1, action_dim), np.float32)
            action[1:] = to_actions(np.asarray(episode.actions))
            info = {"seed": int(meta["seed"])} if meta.get("seed") is not None else {}
            ours = dict(obs=to_frames(np.asarray(episode.observations)), action=action)
            ours["reward"] = np.concatenate([[0.0], episode.rewards]).astype(np.float32)
            ours["is_first"] = np.arange(steps + 1) == 0
            ours["is_terminal"] = np.concatenate([[False], episode.terminations]).astype(bool)
            store.add(ours, minari_episode=int(episode.id), **info)
    return EpisodeStore(out)


def _frame_converter(space: gym.Space):
    """uint8 image observations (N+1, H, W[, C]) -> our (N+1, S, S, C) frames, resized the way
    `envs.make` resizes a non-square env."""
    if not envs.is_image_space(space):
        raise UserError(
            f"the dataset's observations are {space}: only uint8 images (H,W), (H,W,1) or "
            "(H,W,3) import (record the env with image observations)"
        )
    h, w = space.shape[:2]

    def convert(obs: np.ndarray) -> np.ndarray:
        obs = obs.reshape(len(obs), h, w, -1)
        return obs if h == w else np.stack([resize_frame(o, 64) for o in obs])

    return convert


def _action_converter(space: gym.Space):
    """(converter to normalised (N, A) actions, A, action bins) for the dataset's action space."""
    if isinstance(space, gym.spaces.Discrete):
        centers = bin_centers(int(space.n))
        return lambda a: centers[a.reshape(-1) - space.start][:, None], 1, [int(space.n)]
    if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)):
        low, high = space.low.reshape(-1), space.high.reshape(-1)

        def normalise(a: np.ndarray) -> np.ndarray:
            a = a.reshape(len(a), -1).astype(np.float64)
            if np.all(low == -1) and np.all(high == 1):
                return a.astype(np.float32)
            return np.clip(2 * (a - low) / (high - low) - 1, -1, 1).astype(np.float32)

        return normalise, len(low), None
    raise UserError(f"the dataset's actions are {space}: only Discrete and bounded Box import")


def _our_env(dataset) -> dict:
    """env, env_options (for `envs.make`) and, for our exports, action_bins: ours if we
    exported it, else the spec's id and keyword arguments."""
    metadata = dataset.storage.metadata
    if METADATA_KEY in metadata:
        return json.loads(metadata[METADATA_KEY])
    spec = dataset.spec.env_spec
    if spec is None:  # no env to rebuild: the data trains world models, `eval agent` refuses
        return {"env": f"minari:{dataset.spec.dataset_id}", "env_options": {}}
    if spec.additional_wrappers:
        names = ", ".join(w.name for w in spec.additional_wrappers)
        warnings.warn(
            f"{spec.id} was recorded with wrappers ({names}) that nanodreamer does not rebuild: "
            "evaluating in it uses the plain env",
            stacklevel=3,
        )
    return {"env": spec.id, "env_options": dict(spec.kwargs)}
