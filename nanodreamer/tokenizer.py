"""Causal masked-autoencoder tokenizer (SPEC "Causal tokenizer").

Each frame is cut into patches; `n_latents` learned latent tokens are appended. Within a frame
the encoder's latents read every token, patches only patches, so all information flows into
the latents (projected to `latent_dim` channels, tanh: what the dynamics model works on);
across frames attention is causal with a bounded window. The decoder appends patch queries
that read the latents and reads out pixels. Training masks p ~ U(0, mask_max) of each frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from nanodreamer.errors import UserError
from nanodreamer.nn.attention import KVCache
from nanodreamer.nn.normalize import RunningRMS
from nanodreamer.nn.transformer import AxialTransformer, TokenLayout


@dataclass
class TokenizerConfig:
    image_size: int = 96
    channels: int = 3
    patch: int = 8
    n_latents: int = 64
    latent_dim: int = 16
    dim: int = 256
    heads: int = 8
    enc_depth: int = 6
    dec_depth: int = 6
    time_every: int = 2
    window: int = 8  # frames of look-back in time attention (the training sequence length)
    mlp_ratio: float = 4.0
    mask_max: float = 0.9
    lpips_weight: float = 0.2

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


_SHALLOW = dict(latent_dim=16, heads=4, enc_depth=2, dec_depth=2, window=4)
TOKENIZER_PRESETS = {
    "tiny": TokenizerConfig(n_latents=16, dim=64, **_SHALLOW),
    "small": TokenizerConfig(n_latents=32, dim=96, **_SHALLOW),
    "base": TokenizerConfig(),
}


class Tokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c = self.config = config
        if c.image_size % c.patch:
            raise UserError(f"image_size {c.image_size} is not a multiple of patch {c.patch}")
        patch_pixels = c.patch * c.patch * c.channels
        enc_layout = TokenLayout(
            groups=(("patches", c.n_patches), ("latents", c.n_latents)),
            reads={"patches": ("patches",), "latents": ("patches", "latents")},
        )
        dec_layout = TokenLayout(
            groups=(("latents", c.n_latents), ("queries", c.n_patches)),
            reads={"latents": ("latents",), "queries": ("latents", "queries")},
        )
        blocks = dict(dim=c.dim, heads=c.heads, time_every=c.time_every, window=c.window)
        blocks["mlp_ratio"] = c.mlp_ratio
        # encoder
        self.patch_in = nn.Linear(patch_pixels, c.dim)
        self.patch_pos = nn.Parameter(torch.randn(c.n_patches, c.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(c.n_latents, c.dim) * 0.02)
        self.encoder = AxialTransformer(enc_layout, depth=c.enc_depth, **blocks)
        self.to_latent = nn.Linear(c.dim, c.latent_dim)
        # decoder
        self.from_latent = nn.Linear(c.latent_dim, c.dim)
        self.latent_pos = nn.Parameter(torch.randn(c.n_latents, c.dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(c.n_patches, c.dim) * 0.02)
        self.decoder = AxialTransformer(dec_layout, depth=c.dec_depth, **blocks)
        self.to_pixels = nn.Linear(c.dim, patch_pixels)
        self.loss_norm = RunningRMS({"mse": 1.0, "lpips": c.lpips_weight})
        self.perceptual: nn.Module | None = None  # set by `use_perceptual`, never saved

    # shapes -----------------------------------------------------------------------------------
    def check_frames(self, frames: torch.Tensor) -> None:
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if frames.ndim != 5 or tuple(frames.shape[2:]) != expected:
            raise UserError(
                f"frames must have shape (B, T, {', '.join(map(str, expected))}), "
                f"got {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise UserError(f"frames must be float in [0, 1], got {frames.dtype}: divide by 255")
        if frames.numel() and (frames.min() < 0 or frames.max() > 1):
            raise UserError("frames must lie in [0, 1]: normalise pixel values")

    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.config
        if latents.ndim != 4 or tuple(latents.shape[2:]) != (c.n_latents, c.latent_dim):
            raise UserError(
                f"latents must have shape (B, T, {c.n_latents}, {c.latent_dim}), "
                f"got {tuple(latents.shape)}"
            )

    def new_cache(self) -> KVCache:
        return KVCache()

    # encoder / decoder ------------------------------------------------------------------------
    def _encode(self, frames: torch.Tensor, mask_prob=None, cache=None) -> torch.Tensor:
        """frames (B,T,C,H,W) in [0,1] -> latents (B,T,N,Dl) in (-1,1); `mask_prob` (B,T)."""
        c = self.config
        b, t = frames.shape[:2]
        patches = rearrange(frames, "b t c (h p) (w q) -> b t (h w) (p q c)", p=c.patch, q=c.patch)
        x = self.patch_in(patches * 2 - 1)  # (B,T,P,D)
        if mask_prob is not None:  # (B,T): drop each patch with its frame's probability
            drop = torch.rand(b, t, c.n_patches, 1, device=x.device) < mask_prob[..., None, None]
            x = torch.where(drop, self.mask_token.to(x.dtype), x)
        x = x + self.patch_pos
        x = torch.cat([x, self.latent_tokens.expand(b, t, -1, -1)], dim=2)  # (B,T,P+N,D)
        x = self.encoder(x, cache=cache)
        return torch.tanh(self.to_latent(x[:, :, c.n_patches :]))

    def _decode(self, latents: torch.Tensor, cache=None) -> torch.Tensor:
        """latents (B,T,N,Dl) -> frames (B,T,C,H,W), unclamped."""
        c = self.config
        b, t = latents.shape[:2]
        x = self.from_latent(latents) + self.latent_pos
        x = torch.cat([x, self.queries.expand(b, t, -1, -1)], dim=2)  # (B,T,N+P,D)
        x = self.decoder(x, cache=cache)
        pixels = self.to_pixels(x[:, :, c.n_latents :])  # (B,T,P,p*p*C)
        side, p = c.image_size // c.patch, c.patch
        return (
            rearrange(pixels, "b t (h w) (p q c) -> b t c (h p) (w q)", h=side, p=p, q=p) + 1
        ) / 2

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """frames (B,T,C,H,W) float in [0,1] -> latents (B,T,N,Dl) in (-1,1), no masking. With
        a cache (`new_cache()`) frames continue a stream: frame by frame equals all at once."""
        self.check_frames(frames)
        return self._encode(frames, cache=cache)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """latents (B,T,N,Dl) -> frames (B,T,C,H,W) in [0,1]; streams like `encode`."""
        self.check_latents(latents)
        return self._decode(latents, cache=cache).clamp(0, 1)

    # training ---------------------------------------------------------------------------------
    def use_perceptual(self, network: nn.Module | None) -> None:
        """Add the LPIPS-style term: `network(a, b)` takes images in [-1,1], returns (N,)."""
        self.perceptual = network.requires_grad_(False) if network is not None else None

    def loss(self, frames: torch.Tensor, valid=None) -> tuple[torch.Tensor, dict]:
        """Masked-autoencoding loss on frames (B,T,C,H,W) in [0,1]; `valid` (B,T): not padding."""
        b, t = frames.shape[:2]
        mask_prob = torch.rand(b, t, device=frames.device) * self.config.mask_max
        recon = self._decode(self._encode(frames, mask_prob))
        valid = torch.ones(b, t, device=frames.device) if valid is None else valid.float()
        frame_mse = (recon.float() - frames.float()).pow(2).mean((2, 3, 4))  # (B,T)
        count = valid.sum().clamp(min=1)
        terms = {"mse": (frame_mse * valid).sum() / count}
        terms["lpips"] = self._perceptual_loss(recon, frames, valid, count)
        loss = self.loss_norm(terms)
        metrics = {k: v.detach() for k, v in terms.items() if k != "lpips" or self.perceptual}
        metrics["psnr"] = -10 * torch.log10(terms["mse"].detach().clamp(min=1e-10))
        return loss, metrics

    def _perceptual_loss(self, recon, frames, valid, count) -> torch.Tensor:
        if self.perceptual is None:
            return torch.zeros((), device=frames.device)
        keep = valid.flatten().bool()
        a = recon.flatten(0, 1)[keep].float() * 2 - 1
        b = frames.flatten(0, 1)[keep].float() * 2 - 1
        return self.perceptual(a, b).reshape(-1).sum() / count


def load_perceptual(source: str) -> nn.Module:
    """The perceptual network for the LPIPS term: "lpips" (the `lpips` package, which brings
    its own pretrained weights) or a path to a `torch.export` file (.pt2) of a network taking
    two image batches in [-1, 1] and returning one distance per image. Nothing is downloaded."""
    if source == "lpips":
        try:
            import lpips  # optional: not a dependency (it pulls in torchvision)
        except ImportError:
            raise UserError(
                "the `lpips` package is not installed: pip install lpips, or pass an exported "
                "network with --lpips FILE.pt2, or train with MSE alone (the default)"
            ) from None
        return lpips.LPIPS(net="vgg", verbose=False).eval()
    try:
        return torch.export.load(source).module()
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"cannot load perceptual network {source}: {err}") from None


def frames_from_uint8(obs: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [0, 1], on obs's device."""
    return obs.movedim(-1, -3).float().div_(255)
