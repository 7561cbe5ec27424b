"""Axial space/time transformer shared by the tokenizer and the dynamics model.

Tokens are laid out as (B, T, S, D): T frames of S tokens each. *Space* layers attend within a
frame under a modality mask built once from a `TokenLayout`, plus a learned positional bias;
*time* layers (every `time_every`-th) attend causally across frames at the same token position,
with RoPE-1D. Each time layer looks back a span of frames (`time_spans`) so that an output
depends on exactly its frame and the `window - 1` before it: a frame streamed through the
key/value cache deep into an episode is computed as the last frame of a training window.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint as ckpt

from nanodreamer.nn.attention import Attention, KVCache, rope_angles


@dataclass(frozen=True)
class TokenLayout:
    """The tokens of one frame, in order, and which modalities each modality may read.
    groups: ((name, count), ...); reads: {name: (names it attends to)}."""

    groups: tuple[tuple[str, int], ...]
    reads: dict[str, tuple[str, ...]]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.groups)

    def slice(self, name: str) -> slice:
        start = 0
        for group, count in self.groups:
            if group == name:
                return slice(start, start + count)
            start += count
        raise KeyError(name)

    def modality_ids(self) -> torch.Tensor:
        return torch.cat([torch.full((n,), i) for i, (_, n) in enumerate(self.groups)])

    def mask(self) -> torch.Tensor | None:
        """(S, S) bool, True where query token i may read key token j; None if all True."""
        names = [name for name, _ in self.groups]
        allowed = torch.tensor(
            [[key in self.reads[query] for key in names] for query in names], dtype=torch.bool
        )
        ids = self.modality_ids()
        mask = allowed[ids[:, None], ids[None, :]]
        return None if mask.all() else mask


_aten = torch.ops.aten
_LINEAR = {_aten.mm.default, _aten.addmm.default}
_ATTENTION = {  # the fused kernels, and bmm: scores and outputs of the unfused (math) path
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten.bmm.default,
}


def _keep_expensive(ctx, op, *args, **kwargs) -> ckpt.CheckpointPolicy:
    """Selective checkpointing keeps what attention and linear layers computed, the ops that
    are expensive to redo, except layers that narrow their input (the MLP's down projection):
    their output only joins the residual stream, which no backward step reads. Norms, SiLU,
    RoPE and adds are recomputed in the backward pass."""
    widens = op in _LINEAR and args[-1].shape[-1] >= args[-2].shape[-1]  # (M, K) @ (K, N), N >= K
    policy = ckpt.CheckpointPolicy
    return policy.MUST_SAVE if op in _ATTENTION or widens else policy.PREFER_RECOMPUTE


# Activation checkpointing of each block, as options of `checkpoint`: "none" keeps every
# activation for the backward pass, "full" keeps only block inputs and reruns each block,
# "selective" reruns only cheap ops.
CHECKPOINTING = {
    "none": None,
    "selective": {
        "context_fn": partial(ckpt.create_selective_checkpoint_contexts, _keep_expensive)
    },
    "full": {},
}


def time_spans(window: int, layers: int) -> list[int]:
    """Look-back span (frames, itself included) of each of `layers` time layers, so that the
    spans' look-backs add up to `window - 1`: the receptive field is exactly `window` frames."""
    base, extra = divmod(window - 1, max(layers, 1))
    return [1 + base + (i < extra) for i in range(layers)]


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio * 2 / 3)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: space or time attention, then a SwiGLU MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_ratio: float, time: bool):
        super().__init__()
        self.time = time
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads)
        self.mlp = SwiGLU(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> tuple[torch.Tensor, tuple]:
        b, t, s, d = x.shape
        h = self.norm1(x)
        if self.time:  # sequences of frames, one per token position
            h = h.transpose(1, 2).reshape(b * s, t, d)
            y, kv = self.attn(h, **attn_kwargs)
            y = y.view(b, s, t, d).transpose(1, 2)
        else:  # sequences of tokens, one per frame
            y, kv = self.attn(h.reshape(b * t, s, d), **attn_kwargs)
            y = y.view(b, t, s, d)
        x = x + y
        return x + self.mlp(self.norm2(x)), kv


class AxialTransformer(nn.Module):
    def __init__(self, layout: TokenLayout, dim: int, depth: int, heads: int, kv_heads=None,
                 time_every=4, window=16, mlp_ratio=4.0):  # fmt: skip
        super().__init__()
        self.layout, self.window = layout, window
        self.blocks = nn.ModuleList(
            Block(dim, heads, kv_heads or heads, mlp_ratio, time=(i + 1) % time_every == 0)
            for i in range(depth)
        )
        time_layers = [i for i, block in enumerate(self.blocks) if block.time]
        self.spans = dict(zip(time_layers, time_spans(window, len(time_layers)), strict=True))
        self.norm = nn.RMSNorm(dim)
        self.register_buffer("space_mask", layout.mask(), persistent=False)
        # Learned positional bias of space attention, one (S, S) table per head. Large at
        # initialisation, so attention is position-selective from the first step: with only
        # additive position embeddings, near-uniform attention pools tokens without their
        # layout and sparse scenes collapse to the mean frame for thousands of steps.
        self.space_bias = nn.Parameter(torch.randn(heads, layout.size, layout.size) * 2.0)
        self.head_dim = dim // heads
        self.checkpointing = "none"  # a key of CHECKPOINTING

    def forward(self, x, cache: KVCache | None = None, update_cache=True, independent=None):
        """x (B, T, S, D) -> (B, T, S, D). With a cache, x holds the frames after the cached
        ones; `update_cache=False` reads the cache without adding these frames to it.
        `independent` (B,) bool: sequences whose frames are separate images (no time attention)."""
        if independent is not None and independent.any():
            b, t, s, d = x.shape
            out = torch.empty_like(x)
            alone = x[independent]
            out[independent] = self(alone.reshape(-1, 1, s, d)).view(alone.shape)
            if (~independent).any():
                out[~independent] = self(x[~independent])
            return out
        t = x.shape[1]
        time_kwargs = {
            span: self._time_attention(t, span, cache) for span in set(self.spans.values())
        }
        space_mask = self.space_bias  # (H, S, S) float: the bias, -inf where reading is masked
        if self.space_mask is not None:
            space_mask = space_mask.masked_fill(~self.space_mask, float("-inf"))
        for i, block in enumerate(self.blocks):
            if block.time:
                kwargs = dict(
                    time_kwargs[self.spans[i]], past=cache.layers.get(i) if cache else None
                )
            else:
                kwargs = {"mask": space_mask}
            options = CHECKPOINTING[self.checkpointing] if self.training else None
            if options is not None:
                x, kv = ckpt.checkpoint(block, x, use_reentrant=False, **options, **kwargs)
            else:
                x, kv = block(x, **kwargs)
            if block.time and cache is not None and update_cache:
                cache.put(i, kv, keep=self.spans[i] - 1)
        if cache is not None and update_cache:
            cache.frames += t
        return self.norm(x)

    def _time_attention(self, t: int, span: int, cache: KVCache | None) -> dict:
        """RoPE angles and the causal mask looking back `span` frames, for `t` new frames after
        the cache (which holds at most span - 1 frames for a layer of this span)."""
        start = cache.frames if cache else 0
        past = min(start, span - 1)
        device = self.norm.weight.device
        key_pos = torch.arange(start - past, start + t, device=device)
        angles = rope_angles(key_pos, self.head_dim)
        kwargs = {"angles": (angles[past:], angles)}
        if past == 0 and t <= span:
            return kwargs | {"is_causal": True}
        if t == 1:
            return kwargs
        age = key_pos[past:, None] - key_pos[None, :]
        return kwargs | {"mask": (age >= 0) & (age < span)}
