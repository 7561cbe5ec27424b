"""Small Gymnasium wrappers composed by `nanodreamer.envs.make`. Each records its arguments
(`gym.utils.RecordConstructorArgs`), so `gymnasium.make(env.spec)` rebuilds the wrapped env."""

from __future__ import annotations

from contextlib import nullcontext

import gymnasium as gym
import numpy as np
from PIL import Image

from nanodreamer.envs.car_racing import frames_skipped, redrawn


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Repeat each action `repeat` times, summing rewards, stopping at episode end (a life lost
    on any repeat is the step's `info["life_loss"]`). Frames nobody reads are not drawn where
    the env allows it (`frames_skipped`); `keep_frames` draws them all into `info["frames"]`
    (repeat, *obs shape; the last repeated after an early end; `info["frame_count"]` drawn)."""

    def __init__(self, env: gym.Env, repeat: int, keep_frames: bool = False):
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat, keep_frames=keep_frames)
        gym.Wrapper.__init__(self, env)
        if repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self.repeat, self.keep_frames = repeat, keep_frames

    def step(self, action):
        total, frames, life_lost = 0.0, [], False
        for i in range(self.repeat):
            draw = self.keep_frames or i == self.repeat - 1  # else nobody reads this frame
            with nullcontext() if draw else frames_skipped(self.env):
                obs, reward, terminated, truncated, info = self.env.step(action)
            total = total + reward  # a float, or one per car for multi-car racing
            frames.append(obs)
            life_lost |= info.get("life_loss", False)
            if terminated or truncated:
                if not draw:  # ended early: draw the frame it ended on
                    obs = redrawn(self.env, obs)
                break
        if "life_loss" in info:
            info["life_loss"] = life_lost and not terminated
        if self.keep_frames:  # a fixed shape, so that vector envs can stack it
            info = info | {"frames": np.stack(frames + [obs] * (self.repeat - len(frames))),
                           "frame_count": len(frames)}  # fmt: skip
        return obs, total, terminated, truncated, info


class ResizeImage(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Resize HxWxC uint8 frames to `size`x`size` (area averaging when shrinking)."""

    def __init__(self, env: gym.Env, size: int):
        gym.utils.RecordConstructorArgs.__init__(self, size=size)
        gym.ObservationWrapper.__init__(self, env)
        channels = env.observation_space.shape[-1]
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, channels), np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return resize_frame(obs, self.size)


def resize_frame(obs: np.ndarray, size: int) -> np.ndarray:
    """(H,W,C) uint8 -> (size,size,C), area-averaged (what ResizeImage does to every frame)."""
    if obs.shape[:2] == (size, size):
        return obs
    image = Image.fromarray(obs.squeeze(-1) if obs.shape[-1] == 1 else obs)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX)).reshape(size, size, -1)


class ColorChannels(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Give grayscale frames (H,W) or (H,W,1) an explicit channel axis; leave RGB alone."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        h, w = env.observation_space.shape[:2]
        c = env.observation_space.shape[2] if len(env.observation_space.shape) == 3 else 1
        self.observation_space = gym.spaces.Box(0, 255, (h, w, c), np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(self.observation_space.shape)


class DiscreteAsBins(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Expose Discrete(n) as a 1-D action in [-1, 1] cut into n bins (bin i <-> choice i): with
    n bins the world model's bin lookup is exactly a discrete embedding (SPEC)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self.action_bins = [int(env.action_space.n)]
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def action(self, action) -> int:
        n = self.action_bins[0]
        value = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        return int(np.clip(np.floor((value + 1.0) / 2.0 * n), 0, n - 1))


def bin_centers(n: int) -> np.ndarray:
    """The normalised action value that stands for each of n bins: centres of n equal cells."""
    return (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
