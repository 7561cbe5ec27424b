"""Counterfactual evaluation on the dot world, with oracle world models of known answers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nanodreamer.data import EpisodeStore, collect
from nanodreamer.envs.dot import DotEnv
from nanodreamer.eval.dynamics import counterfactual_dynamics
from nanodreamer.eval.metrics import correlation, mean_interval
from nanodreamer.eval.replay import alternative_actions, pick_contexts, real_branches


@pytest.fixture(scope="module")
def dot_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "dot"
    collect("dot", path, 12, seed=3, progress=False)
    return EpisodeStore(path)


def test_replay_with_the_recorded_actions_gives_the_recorded_future(dot_data):
    contexts = pick_contexts(dot_data, 4, context=5, horizon=16, split="all")
    for ctx in contexts:
        episode = dot_data.load(ctx.episode)
        future = slice(ctx.end + 1, ctx.end + 17)
        real = real_branches(dot_data, [ctx], episode["action"][None, future])
        np.testing.assert_array_equal(real["frames"][0, 0], episode["obs"][future])
        np.testing.assert_allclose(real["rewards"][0, 0], episode["reward"][future], rtol=1e-6)
        assert real["alive"].all()


def test_alternative_actions_hold_each_axis_then_random():
    actions = alternative_actions("dot", 2, horizon=5, randoms=2)
    assert actions.shape == (6, 5, 2)
    assert actions[0].tolist() == [[-1.0, 0.0]] * 5 and actions[3].tolist() == [[0.0, 1.0]] * 5
    assert np.abs(actions[4:]).max() <= 1 and len(np.unique(actions[4:, :, 0])) > 1


class OracleDot:
    """A perfect dot world model read off the last context frame (dot and target cells); with
    `follow=False` it ignores the actions it is given and always stays put."""

    window, device = 16, torch.device("cpu")
    dynamics = SimpleNamespace(config=SimpleNamespace(action_dim=2))

    def __init__(self, follow: bool):
        self.follow = follow

    def reset(self, frames, actions, has_action):
        self.envs = []
        for frame in (frames[:, -1] * 255).round().byte().permute(0, 2, 3, 1).numpy():
            env = DotEnv()
            env.reset(seed=0)
            cells = frame[1::4, 1::4]  # one pixel inside each cell
            env.dot = np.argwhere((cells == (240, 60, 40)).all(-1))[0]
            env.target = np.argwhere((frame[::4, ::4] == (40, 220, 60)).all(-1))[0]
            self.envs.append(env)

    def step(self, action):
        frames = []
        for env, a in zip(self.envs, action.numpy(), strict=True):
            obs, *_ = env.step(a if self.follow else np.zeros(2, np.float32))
            frames.append(torch.from_numpy(obs).permute(2, 0, 1).float() / 255)
        return torch.stack(frames)


def test_controllability_of_models_that_follow_or_ignore_actions(dot_data):
    follows = counterfactual_dynamics(OracleDot(True), dot_data.path, contexts=6, split="all")
    ignores = counterfactual_dynamics(OracleDot(False), dot_data.path, contexts=6, split="all")
    assert follows["counterfactual_psnr_h8"] == pytest.approx(100.0)  # exact frames
    assert follows["controllability_h8"] > 20
    for h in (1, 4, 8, 16):
        assert ignores[f"controllability_h{h}"] == pytest.approx(0.0, abs=1e-6)
    assert follows["counterfactual_actions"] == 6 and follows["counterfactual_contexts"] == 6


class NoisyOracle(OracleDot):
    """The oracle with random noise on every frame: its figures depend on torch's draws."""

    def step(self, action):
        frames = super().step(action)
        return (frames + 0.05 * torch.randn_like(frames)).clamp(0, 1)


def test_figures_are_seeded_and_leave_the_callers_random_state(dot_data):
    noisy = NoisyOracle(True)
    first = counterfactual_dynamics(noisy, dot_data.path, contexts=4, split="all")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    second = counterfactual_dynamics(noisy, dot_data.path, contexts=4, split="all")
    assert first == second and first["counterfactual_psnr_h8"] < 50  # the noise is there
    assert torch.equal(torch.get_rng_state(), state)


def test_mean_interval_and_correlation_known_values():
    stats = mean_interval([1, 2, 3, 4, 5])
    assert stats["mean"] == 3 and stats["std"] == pytest.approx(np.sqrt(2.5))
    assert stats["ci95"] == pytest.approx(2.776 * np.sqrt(2.5) / np.sqrt(5), rel=1e-4)
    big = mean_interval(np.arange(1000.0))
    assert big["ci95"] == pytest.approx(1.9623 * big["std"] / np.sqrt(1000), rel=1e-3)
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(correlation([1, 1, 1], [1, 2, 3]))


def test_evaluation_seeds_are_fresh_and_episodes_full_length(dot_data):
    from nanodreamer.data.collect import episode_seed
    from nanodreamer.eval.agent import evaluation_seeds

    collected = [e["seed"] for e in dot_data.episodes]
    assert collected[0] == episode_seed(3, 0)
    seeds = evaluation_seeds(0, 50, taken=collected)
    assert len(set(seeds)) == 50 and not set(seeds) & set(collected)
    clash = evaluation_seeds(0, 3)
    assert evaluation_seeds(0, 3, taken=clash[:1]) == clash[1:] + evaluation_seeds(0, 4)[3:]
