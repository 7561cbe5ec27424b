"""Gymnasium CarRacing-v3 with the seed's 2-D normalised action."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CarRacingAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Map (steer, throttle) in [-1, 1]^2 to CarRacing's (steer, gas, brake).

    throttle > 0 is gas in [0, 1]; throttle < 0 is brake in [0, 1]; the two never act at once.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action(self, action) -> np.ndarray:
        steer, throttle = np.clip(np.asarray(action, np.float32).reshape(2), -1.0, 1.0)
        return np.array([steer, max(throttle, 0.0), max(-throttle, 0.0)], np.float32)


def make_car_racing(**gym_kwargs) -> gym.Env:
    env = gym.make("CarRacing-v3", render_mode="rgb_array", continuous=True, **gym_kwargs)
    return CarRacingAction(env)
