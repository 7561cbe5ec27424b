"""Atari 2600 games (ale-py, whose wheel ships the ROMs) under the Atari 100k protocol of IRIS
and DIAMOND: minimal action set, no sticky actions, up to 30 no-ops after a reset (from its
seed: episodes replay), 4 frames per action with the last two max-pooled, 64x64 RGB, games
capped at 108,000 frames. A lost life is a terminal step of the training data only
(`info["life_loss"]`); the env plays whole games, so evaluation scores full games.

Names: `atari:Boxing` or Gymnasium's `ALE/Boxing-v5` (also as `ale_py:ALE/Boxing-v5`).
"""

from __future__ import annotations

import gymnasium as gym

from nanodreamer.errors import UserError

PROTOCOL = {"frameskip": 1, "repeat_action_probability": 0.0, "full_action_space": False,
            "max_num_frames_per_episode": 108_000}  # fmt: skip
FRAME_SKIP, NOOP_MAX, SIZE = 4, 30, 64


def atari_id(name: str) -> str | None:
    """The ALE id of an Atari env name (`atari:Pong` -> `ALE/Pong-v5`), None for other names."""
    name = name.removeprefix("ale_py:")
    if name.startswith("atari:"):
        return f"ALE/{name.removeprefix('atari:')}-v5"
    return name if name.startswith("ALE/") else None


def make_atari(name: str, **options) -> gym.Env:
    """The game `name` (`atari_id`) under the protocol; `options` override `PROTOCOL`'s ALE
    settings (e.g. repeat_action_probability=0.25 for sticky actions)."""
    try:
        import ale_py  # noqa: F401  (an optional dependency; importing it registers ALE/ ids)
    except ImportError:
        raise UserError(f"{name} needs ale-py: pip install 'nanodreamer[atari]'") from None
    env = gym.make(atari_id(name), **(PROTOCOL | options))
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SIZE, grayscale_obs=False
    )
    return LifeLoss(env)


class LifeLoss(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """`info["life_loss"]`: this step lost a life and the game goes on (the game's last step
    is a real termination instead)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info | {"life_loss": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives, self.lives = self.lives, self.env.unwrapped.ale.lives()
        info["life_loss"] = bool(self.lives < lives and not terminated)
        return obs, reward, terminated, truncated, info


def action_meanings(name: str) -> list[str]:
    """The game's minimal action set by ALE's names ("NOOP", "FIRE", "UPRIGHT", ...), in the
    order of its discrete choices (`play` maps keys to them)."""
    env = make_atari(name)
    names = env.unwrapped.get_action_meanings()
    env.close()
    return names
