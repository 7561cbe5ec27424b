"""Environments: `make(name, **options)` returns a Gymnasium env with uint8 HxWxC frames and
actions normalised to [-1, 1] per dimension.

Names: "car-racing" (CarRacing-v3, 96x96, action: steer, throttle), "multi-car-racing" (N cars
on one track, each car's stream one episode), "dot" (the CPU-scale test bed), an Atari game
(`atari:Boxing` or `ALE/Boxing-v5`: `envs.atari`), or any Gymnasium id (also `module:EnvId`)
with image observations or `rgb_array` frames (resized to `resolution`).

Every env is built by `gymnasium.make` (ours registered as `nanodreamer/Dot-v0` and
`nanodreamer/MultiCarRacing-v0`) and every wrapper records its arguments, so
`gymnasium.make(env.spec)` rebuilds the same env (what a Minari dataset stores).
"""

from __future__ import annotations

import functools
import importlib

import gymnasium as gym
import numpy as np

from nanodreamer.envs.atari import atari_id, make_atari
from nanodreamer.envs.car_racing import make_car_racing
from nanodreamer.envs.multi_car_racing import MultiCarRacing
from nanodreamer.envs.wrappers import ActionRepeat, ColorChannels, DiscreteAsBins, ResizeImage
from nanodreamer.errors import UserError

gym.register("nanodreamer/Dot-v0", "nanodreamer.envs.dot:DotEnv", max_episode_steps=50)
# per-car reward arrays are by design: Gymnasium's passive checker wants a float
gym.register("nanodreamer/MultiCarRacing-v0", "nanodreamer.envs.multi_car_racing:MultiCarRacing",
             max_episode_steps=1000, disable_env_checker=True)  # fmt: skip
NAMED = {
    "car-racing": make_car_racing,
    "dot": functools.partial(gym.make, "nanodreamer/Dot-v0"),
    "multi-car-racing": functools.partial(gym.make, "nanodreamer/MultiCarRacing-v0"),
}

# The random policy's action range where [-1, 1] explores badly: a car that brakes half the
# time barely moves, so random car-racing data uses throttle in [-0.3, 1] (mostly gas).
RANDOM_ACTION_RANGE = dict.fromkeys(("car-racing", "multi-car-racing"), ((-1.0, -0.3), (1.0, 1.0)))
# How many steps the random policy holds an action at most (default 8, so a car really turns).
# On the dot's small grid held actions pin the dot to a wall: fresh actions every step make
# a random walk that visits every cell and move.
RANDOM_HOLD = {"dot": 1}


def make(name: str, *, resolution=None, action_repeat=1, keep_frames=False, **options) -> gym.Env:
    """Create environment `name`; `options` go to its constructor (gym.make for Gymnasium ids).
    `keep_frames`: steps also return every repeat's frame (`ActionRepeat`)."""
    if atari_id(name):
        env = make_atari(name, **options)
    else:
        env = NAMED[name](**options) if name in NAMED else _make_gym(name, options)
    repeat = action_repeat != 1 or keep_frames
    if isinstance(env.unwrapped, MultiCarRacing):  # already per-car frames and actions
        if resolution not in (None, env.observation_space.shape[1]):
            raise UserError(f"{name} renders {env.observation_space.shape[1]}px views only")
        return ActionRepeat(env, action_repeat, keep_frames) if repeat else env
    if not is_image_space(env.observation_space):
        raise UserError(f"environment {name!r} does not produce uint8 image observations")
    env = ColorChannels(env)
    if resolution is not None or env.observation_space.shape[0] != env.observation_space.shape[1]:
        env = ResizeImage(env, resolution or 64)
    env = _normalised_actions(env, name)
    if repeat:
        env = ActionRepeat(env, action_repeat, keep_frames)
    return env


def num_streams(env: gym.Env) -> int:
    """Frame streams per env step: the number of cars of a multi-car env, else 1."""
    return getattr(env.unwrapped, "num_cars", 1)


def action_bins(env: gym.Env) -> list[int] | None:
    """Bins per action dimension for a discrete env, None for continuous actions."""
    try:
        return env.get_wrapper_attr("action_bins")
    except AttributeError:
        return None


def _make_gym(name: str, options: dict) -> gym.Env:
    """A Gymnasium id, or Gymnasium's `module:EnvId` form: the module (a plugin such as ale_py)
    is imported first, so that it registers its ids."""
    module, _, env_id = name.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"cannot import {module!r} for environment {name!r}: {err}") from None
    if env_id not in gym.registry:
        known = ", ".join(sorted(NAMED))
        raise UserError(f"unknown environment {name!r}: use one of {known} or a Gymnasium id")
    env = gym.make(env_id, **options)
    if is_image_space(env.observation_space):
        return env
    env.close()
    if "rgb_array" not in env.metadata.get("render_modes", []):
        raise UserError(
            f"environment {name!r} has no image observation and cannot render rgb_array frames: "
            "pick an environment with pixel observations"
        )
    env = gym.make(env_id, render_mode="rgb_array", **options)
    return gym.wrappers.AddRenderObservation(env, render_only=True)


def is_image_space(space: gym.Space) -> bool:
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8:
        return False
    return len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3))


def _normalised_actions(env: gym.Env, name: str) -> gym.Env:
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return DiscreteAsBins(env)
    if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)):
        unit = np.all(space.low == -1) and np.all(space.high == 1)
        return env if unit else gym.wrappers.RescaleAction(env, -1.0, 1.0)
    raise UserError(
        f"environment {name!r} has action space {space}: only Discrete and bounded Box "
        "action spaces are supported"
    )
