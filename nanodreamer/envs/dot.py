"""A tiny pixel environment for CPU-scale end-to-end runs: steer a dot to a target on a grid.

A `cells` x `cells` grid of `cell`-pixel squares (16x16 RGB by default): a red dot and a green
target ring, placed at random. The action in [-1, 1]^2 moves the dot one cell along each axis
whose component exceeds 1/4 (9 moves), never off the grid; reward: minus the distance to the
target in cells. Over 50 steps a random policy scores about -100, a straight path about -1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

DEAD_ZONE = 0.25  # |a| at most this: no move along that axis


class DotEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, cells: int = 4, cell: int = 4, render_mode=None):
        if cells < 2 or cell < 3:
            raise ValueError(f"need cells >= 2 and cell >= 3 pixels, got {cells} and {cell}")
        self.cells, self.cell = cells, cell
        self.render_mode = render_mode
        size = cells * cell
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        dot, target = self.np_random.choice(self.cells**2, 2, replace=False)
        self.dot = np.array(divmod(dot, self.cells))  # (row, column)
        self.target = np.array(divmod(target, self.cells))
        return self._frame(), {}

    def step(self, action):
        x, y = np.asarray(action, np.float64).reshape(2)
        move = [int(np.sign(v)) if abs(v) > DEAD_ZONE else 0 for v in (y, x)]  # (row, column)
        self.dot = np.clip(self.dot + move, 0, self.cells - 1)
        reward = -np.linalg.norm(self.target - self.dot)
        return self._frame(), float(reward), False, False, {}  # the registered TimeLimit: 50

    def _frame(self) -> np.ndarray:
        c = self.cell
        frame = np.full((self.cells * c, self.cells * c, 3), 30, np.uint8)
        (tr, tc), (dr, dc) = self.target * c, self.dot * c
        frame[dr : dr + c, dc : dc + c] = (240, 60, 40)  # the dot fills its cell
        inside = frame[tr + 1 : tr + c - 1, tc + 1 : tc + c - 1].copy()
        frame[tr : tr + c, tc : tc + c] = (40, 220, 60)  # the target: a ring drawn over it
        frame[tr + 1 : tr + c - 1, tc + 1 : tc + c - 1] = inside
        return frame

    def render(self):
        return self._frame()
