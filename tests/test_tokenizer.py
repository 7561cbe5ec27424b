from dataclasses import replace

import pytest
import torch
from conftest import TINY_TOKENIZER, make_store

from nanodreamer.errors import UserError
from nanodreamer.tokenizer import TOKENIZER_PRESETS, Tokenizer
from nanodreamer.train.tokenizer import tokenizer_config_for

TINY = replace(TINY_TOKENIZER, window=3)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tokenizer(TINY).eval()


def test_causal_in_time(model):
    frames = torch.rand(2, 5, 3, 16, 16)
    changed = frames.clone()
    changed[:, 3:] = torch.rand_like(changed[:, 3:])
    z, z2 = model.encode(frames), model.encode(changed)
    assert torch.equal(z[:, :3], z2[:, :3]) and not torch.allclose(z[:, 3:], z2[:, 3:])
    x, x2 = model.decode(z), model.decode(z2)
    assert torch.equal(x[:, :3], x2[:, :3])


def test_encoder_patches_never_read_latents(model):
    """Perturbing the latent tokens' inputs leaves every patch activation unchanged."""
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    frames = torch.rand(1, 2, 3, 16, 16)
    model.encode(frames)
    before = seen["out"][:, :, : TINY.n_patches].clone()
    with torch.no_grad():
        model.latent_tokens.add_(torch.randn_like(model.latent_tokens))
    model.encode(frames)
    assert torch.equal(before, seen["out"][:, :, : TINY.n_patches])
    assert not torch.allclose(model.encode(frames), model.encode(frames) * 0)


def test_decoder_latents_never_read_queries(model):
    seen = {}
    model.decoder.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    z = torch.rand(1, 2, 4, 3) * 2 - 1
    model.decode(z)
    before = seen["out"][:, :, : TINY.n_latents].clone()
    with torch.no_grad():
        model.queries.add_(torch.randn_like(model.queries))
    model.decode(z)
    assert torch.equal(before, seen["out"][:, :, : TINY.n_latents])


def test_streaming_equals_whole_sequence(model):
    """Longer than the window, so the cache must drop old frames exactly like the mask."""
    frames = torch.rand(2, 8, 3, 16, 16)
    whole = model.encode(frames)
    cache = model.new_cache()
    streamed = torch.cat([model.encode(frames[:, t : t + 1], cache) for t in range(8)], 1)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-5)
    cache = model.new_cache()
    chunks = torch.cat([model.encode(frames[:, :3], cache), model.encode(frames[:, 3:], cache)], 1)
    torch.testing.assert_close(chunks, whole, atol=1e-5, rtol=1e-5)
    recon = model.decode(whole)
    cache = model.new_cache()
    streamed = torch.cat([model.decode(whole[:, t : t + 1], cache) for t in range(8)], 1)
    torch.testing.assert_close(streamed, recon, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [4, 6])
def test_streamed_frames_equal_the_last_frame_of_a_training_window(depth):
    """With several time layers the receptive field is still `window` frames: each frame of an
    episode three times the window streamed through the cache equals that frame encoded as
    the last of a fresh `window`-frame sequence, the regime training sees."""
    torch.manual_seed(0)
    model = Tokenizer(replace(TINY_TOKENIZER, enc_depth=depth, dec_depth=depth)).eval()
    assert sum(b.time for b in model.encoder.blocks) == depth // 2
    window, frames = model.config.window, torch.rand(1, 3 * 4 + 2, 3, 16, 16)
    cache = model.new_cache()
    streamed = torch.cat([model.encode(frames[:, t : t + 1], cache) for t in range(14)], 1)
    for t in range(14):
        alone = model.encode(frames[:, max(0, t - window + 1) : t + 1])[:, -1]
        torch.testing.assert_close(streamed[:, t], alone, atol=1e-5, rtol=1e-5)


def test_time_spans_add_up_to_the_window():
    from nanodreamer.nn.transformer import time_spans

    assert time_spans(16, 2) == [9, 8] and time_spans(8, 3) == [4, 3, 3]
    for window, layers in [(4, 1), (5, 4), (2, 3), (32, 4)]:
        assert sum(s - 1 for s in time_spans(window, layers)) == window - 1


def test_window_bounds_look_back(model):
    """A frame more than `window - 1` frames back has no influence."""
    frames = torch.rand(1, 6, 3, 16, 16)
    changed = frames.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])
    z, z2 = model.encode(frames), model.encode(changed)
    assert not torch.allclose(z[:, 2], z2[:, 2]) and torch.equal(z[:, 3:], z2[:, 3:])


def test_latents_bounded_and_frames_in_range(model):
    z = model.encode(torch.rand(1, 2, 3, 16, 16))
    assert z.shape == (1, 2, 4, 3) and z.abs().max() < 1
    x = model.decode(z * 5)
    assert x.shape == (1, 2, 3, 16, 16) and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize(
    "frames, message",
    [
        (torch.rand(1, 2, 3, 16, 8), r"shape \(B, T, 3, 16, 16\)"),
        (torch.rand(2, 3, 16, 16), r"shape \(B, T, 3, 16, 16\)"),
        ((torch.rand(1, 2, 3, 16, 16) * 255).byte(), "float in"),
        (torch.rand(1, 2, 3, 16, 16) * 255, r"lie in \[0, 1\]"),
    ],
)
def test_bad_frames(model, frames, message):
    with pytest.raises(UserError, match=message):
        model.encode(frames)


def test_learns_on_tiny_data():
    torch.manual_seed(0)
    model = Tokenizer(TINY)
    images = torch.rand(4, 3, 4, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    frames = images[torch.tensor([[0, 1, 2], [3, 2, 1], [1, 1, 0], [2, 3, 3]])]  # (4,3,3,16,16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    before = -10 * torch.log10(((model.decode(model.encode(frames)) - frames) ** 2).mean())
    model.train()
    losses = []
    for _ in range(150):
        loss, metrics = model.loss(frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["mse"].item())
    model.eval()
    after = -10 * torch.log10(((model.decode(model.encode(frames)) - frames) ** 2).mean())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert after > before + 3, (before, after)


def test_perceptual_term_with_stand_in_network(tmp_path):
    from nanodreamer.tokenizer import load_perceptual

    class StandIn(torch.nn.Module):  # any network with the LPIPS call signature
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, a, b):
            return (self.conv(a) - self.conv(b)).pow(2).mean((1, 2, 3))

    path = tmp_path / "perceptual.pt2"
    batch = torch.export.Dim("batch", min=1)
    images = (torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    exported = torch.export.export(StandIn(), images, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(exported, str(path))
    model = Tokenizer(TINY)
    model.use_perceptual(load_perceptual(str(path)))
    loss, metrics = model.loss(torch.rand(2, 2, 3, 16, 16))
    assert metrics["lpips"] > 0
    loss.backward()
    assert all(p.grad is None for p in model.perceptual.parameters())
    assert model.to_pixels.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="cannot load perceptual"):
        load_perceptual(str(tmp_path / "missing.pt"))


def test_presets_build():
    assert TOKENIZER_PRESETS["base"].n_patches == 144
    assert TOKENIZER_PRESETS["base"].n_latents == 64 and TOKENIZER_PRESETS["base"].dim == 256


@pytest.mark.parametrize("size, expected", [(96, (8, 16, 0.9)), (16, (4, 4, 0.5))])
def test_config_sized_to_the_frames(tmp_path, size, expected):
    """(patch, n_latents, mask_max) of the tiny preset on frames of `size` pixels."""
    data = make_store(tmp_path / "data", [5], size=size).path
    config = tokenizer_config_for(data, TOKENIZER_PRESETS["tiny"], window=4)
    assert (config.patch, config.n_latents, config.mask_max) == expected
    assert (config.image_size, config.channels, config.window) == (size, 3, 4)


def squares(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, 3, 16, 16): a bright 4x4 square at a random place on a dark frame."""
    frames = torch.full((n, 1, 3, 16, 16), 0.1)
    for i, (r, c) in enumerate(torch.randint(0, 13, (n, 2), generator=generator).tolist()):
        frames[i, 0, 0, r : r + 4, c : c + 4] = 0.9
    return frames


def test_learns_where_a_small_object_is():
    """Sparse scenes: the latents must carry position, not just content. (Without the learned
    space-attention bias this stays at the mean frame for well over 1000 steps.)"""
    torch.manual_seed(0)
    model = Tokenizer(replace(TINY_TOKENIZER, window=1, mask_max=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, test = torch.Generator().manual_seed(0), squares(64, torch.Generator().manual_seed(1))
    for _ in range(1000):
        loss, _ = model.loss(squares(32, train))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    recon = model.decode(model.encode(test))
    mean_frame = -10 * torch.log10((test - test.mean(0)).pow(2).mean())
    psnr = -10 * torch.log10((recon - test).pow(2).mean())
    assert psnr > mean_frame + 1.0, (psnr, mean_frame)


def test_checkpointing_changes_memory_not_maths():
    """Each checkpointing mode gives the same loss and gradients; selective reruns no matmul
    in the backward pass (the same FLOPs as no checkpointing), full reruns every block."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = Tokenizer(TINY).train()
    frames = torch.rand(2, 3, 3, 16, 16)
    results = {}
    for mode in ("none", "selective", "full"):
        model.encoder.checkpointing = model.decoder.checkpointing = mode
        model.zero_grad()
        torch.manual_seed(1)  # the same MAE masks
        loss = model.loss(frames)[0]
        with FlopCounterMode(display=False) as flops:
            loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[mode] = loss.detach(), grads, flops.get_total_flops()
    loss, grads, flops = results["none"]
    for mode in ("selective", "full"):
        torch.testing.assert_close(results[mode][0], loss, rtol=0, atol=0)
        torch.testing.assert_close(results[mode][1], grads, rtol=1e-6, atol=1e-7)
    assert results["selective"][2] == flops < results["full"][2]
