"""WorldModel: the tokenizer and the dynamics model together, for interactive generation.

    world = WorldModel(tokenizer, dynamics, steps=4)
    world.reset(context_frames, context_actions)   # (B,T,C,H,W) in [0,1], (B,T,A) in [-1,1]
    frame = world.step(action)                      # (B,C,H,W): one imagined frame
    video = world.imagine(frames, actions, future_actions)   # (B,H,C,H,W)

Past frames are fed back at signal level `context_signal` through a key/value cache, so each
denoising step processes only the new frame; `use_cache=False` recomputes the whole history
(same results, for checking and timing). A frame depends on the `window - 1` frames before it
(the receptive field the model was trained on), however long the rollout.
"""

from __future__ import annotations

import torch

from nanodreamer.dynamics import Dynamics, check_steps, context_inputs, denoise
from nanodreamer.errors import UserError
from nanodreamer.tokenizer import Tokenizer


class WorldModel:
    def __init__(
        self, tokenizer: Tokenizer, dynamics: Dynamics, *, steps=4, use_cache=True, generator=None
    ):
        check_steps(dynamics, steps)
        self.tokenizer, self.dynamics = tokenizer.eval(), dynamics.eval()
        self.steps, self.use_cache, self.generator = steps, use_cache, generator
        self.window = dynamics.config.window
        self.device = next(dynamics.parameters()).device
        self.context = self.decoder_cache = None  # context: a KVCache, or past frames' inputs

    def _noise(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    @torch.no_grad()
    def reset(self, context_frames, context_actions, has_action=None) -> None:
        """Start B rollouts from real frames (B,T,C,H,W) in [0,1] and the actions that led to
        them (B,T,A); `has_action` (B,T), by default False for the first frame only (the
        context starts an episode). T = 0 starts from the model's own first frame."""
        b, t = context_frames.shape[:2]
        self.dynamics.check_actions(context_actions)
        if has_action is None:
            has_action = torch.arange(t, device=self.device).expand(b, t) > 0
        self.decoder_cache = self.tokenizer.new_cache()
        self.context = self.dynamics.new_cache() if self.use_cache else None
        if t == 0:
            return
        latents = self.tokenizer.encode(context_frames.to(self.device))
        self.tokenizer.decode(latents, cache=self.decoder_cache)  # prime the decoder's cache
        self._append(latents, context_actions.to(self.device), has_action.to(self.device))

    def _append(self, latents, action, has_action) -> None:
        noise = self._noise(latents.shape)
        inputs = context_inputs(self.dynamics, latents, action, has_action, noise)
        if self.use_cache:
            self.dynamics(**inputs, cache=self.context)
        elif self.context is None:
            self.context = inputs
        else:  # the whole history: the windowed mask then matches what the cache holds
            self.context = {k: torch.cat([self.context[k], v], 1) for k, v in inputs.items()}

    @torch.no_grad()
    def step_latents(self, action: torch.Tensor) -> torch.Tensor:
        """Imagine the next frame's latents (B,N,Dl) after `action` (B,A)."""
        if self.decoder_cache is None:
            raise UserError("call reset() before step()")
        self.dynamics.check_actions(action)
        c = self.dynamics.config
        action = action.to(self.device).float()
        has_action = torch.ones(action.shape[0], dtype=torch.bool, device=self.device)
        noise = self._noise((action.shape[0], c.n_latents, c.latent_dim))
        z = denoise(self.dynamics, noise, action, has_action, self.steps, self.context)
        self._append(z[:, None], action[:, None], has_action[:, None])
        return z

    @torch.no_grad()
    def step(self, action: torch.Tensor) -> torch.Tensor:
        """Imagine the next frame (B,C,H,W) in [0,1] after `action` (B,A) in [-1,1]."""
        z = self.step_latents(action)
        return self.tokenizer.decode(z[:, None], cache=self.decoder_cache)[:, 0]

    @torch.no_grad()
    def imagine(self, context_frames, context_actions, actions: torch.Tensor) -> torch.Tensor:
        """Frames (B,H,C,H,W) imagined after the context, one per action in actions (B,H,A)."""
        self.reset(context_frames, context_actions)
        return torch.stack([self.step(actions[:, i]) for i in range(actions.shape[1])], 1)
