"""Attention with QK-norm, grouped-query heads, RoPE-1D, and a key/value cache over frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """positions (L,) -> angles (L, head_dim/2) for rotary embeddings."""
    freqs = base ** (-torch.arange(0, head_dim, 2, device=positions.device) / head_dim)
    return positions.float()[:, None] * freqs[None, :]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (..., L, head_dim) by angles (L, head_dim/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`; `kv_heads < heads`: grouped
    queries. QK-norm (RMSNorm per head) keeps logits bounded without soft-capping."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        if dim % heads or heads % self.kv_heads:
            raise ValueError(f"dim {dim}, heads {heads}, kv_heads {self.kv_heads} do not divide")
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, (heads + 2 * self.kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,  # (N, L, D)
        *,
        mask: torch.Tensor | None = None,  # (L, L_all) bool, True = attend
        is_causal: bool = False,
        angles: tuple[torch.Tensor, torch.Tensor] | None = None,  # RoPE for queries, keys
        past: tuple[torch.Tensor, torch.Tensor] | None = None,  # cached k, v (N, Hkv, Lc, Dh)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n, length, dim = x.shape
        kv_dim = self.kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = self.q_norm(q.view(n, length, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(k.view(n, length, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(n, length, self.kv_heads, self.head_dim).transpose(1, 2)
        if angles is not None:
            q, k = apply_rope(q, angles[0]), apply_rope(k, angles[1][-length:])
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.kv_heads != self.heads
        )
        return self.out(y.transpose(1, 2).reshape(n, length, dim)), new_kv


class KVCache:
    """Keys and values of past frames per time-attention layer. A layer that looks back `span`
    frames keeps its last `span - 1` (`put(..., keep)`): a new frame attends to exactly what it
    would in whole-sequence processing. `frames` counts every frame appended (RoPE position)."""

    def __init__(self):
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.frames = 0

    def put(self, layer: int, kv: tuple[torch.Tensor, torch.Tensor], keep: int) -> None:
        past = self.layers.get(layer)
        if past is not None:
            kv = (torch.cat([past[0], kv[0]], 2), torch.cat([past[1], kv[1]], 2))
        self.layers[layer] = (kv[0][:, :, -keep:], kv[1][:, :, -keep:]) if keep else None
