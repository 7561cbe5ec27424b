"""A tiny pixel environment for CPU-scale end-to-end runs: steer a dot to a target.

32x32 RGB frames: a red 5x5 dot, a green 5x5 target, both placed at random. The 2-D action in
[-1, 1]^2 is the dot's velocity (up to `speed` pixels per step). Reward per step: minus the
distance from dot to target in units of the frame size, so it depends on the state the action
led to. Episodes last `max_steps` steps: a random policy scores about -54, a policy that heads
straight for the target about -2.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class DotEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 32, speed: float = 2.0, max_steps: int = 100, render_mode=None):
        self.size, self.speed, self.max_steps = size, speed, max_steps
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _place_target(self) -> None:
        while True:
            self.target = self.np_random.uniform(3, self.size - 4, 2)
            if np.linalg.norm(self.target - self.dot) > self.size / 4:
                return

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.dot = self.np_random.uniform(3, self.size - 4, 2)
        self._place_target()
        self.steps = 0
        return self._frame(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1, 1)
        self.dot = np.clip(self.dot + self.speed * action, 2, self.size - 3)
        reward = -np.linalg.norm(self.target - self.dot) / self.size
        self.steps += 1
        truncated = self.steps >= self.max_steps
        return self._frame(), float(reward), False, truncated, {}

    def _frame(self) -> np.ndarray:
        frame = np.full((self.size, self.size, 3), 30, np.uint8)
        for (x, y), color in ((self.target, (40, 220, 60)), (self.dot, (240, 60, 40))):
            cx, cy = int(round(x)), int(round(y))
            frame[max(cy - 2, 0) : cy + 3, max(cx - 2, 0) : cx + 3] = color
        return frame

    def render(self):
        return self._frame()
