"""Gymnasium CarRacing-v3 with the seed's 2-D normalised action, and steps that skip drawing."""

from __future__ import annotations

from contextlib import contextmanager

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.car_racing import CarRacing

from nanodreamer.errors import UserError


class CarRacingAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Map (steer, throttle) in [-1, 1]^2 to CarRacing's (steer, gas, brake): throttle > 0 is
    gas in [0, max_gas], throttle < 0 brake in [0, 1]. `max_gas` < 1 caps the speed: 0.2 (the
    recipe's, the gas of CarRacing's discrete actions) makes a car that takes the bends."""

    def __init__(self, env: gym.Env, max_gas: float = 1.0):
        if not 0.0 < max_gas <= 1.0:
            raise UserError(f"max_gas must be in (0, 1], got {max_gas}: pick a gas cap like 0.2")
        gym.utils.RecordConstructorArgs.__init__(self, max_gas=max_gas)
        gym.ActionWrapper.__init__(self, env)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_gas = max_gas

    def action(self, action) -> np.ndarray:
        steer, throttle = np.clip(np.asarray(action, np.float32).reshape(2), -1.0, 1.0)
        gas, brake = self.max_gas * max(throttle, 0.0), max(-throttle, 0.0)
        return np.array([steer, gas, brake], np.float32)


def make_car_racing(max_gas: float = 1.0, **gym_kwargs) -> gym.Env:
    env = gym.make("CarRacing-v3", render_mode="rgb_array", continuous=True, **gym_kwargs)
    return CarRacingAction(env, max_gas)


# Drawing a frame is about 99% of a CarRacing step's time and changes neither the physics nor
# the reward, so steps whose frame nobody reads (the first repeats of an action repeat, the
# prefix a replay steps through) skip it.
@contextmanager
def frames_skipped(env: gym.Env):
    """Within: `env`'s steps return the last frame drawn instead of drawing a new one (a no-op
    for envs other than CarRacing, and inside another `frames_skipped`)."""
    base = env.unwrapped
    if type(base) is not CarRacing or "_render" in vars(base):
        yield
        return
    base._render = lambda mode: base.state.copy()  # a new array, as every step returns
    try:
        yield
    finally:
        del base._render


def tiles_visited(env: gym.Env) -> float:
    """The share of the track's tiles the car has visited (what its return pays for); nan for
    envs other than CarRacing."""
    base = env.unwrapped
    return base.tile_visited_count / len(base.track) if type(base) is CarRacing else float("nan")


def redrawn(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """The frame of `env`'s current state (through its observation wrappers), for `obs`
    returned by a step in `frames_skipped`."""
    base = env.unwrapped
    if type(base) is not CarRacing:
        return obs
    frame = base.state = base._render("state_pixels")
    wrappers = []
    while env is not base:
        if isinstance(env, gym.ObservationWrapper):
            wrappers.append(env)
        env = env.env
    for wrapper in reversed(wrappers):  # innermost first
        frame = wrapper.observation(frame)
    return frame
