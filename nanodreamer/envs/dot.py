"""A tiny pixel environment for CPU-scale end-to-end runs: steer a dot to a target.

32x32 RGB frames: a red dot and a green target, squares of side 2 * radius + 1, both placed
at random. The 2-D action in [-1, 1]^2 is the dot's velocity (up to `speed` pixels per step).
Reward per step: minus the distance from dot to target in units of the frame size, so it
depends on the state the action led to. Episodes last `max_episode_steps` steps: a random policy
scores about -54, a policy that heads straight for the target about -2.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class DotEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        size: int = 32,
        radius: int = 3,
        speed: float = 2.0,
        max_episode_steps: int = 100,
        render_mode=None,
    ):
        self.size, self.radius, self.speed, self.max_episode_steps = (
            size,
            radius,
            speed,
            max_episode_steps,
        )
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _place_target(self) -> None:
        while True:
            self.target = self.np_random.uniform(self.radius, self.size - 1 - self.radius, 2)
            if np.linalg.norm(self.target - self.dot) > self.size / 4:
                return

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.dot = self.np_random.uniform(self.radius, self.size - 1 - self.radius, 2)
        self._place_target()
        self.steps = 0
        return self._frame(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1, 1)
        self.dot = np.clip(self.dot + self.speed * action, self.radius, self.size - 1 - self.radius)
        reward = -np.linalg.norm(self.target - self.dot) / self.size
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        return self._frame(), float(reward), False, truncated, {}

    def _frame(self) -> np.ndarray:
        frame = np.full((self.size, self.size, 3), 30, np.uint8)
        for (x, y), color in ((self.target, (40, 220, 60)), (self.dot, (240, 60, 40))):
            cx, cy = int(round(x)), int(round(y))
            r = self.radius
            frame[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1] = color
        return frame

    def render(self):
        return self._frame()
