import math
from dataclasses import replace

import pytest
import torch
from conftest import TINY_TOKENIZER
from torch import nn

from nanodreamer.dynamics import (
    Dynamics,
    DynamicsConfig,
    denoise,
    draw_noise,
    own_rollout,
    shortcut_forcing_loss,
)
from nanodreamer.errors import UserError
from nanodreamer.tokenizer import Tokenizer
from nanodreamer.world import WorldModel

SMALL = DynamicsConfig(
    n_latents=4,
    latent_dim=3,
    group=2,
    action_dim=2,
    action_bins=8,
    dim=32,
    depth=4,
    heads=4,
    kv_heads=2,
    time_every=2,
    window=5,
    registers=1,
    max_steps=8,
)


def inputs(b=2, t=6, config=SMALL):
    z = torch.randn(b, t, config.n_latents, config.latent_dim)
    tau = torch.rand(b, t)
    k = torch.randint(0, 4, (b, t))
    action = torch.rand(b, t, config.action_dim) * 2 - 1
    return z, tau, k, action, torch.ones(b, t, dtype=torch.bool)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Dynamics(SMALL).eval()


def test_causal_in_time(model):
    z, tau, k, action, has = inputs()
    out, _ = model(z, tau, k, action, has)
    z2, action2 = z.clone(), action.clone()
    z2[:, 4:] += 1
    action2[:, 4:] = -action2[:, 4:]
    out2, _ = model(z2, tau, k, action2, has)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


def test_action_changes_only_its_frame_and_later():
    torch.manual_seed(0)
    model = Dynamics(SMALL).eval()
    z, tau, k, action, has = inputs()
    action2 = action.clone()
    action2[:, 2] = -action2[:, 2]
    out, _ = model(z, tau, k, action, has)
    out2, _ = model(z, tau, k, action2, has)
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-6)
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_agent_tokens_read_everything_and_nothing_reads_them():
    torch.manual_seed(0)
    model = Dynamics(replace(SMALL, agent_tokens=2, tasks=3)).eval()
    z, tau, k, action, has = inputs()
    out, h = model(z, tau, k, action, has, task=torch.tensor([0, 0]))
    out2, h2 = model(z, tau, k, action, has, task=torch.tensor([2, 1]))
    agents = model.layout.slice("agents")
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    world = slice(0, agents.start)
    torch.testing.assert_close(h[:, :, world], h2[:, :, world], atol=0, rtol=0)
    assert not torch.allclose(h[:, :, agents], h2[:, :, agents])
    z2 = z.clone()
    z2[:, 0] += 1
    _, h3 = model(z2, tau, k, action, has, task=torch.tensor([0, 0]))
    assert not torch.allclose(h[:, :, agents], h3[:, :, agents])  # agents read the latents
    with pytest.raises(UserError, match=r"task ids must lie in \[0, 2\]"):
        model(z, tau, k, action, has, task=torch.tensor([0, 3]))
    mask = model.transformer.space_mask
    assert not mask[: agents.start, agents].any() and mask[agents].all()


def test_no_action_is_the_base_embedding(model):
    action = torch.rand(1, 3, 2) * 2 - 1
    tokens = model.embed_actions(action, torch.tensor([[False, True, True]]))
    torch.testing.assert_close(tokens[0, 0, 0], model.action_base)
    assert not torch.allclose(tokens[0, 1, 0], model.action_base)
    edges = model.embed_actions(torch.tensor([[[-1.0, 1.0]]]), torch.tensor([[True]]))
    expected = model.action_base + model.action_embed.weight[0] + model.action_embed.weight[8 + 7]
    torch.testing.assert_close(edges[0, 0, 0], expected)


def test_levels_on_the_grid():
    torch.manual_seed(0)
    config = replace(SMALL, max_steps=16, bootstrap_frac=0.5)
    n = draw_noise(config, torch.zeros(4000, 4, 4, 3))
    k, tau = n["step_index"], n["tau"]
    d = 2.0 ** -k.float()
    assert set(k.unique().tolist()) == {0, 1, 2, 3, 4}
    assert torch.allclose(tau / d, (tau / d).round()) and (tau >= 0).all() and (tau <= 1 - d).all()
    assert (k[~n["bootstrap"]] == 4).all()
    for level in range(5):  # tau uniform on each grid
        taus = tau[n["bootstrap"][:, None] & (k == level)]
        assert len(taus.unique()) == 2**level
    assert abs(n["bootstrap"].float().mean() - 0.5) < 0.05
    assert abs(n["independent"].float().mean() - 0.3) < 0.05


class Affine(nn.Module):
    """A deterministic stand-in network: z1_hat = w * z + v."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.w, self.v = nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.tensor(0.2))

    def forward(self, z, tau, step_index, action, has_action, task=None, independent=None):
        return self.w * z + self.v, None


def test_shortcut_loss_hand_computed():
    config = replace(SMALL, max_steps=4)  # k_max = 2, d_min = 1/4
    model = Affine(config)
    z1 = torch.randn(1, 3, 4, 3)
    z0 = torch.randn(1, 3, 4, 3)
    k = torch.tensor([[2, 1, 0]])  # flow frame, then d = 1/2 and d = 1
    tau = torch.tensor([[0.75, 0.5, 0.0]])
    noise = {
        "step_index": k,
        "tau": tau,
        "z0": z0,
        "bootstrap": torch.tensor([True]),
        "independent": torch.tensor([False]),
    }
    valid = torch.tensor([[True, True, True]])
    action, has = torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool)
    loss, metrics, _ = shortcut_forcing_loss(model, z1, action, has, valid, noise=noise)
    loss.backward()

    w, v = torch.tensor(0.7, requires_grad=True), torch.tensor(0.2, requires_grad=True)
    f = lambda z: w * z + v  # noqa: E731
    terms = []
    for t in range(3):
        s, d = tau[0, t].item(), 2.0 ** -k[0, t].item()
        zt = (1 - s) * z0[0, t] + s * z1[0, t]
        if d == 0.25:
            err = ((f(zt) - z1[0, t]) ** 2).mean()
        else:
            with torch.no_grad():
                b1 = (f(zt) - zt) / (1 - s)
                z_mid = zt + b1 * d / 2
                b2 = (f(z_mid) - z_mid) / (1 - s - d / 2)
                target = (b1 + b2) / 2
            err = (1 - s) ** 2 * (((f(zt) - zt) / (1 - s) - target) ** 2).mean()
        terms.append((0.9 * s + 0.1) * err)
    expected = sum(terms) / 3
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.w.grad, w.grad)
    torch.testing.assert_close(model.v.grad, v.grad)
    assert metrics["flow_mse"] > 0 and metrics["bootstrap_mse"] > 0


def test_shortcut_loss_ignores_padding(model):
    z1 = torch.randn(2, 4, 4, 3)
    action = torch.rand(2, 4, 2) * 2 - 1
    has = torch.ones(2, 4, dtype=torch.bool)
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    torch.manual_seed(1)
    noise = draw_noise(SMALL, z1)
    a, _, _ = shortcut_forcing_loss(model, z1, action, has, valid, noise=noise)
    z1b = z1.clone()
    z1b[1, 2:] = 100.0
    b, _, _ = shortcut_forcing_loss(model, z1b, action, has, valid, noise=noise)
    torch.testing.assert_close(a, b)


def test_independent_frames_ignore_each_other(model):
    z, tau, k, action, has = inputs(b=1, t=4)
    alone, _ = model(z, tau, k, action, has, independent=torch.tensor([True]))
    z2 = z.clone()
    z2[:, 0] += 5
    alone2, _ = model(z2, tau, k, action, has, independent=torch.tensor([True]))
    torch.testing.assert_close(alone[:, 1:], alone2[:, 1:])
    single, _ = model(z[:, 2:3], tau[:, 2:3], k[:, 2:3], action[:, 2:3], has[:, 2:3])
    torch.testing.assert_close(alone[:, 2:3], single, atol=1e-5, rtol=1e-5)


def world(use_cache, seed=0, steps=4):
    torch.manual_seed(0)
    tok = Tokenizer(replace(TINY_TOKENIZER, window=3))
    dyn = Dynamics(SMALL)
    generator = torch.Generator().manual_seed(seed)
    return WorldModel(tok, dyn, steps=steps, use_cache=use_cache, generator=generator)


@pytest.mark.parametrize("steps", [1, 4])
def test_cached_generation_equals_uncached(steps):
    frames = torch.rand(2, 3, 3, 16, 16)
    actions = torch.rand(2, 3, 2) * 2 - 1
    future = torch.rand(2, 7, 2) * 2 - 1  # longer than the window: the context rolls
    cached = world(True, steps=steps).imagine(frames, actions, future)
    uncached = world(False, steps=steps).imagine(frames, actions, future)
    assert cached.shape == (2, 7, 3, 16, 16) and cached.min() >= 0 and cached.max() <= 1
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)


def test_generation_from_no_context_and_bad_input():
    w = world(True)
    w.reset(torch.zeros(1, 0, 3, 16, 16), torch.zeros(1, 0, 2))
    assert w.step(torch.zeros(1, 2)).shape == (1, 3, 16, 16)
    w.reset(torch.rand(1, 9, 3, 16, 16), torch.zeros(1, 9, 2))  # past the window: it rolls
    assert w.step(torch.zeros(1, 2)).shape == (1, 3, 16, 16)
    with pytest.raises(UserError, match="actions must have 2 dimensions"):
        w.step(torch.zeros(1, 3))
    with pytest.raises(UserError, match=r"lie in \[-1, 1\]"):
        w.step(torch.full((1, 2), 2.0))
    with pytest.raises(UserError, match="power of two"):
        world(True, steps=3)


def test_denoise_one_step_returns_prediction(model):
    noise = torch.randn(2, 4, 3)
    action, has = torch.zeros(2, 2), torch.ones(2, dtype=torch.bool)
    z = denoise(model, noise, action, has, 1, None)
    pred, _ = model(
        noise[:, None],
        torch.zeros(2, 1),
        torch.zeros(2, 1, dtype=torch.long),
        action[:, None],
        has[:, None],
    )
    torch.testing.assert_close(z, pred[:, 0])


def drifting_latents(b: int, t: int, drift: float):
    """Latent sequences (B,T,4,3) that drift by the first action dimension; -> the inputs of
    `shortcut_forcing_loss` (z1, action, has_action, valid)."""
    action = torch.rand(b, t, 2) * 2 - 1
    start = torch.rand(b, 1, 4, 3) * 1.2 - 0.6
    z1 = (start + drift * action.cumsum(1)[..., None, :1]).clamp(-1, 1)
    return z1, action, torch.ones(b, t, dtype=torch.bool), torch.ones(b, t, dtype=torch.bool)


def flow_losses(model: Dynamics, inputs, updates: int, **options) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(updates):
        loss, metrics, _ = shortcut_forcing_loss(model, *inputs, **options)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["flow_mse"].item())
    return losses


def test_learns_on_tiny_data():
    """Latent sequences that drift by the action: the model must learn to use both."""
    torch.manual_seed(0)
    model = Dynamics(replace(SMALL, max_steps=4, window=4))
    losses = flow_losses(model, drifting_latents(16, 4, 0.2), 150)
    assert sum(losses[-15:]) < 0.5 * sum(losses[:15])
    assert math.isfinite(losses[-1])


def test_own_rollout_is_what_the_world_model_imagines():
    """The second half of a rollout window is generated exactly as `WorldModel` generates it
    (same random draws in the same order); the first half stays the recorded latents."""
    w = world(True, steps=2)
    w.dynamics.config = replace(w.dynamics.config, rollout_steps=2)
    w.generator = None  # both draw from the global generator
    frames, actions = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 6, 2) * 2 - 1
    has = torch.ones(2, 6, dtype=torch.bool)
    has[:, 0] = False
    recorded = w.tokenizer.encode(frames)
    z1 = torch.cat([recorded, torch.randn_like(recorded)], 1)  # (2,6,N,Dl): start = 3
    torch.manual_seed(1)
    own = own_rollout(w.dynamics, z1, actions, has)
    torch.manual_seed(1)
    w.reset(frames, actions[:, :3], has[:, :3])
    imagined = torch.stack([w.step_latents(actions[:, i]) for i in range(3, 6)], 1)
    assert torch.equal(own[:, :3], recorded)
    torch.testing.assert_close(own[:, 3:], imagined, atol=1e-5, rtol=1e-5)


def test_rollout_training_learns_and_leaves_phase_two_alone():
    torch.manual_seed(0)
    config = replace(SMALL, max_steps=4, window=8, rollout_frac=1.0, independent_frac=0.0)
    model = Dynamics(config)
    inputs = drifting_latents(16, 8, 0.1)
    noise = draw_noise(config, inputs[0])
    off = Dynamics(replace(config, rollout_frac=0.0))
    off.load_state_dict(model.state_dict())
    plain, _, _ = shortcut_forcing_loss(model, *inputs, noise=noise)
    same, _, _ = shortcut_forcing_loss(off, *inputs, noise=noise, rollout=True)
    own, _, _ = shortcut_forcing_loss(model, *inputs, noise=noise, rollout=True)
    assert torch.equal(plain, same) and not torch.equal(plain, own)  # phase 2: no rollout
    losses = flow_losses(model, inputs, 100, rollout=True)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
