import numpy as np
import pytest
import torch
from conftest import cli, make_store, synthetic_episode, train_world_model

from nanodreamer import envs
from nanodreamer.agent import (
    AgentConfig,
    AgentHeads,
    action_to_bins,
    bins_to_action,
    complete_context,
    kl_categorical,
    lambda_returns,
    log_prob,
    mtp_losses,
    mtp_targets,
    pmpo_loss,
)
from nanodreamer.errors import UserError
from nanodreamer.nn.distributions import TwoHot, symexp, symlog
from nanodreamer.recipes import ImaginationSettings


def test_mtp_targets_aligned():
    """reward[t] depends only on action[t]: h_t's policy targets are action[t+1..t+L] and its
    reward targets reward[t..t+L], so distance 0 pairs the reward with the action h_t read.
    An episode's first frame (no action led to it) is never a target."""
    t, length = torch.arange(10), 3
    action = torch.stack([torch.linspace(-1, 1, 10), torch.zeros(10)], -1)[None]
    batch = {
        "action": action,
        "reward": (3 * action[..., 0] + 1) * (t > 0),
        "is_first": t[None] == 0,
        "is_terminal": t[None] == 9,
        "valid": torch.ones(1, 10, dtype=torch.bool),
    }
    targets = mtp_targets(batch, length, window=1)
    policy_mask, reward_mask = targets["policy_mask"][0], targets["reward_mask"][0]
    assert targets["action"].shape == (1, 10, 3, 2) and policy_mask.shape == (10, 3)
    assert targets["reward"].shape == (1, 10, 4) and reward_mask.shape == (10, 4)
    for step in range(10):
        for k in range(1, length + 1):
            assert policy_mask[step, k - 1] == (step + k < 10)
            if step + k < 10:
                assert targets["action"][0, step, k - 1, 0] == action[0, step + k, 0]
        for k in range(length + 1):
            assert reward_mask[step, k] == (0 < step + k < 10)
            if 0 < step + k < 10:
                assert targets["reward"][0, step, k] == 3 * action[0, step + k, 0] + 1
                assert targets["cont"][0, step, k] == (step + k != 9)
    padded = dict(batch, valid=t[None] < 6)
    padded_mask = mtp_targets(padded, length, window=1)["policy_mask"][0]
    assert padded_mask[4].tolist() == [True, False, False] and not padded_mask[5:].any()


def test_only_frames_with_a_complete_context_are_targets():
    """With a context of 4 frames, a window that starts mid-episode trains only its frames
    from the 4th on; one that starts an episode trains all of them."""
    batch = {
        "action": torch.zeros(2, 6, 2),
        "reward": torch.zeros(2, 6),
        "is_first": torch.tensor([[True] + [False] * 5, [False] * 6]),
        "is_terminal": torch.zeros(2, 6, dtype=torch.bool),
        "valid": torch.ones(2, 6, dtype=torch.bool),
    }
    assert complete_context(batch["is_first"], 4).tolist() == [[True] * 6, [False] * 3 + [True] * 3]
    mask = mtp_targets(batch, 2, window=4)["reward_mask"][..., 0]
    assert mask.tolist() == [[False] + [True] * 5, [False] * 3 + [True] * 3]


def test_distance_zero_gets_half_of_the_reward_and_continuation_losses():
    """Imagination reads distance 0 only: it gets half of the reward and continuation terms,
    distances 1..L share the other half (a plain mean would give it 1/(L+1))."""
    torch.manual_seed(0)
    heads = AgentHeads(AgentConfig(dim=8, action_dim=2, action_bins=4, mtp=3))
    t = torch.arange(12)
    batch = {
        "action": torch.rand(2, 12, 2) * 2 - 1,
        "reward": torch.randn(2, 12) * (t > 0),
        "is_first": (t == 0).expand(2, 12),
        "is_terminal": t.expand(2, 12) == 11,
        "valid": torch.ones(2, 12, dtype=torch.bool),
    }
    h = torch.randn(2, 12, 8)
    losses = mtp_losses(heads, h, batch, window=1)
    targets = mtp_targets(batch, 3, window=1)
    mask = targets["reward_mask"]
    per_distance = heads.twohot.loss(heads.reward(h), targets["reward"])  # (B,T,K)
    d0 = per_distance[..., 0][mask[..., 0]].mean()
    ahead = per_distance[..., 1:][mask[..., 1:]].mean()
    assert torch.allclose(losses["reward"], 0.5 * d0 + 0.5 * ahead)
    assert not torch.allclose(losses["reward"], per_distance[mask].mean())


def test_two_hot_round_trip_with_negatives():
    twohot = TwoHot(bins=63, limit=10.0)
    values = torch.tensor([-1000.0, -37.5, -1.0, -0.01, 0.0, 0.3, 2.0, 512.0])
    target = twohot.encode(values)
    assert torch.allclose(target.sum(-1), torch.ones(8))
    assert ((target > 0).sum(-1) <= 2).all()
    decoded = symexp((target * twohot.points).sum(-1))
    torch.testing.assert_close(decoded, values, rtol=1e-4, atol=1e-5)
    logits = torch.log(target.clamp(min=1e-12))
    torch.testing.assert_close(twohot.decode(logits), values, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(symexp(symlog(values)), values)


def test_lambda_returns_hand_computed():
    reward = torch.tensor([[1.0, 2.0]])
    cont = torch.tensor([[1.0, 0.5]])
    value = torch.tensor([[0.0, 10.0, 20.0]])
    gamma, lam = 0.9, 0.8
    r1 = 2.0 + gamma * 0.5 * 20.0  # R_1 = r_2 + g c_2 v_2 (R_2 = v_2)
    r0 = 1.0 + gamma * 1.0 * ((1 - lam) * 10.0 + lam * r1)
    torch.testing.assert_close(
        lambda_returns(reward, cont, value, gamma, lam), torch.tensor([[r0, r1]])
    )


def test_lambda_returns_stop_where_a_window_ends():
    """A step with no next state (padding after a truncated episode) is its own value, and the
    step before it bootstraps from that value alone."""
    reward, cont = torch.tensor([[1.0, 2.0, 0.0]]), torch.ones(1, 3)
    value = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    ends = torch.tensor([[False, True, True]])
    returns = lambda_returns(reward, cont, value, 0.9, 0.8, ends=ends)
    torch.testing.assert_close(returns, torch.tensor([[1.0 + 0.9 * 10.0, 10.0, 20.0]]))


def test_pmpo_hand_computed():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    advantage = torch.tensor([1.0, -2.0, 0.5, -0.1])
    kl = torch.tensor([0.2, 0.4, 0.0, 0.2])
    loss = pmpo_loss(logp, advantage, kl, alpha=0.5, beta=0.3)
    negative = (1 - 0.5) * (-2.0 + -3.0) / 2
    positive = -0.5 * (-1.0 + -0.5) / 2
    expected = negative + positive + 0.3 * 0.8 / 4
    assert loss.item() == pytest.approx(expected)
    loss.backward()  # positive advantages raise log pi, negative ones lower it
    assert logp.grad.tolist() == pytest.approx([-0.25, 0.25, -0.25, 0.25])
    assert pmpo_loss(logp, -advantage.abs(), kl * 0).item() == pytest.approx(0.5 * (-6.5) / 4)


def test_policy_distribution_helpers():
    bins = 8
    action = torch.tensor([[-1.0, 0.99], [0.1, -0.3]])
    index = action_to_bins(action, bins)
    assert index.tolist() == [[0, 7], [4, 2]]
    assert (action_to_bins(bins_to_action(index, bins), bins) == index).all()
    logits = torch.zeros(2, 2, bins)
    assert log_prob(logits, action).tolist() == pytest.approx([2 * np.log(1 / 8)] * 2)
    assert kl_categorical(logits, logits).abs().max() < 1e-6
    heads = AgentHeads(AgentConfig(dim=16, action_dim=2, action_bins=bins, mtp=3))
    assert heads.policy_logits(torch.zeros(5, 16)).shape == (5, 3, 2, bins)
    assert heads.value(torch.randn(5, 16)).abs().max() == 0  # a new value head starts at 0


def test_dot_env_rewards_and_spaces():
    env = envs.make("dot")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and env.action_space.shape == (2,)
    u = env.unwrapped
    toward = np.sign(u.target - u.dot)[::-1].astype(np.float32)  # (x, y) = (column, row)
    _, closer, *_ = env.step(toward)
    env.reset(seed=0)
    _, away, *_ = env.step(-toward)
    assert closer > away and closer <= 0
    start = u.dot.copy()
    env.step(np.array([0.2, -0.25], np.float32))  # inside the dead zone: no move
    assert (u.dot == start).all()
    for _ in range(4):
        env.step(np.array([1.0, 1.0], np.float32))
    assert (u.dot == 3).all()  # stops at the grid's edge
    steps = 6
    done = False
    while not done:
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        done = terminated or truncated
    assert steps == 50


@pytest.fixture(scope="module")
def agent_runs(tmp_path_factory):
    """A tiny world model and agent on synthetic 16x16 data (only the plumbing is tested)."""
    root = tmp_path_factory.mktemp("agent")
    data = make_store(root / "data", [40, 36, 50, 44], size=16).path
    train_world_model(root, data, steps=2)
    cli(
        f"train agent --data {data} --world-model {root}/dyn --out {root}/agent --steps 2 "
        "--seq-len 8"
    )
    return root


def test_phases_trained_by_hand_get_the_driving_recipe(agent_runs, tmp_path):
    """`train dynamics|agent|imagination` with no setting flags: the car-racing recipe's
    settings, as `rounds` gives them; a flag changes only its own setting."""
    from dataclasses import asdict

    from nanodreamer.recipes import RECIPES
    from nanodreamer.runs import read_run

    car = RECIPES["car-racing"]
    world = read_run(agent_runs / "dyn")["model_config"]
    assert (world["action_bins"], world["rollout_frac"]) == (8, car.dynamics.rollout_frac)
    assert read_run(agent_runs / "agent")["value_gamma"] == car.agent.value_gamma
    cli(f"train imagination --run {agent_runs}/agent --out {tmp_path}/im --steps 1")
    cli(f"train imagination --run {agent_runs}/agent --out {tmp_path}/h2 --steps 1 --horizon 2")
    for run, changed in (("im", {}), ("h2", {"horizon": 2})):
        settings = read_run(tmp_path / run)["imagination"]
        expected = asdict(car.imagination) | changed
        assert {k: settings[k] for k in expected} == expected


def test_phase3_trains_only_policy_and_value(agent_runs, tmp_path):
    from nanodreamer.runs import load_agent
    from nanodreamer.train.distributed import Distributed
    from nanodreamer.train.imagination import ImaginationPhase
    from nanodreamer.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, workers=0, tensorboard=False, lr=1e-2)
    settings = ImaginationSettings(horizon=3, prior="bc", value_warmup=0)
    phase = ImaginationPhase(agent_runs / "agent", cfg, settings)
    before = {k: v.clone() for k, v in phase.model.state_dict().items()}
    prior = {k: v.clone() for k, v in phase.objective.prior.state_dict().items()}
    Trainer(tmp_path / "imagination", phase, cfg, Distributed()).fit()
    after = phase.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.startswith(("heads.policy.trunk", "heads.policy.out.0", "heads.value")) for k in changed
    ), changed
    assert all(torch.equal(prior[k], v) for k, v in phase.objective.prior.state_dict().items())
    assert not any(p.requires_grad for p in phase.model.dynamics.parameters())
    trained, _ = load_agent(tmp_path / "imagination")
    assert torch.equal(trained.heads.value[-1].weight, after["heads.value.3.weight"])
    with pytest.raises(UserError, match="start from an agent run"):
        ImaginationPhase(tmp_path / "imagination", cfg)


def test_value_warmup_trains_the_value_alone_and_resumes(agent_runs, tmp_path):
    """The first `value_warmup` updates leave the policy as it is; the count is saved, so a
    resumed run does not warm up again."""
    from dataclasses import replace

    from nanodreamer.train.distributed import Distributed
    from nanodreamer.train.imagination import ImaginationPhase
    from nanodreamer.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, workers=0, tensorboard=False, lr=1e-2)

    def train(cfg, resume):
        settings = ImaginationSettings(horizon=3, value_warmup=2)
        phase = ImaginationPhase(agent_runs / "agent", cfg, settings)
        before = {k: v.clone() for k, v in phase.model.state_dict().items()}
        Trainer(tmp_path / "imagination", phase, cfg, Distributed()).fit(resume=resume)
        after = phase.model.state_dict()
        return phase, {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}

    phase, changed = train(cfg, resume=False)
    assert changed == {"value"} and phase.objective.updates == 2
    phase, changed = train(replace(cfg, steps=3), resume=True)
    assert "policy" in changed and phase.objective.updates == 3
    assert phase.run_info()["imagination"]["value_warmup"] == 2


def test_data_prior_is_the_same_in_every_state(agent_runs):
    """--prior data: the policy starts at, and its KL prior is, each action dimension's bin
    frequencies in the data, whatever its BC weights said, in every state; --prior bc keeps
    the BC policy."""
    from nanodreamer.train.imagination import ImaginationPhase, action_prior_logits
    from nanodreamer.train.trainer import TrainConfig

    cfg = TrainConfig(steps=1, batch_size=2, seq_len=8, workers=0, tensorboard=False)
    phase = ImaginationPhase(agent_runs / "agent", cfg, ImaginationSettings(horizon=3))
    heads = phase.model.heads
    bins = heads.config.action_bins
    expected = action_prior_logits(phase.latents, bins)
    states = torch.randn(5, heads.config.dim)
    for head in (heads.policy, phase.objective.prior):
        logits = head(states, 1)[:, 0].unflatten(-1, (2, bins))
        torch.testing.assert_close(logits.log_softmax(-1), expected.expand(5, 2, bins))
    assert phase.run_info()["imagination"]["prior"] == "data"
    bc = ImaginationPhase(agent_runs / "agent", cfg, ImaginationSettings(horizon=3, prior="bc"))
    logits = bc.model.heads.policy(states, 1)[:, 0].unflatten(-1, (2, bins))
    assert not torch.allclose(logits.log_softmax(-1), expected.expand(5, 2, bins))
    with pytest.raises(UserError, match="unknown prior 'flat'"):
        ImaginationPhase(agent_runs / "agent", cfg, ImaginationSettings(prior="flat"))


def test_data_prior_is_the_data_action_frequencies(tmp_path):
    """Each dimension's bin frequencies over the labelled episodes (not the reset frame's zero
    action), bins the data never took at the floor; action-free episodes do not count."""
    from nanodreamer.data import EpisodeStore
    from nanodreamer.train.imagination import action_prior_logits

    episodes = [synthetic_episode(9, i, 8, 2) for i in range(3)]
    for episode in episodes:  # steer: bins 2 and 3 ...
        episode["action"][:, 0] = np.abs(episode["action"][:, 0])
    episodes[1]["action"][1:, 0] = -1.0  # ... and bin 0; bin 1 never
    with EpisodeStore.create(tmp_path / "data", env="synthetic", obs_shape=(8, 8, 3),
                             action_dim=2) as store:  # fmt: skip
        for episode in episodes:
            store.add(episode)
        free = synthetic_episode(9, 3, 8, 2)
        free["action"][:], free["reward"][:] = 0, 0
        store.add(free, actions=False)
    probs = action_prior_logits(EpisodeStore(tmp_path / "data"), 4, floor=0.01).exp()
    actions = np.concatenate([e["action"][1:] for e in episodes])  # (24,2)
    for dim in range(2):
        counts = np.bincount(action_to_bins(torch.as_tensor(actions[:, dim]), 4), minlength=4)
        freq = torch.as_tensor(counts / counts.sum()).float().clamp(min=0.01)
        torch.testing.assert_close(probs[dim], freq / freq.sum())
    assert probs[0, 1] == pytest.approx(0.01 / 1.01)


def test_imagination_sampling_steps(agent_runs):
    """Each imagined frame costs K denoising passes and one pass that reads it into the
    context; K must be a power of two the world model was trained for."""
    from nanodreamer.agent import imagine_rollouts
    from nanodreamer.train.distributed import Distributed
    from nanodreamer.train.imagination import ImaginationPhase
    from nanodreamer.train.trainer import TrainConfig

    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, workers=0, tensorboard=False)
    phase = ImaginationPhase(agent_runs / "agent", cfg, ImaginationSettings(sampling_steps=2))
    assert phase.run_info()["imagination"]["sampling_steps"] == 2
    batch = next(iter(phase.batches(0, Distributed())))
    passes = []
    phase.model.dynamics.register_forward_hook(lambda *_: passes.append(1))
    for steps in (1, 2, 4):
        passes.clear()
        rollout = imagine_rollouts(phase.model, batch, 3, steps)
        assert rollout["latents"].shape[1] == 3 and len(passes) == 1 + 3 * (steps + 1)
    with pytest.raises(UserError, match="power of two"):
        ImaginationPhase(agent_runs / "agent", cfg, ImaginationSettings(sampling_steps=3))


def test_policy_context_reset_between_episodes(agent_runs):
    from nanodreamer.eval.agent import AgentPolicy

    policy = AgentPolicy(agent_runs / "agent", num_envs=1, mode=True)
    frames = np.random.default_rng(0).integers(0, 255, (6, 1, 16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)  # the context noise is the only randomness of a mode policy
    first = [policy.act(frames[0], np.array([True]))]
    for t in range(1, 6):
        first.append(policy.act(frames[t], np.array([False])))
    stream = lambda: policy.groups[policy.member[0]][0]  # noqa: E731 - env 0's stream
    assert stream().context.frames == 6
    torch.manual_seed(0)
    again = policy.act(frames[0], np.array([True]))
    assert stream().context.frames == 1  # a new episode starts from an empty context
    np.testing.assert_array_equal(again, first[0])


def test_wrong_phase_and_env_are_refused(agent_runs):
    from nanodreamer.eval.agent import evaluate_agent
    from nanodreamer.runs import load_agent
    from nanodreamer.train.agent import AgentPhase
    from nanodreamer.train.trainer import TrainConfig

    with pytest.raises(UserError, match="dynamics run, but an agent run"):
        load_agent(agent_runs / "dyn")
    with pytest.raises(UserError, match="tokenizer run, but a dynamics run"):
        AgentPhase(agent_runs / "data", agent_runs / "tok", TrainConfig())
    with pytest.raises(UserError, match="trained on 'synthetic', not 'dot'"):
        evaluate_agent(agent_runs / "agent", "dot", 1)


def test_agent_starts_from_the_world_model(agent_runs):
    from nanodreamer.runs import load_world_model
    from nanodreamer.train.agent import AgentPhase
    from nanodreamer.train.trainer import TrainConfig

    phase = AgentPhase(agent_runs / "data", agent_runs / "dyn", TrainConfig(seq_len=8))
    world = load_world_model(agent_runs / "dyn").dynamics
    agent = phase.model.dynamics
    s = world.transformer.space_bias.shape[-1]
    assert agent.transformer.space_bias.shape[-1] == s + 1  # one agent token
    assert torch.equal(agent.transformer.space_bias[:, :s, :s], world.transformer.space_bias)
    assert torch.equal(agent.latent_in.weight, world.latent_in.weight)


def test_cached_latents_and_agent_features_equal_what_acting_computes(agent_runs):
    """On episodes over 3x the windows: the latent cache dynamics training reads equals the
    tokenizer streaming frame by frame as when acting, and the agent features phase 2 trains
    on (frames with a complete context) equal the features acting computes."""
    from nanodreamer.agent import complete_context
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.runs import load_agent, load_tokenizer
    from nanodreamer.tokenizer import frames_from_uint8

    latents = encode_dataset(agent_runs / "data", agent_runs / "tok")
    tokenizer = load_tokenizer(agent_runs / "tok")
    model, _ = load_agent(agent_runs / "agent")
    window = model.dynamics.config.window
    episode = latents.load(0)
    obs, length = latents.data.load(0, ("obs",))["obs"], len(episode["latents"])
    assert length >= 3 * max(window, tokenizer.config.window)
    cache = tokenizer.new_cache()
    frames = frames_from_uint8(torch.from_numpy(obs))[None]
    acting = torch.cat([tokenizer.encode(frames[:, t : t + 1], cache) for t in range(length)], 1)
    cached = torch.from_numpy(np.array(episode["latents"])).float()[None]
    torch.testing.assert_close(cached, acting, atol=2e-3, rtol=0)  # stored as float16

    z, action = acting, torch.from_numpy(episode["action"])[None]
    has_action = ~torch.from_numpy(episode["is_first"])[None]
    noise = torch.randn_like(z)
    cache = model.dynamics.new_cache()
    streamed = torch.cat(
        [
            model.observe(
                z[:, t : t + 1],
                action[:, t : t + 1],
                has_action[:, t : t + 1],
                cache,
                noise=noise[:, t : t + 1],
            )  # fmt: skip
            for t in range(length)
        ],
        1,
    )
    is_first = torch.from_numpy(episode["is_first"])[None]
    for start in (0, 5, length - 2 * window):
        rows = slice(start, start + 2 * window)
        inputs = {"z1": z[:, rows], "action": action[:, rows], "has_action": has_action[:, rows]}
        with torch.no_grad():
            trained = model.context_features(inputs, noise=noise[:, rows])
        complete = complete_context(is_first[:, rows], window)[0]
        assert complete.sum() >= window + 1
        torch.testing.assert_close(
            trained[0, complete], streamed[0, rows][complete], atol=1e-4, rtol=1e-4
        )


def action_reward_store(data):
    """6 synthetic episodes of 60 steps whose reward[t] is 2 action[t, 0]."""
    from conftest import synthetic_episode

    from nanodreamer.data import EpisodeStore

    with EpisodeStore.create(data, env="synthetic", obs_shape=(16, 16, 3), action_dim=2) as store:
        for i in range(6):
            episode = synthetic_episode(60, i, 16)
            episode["reward"] = 2 * episode["action"][:, 0] * (np.arange(60) > 0)
            store.add(episode)
    return data


def test_reward_of_an_action_is_learned_and_used_in_imagination(tmp_path):
    """reward[t] = 2 action[t, 0]: after phase 2, forcing two different actions at one
    imagination step gives the two rewards the rule says."""
    from nanodreamer.agent import rollout_from, transition_rewards
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.dynamics import latent_batch
    from nanodreamer.runs import load_agent

    data = action_reward_store(tmp_path / "data")
    cli(f"train tokenizer --data {data} --out {tmp_path}/tok --steps 2 --seq-len 4")
    cli(
        f"train dynamics --data {data} --tokenizer {tmp_path}/tok --out {tmp_path}/dyn "
        "--steps 2 --seq-len 4 --long-seq-len 0"
    )
    cli(
        f"train agent --data {data} --world-model {tmp_path}/dyn --out {tmp_path}/agent "
        "--steps 400 --lr 2e-3 --batch-size 8"
    )
    model, info = load_agent(tmp_path / "agent")
    latents = encode_dataset(data, info["tokenizer"])
    episode = latents.load(0)
    window = model.dynamics.config.window
    batch = {k: torch.from_numpy(np.array(v[:window]))[None].repeat(2, *[1] * v.ndim)
             for k, v in episode.items()}  # fmt: skip
    batch["valid"] = torch.ones(2, window, dtype=torch.bool)
    batch["has_action"] = ~batch["is_first"]
    inputs = latent_batch(batch)
    torch.manual_seed(0)
    cache = model.dynamics.new_cache()
    state = model.observe(inputs["z1"], inputs["action"], inputs["has_action"], cache)[:, -1]
    forced = torch.tensor([[[0.8, 0.0]], [[-0.8, 0.3]]])
    with torch.no_grad():
        states = rollout_from(model, state, cache, 1, forced)["states"]
        reward = transition_rewards(model.heads, states)
    assert reward[0, 0] == pytest.approx(1.6, abs=0.5), reward
    assert reward[1, 0] == pytest.approx(-1.6, abs=0.5), reward


def test_head_fit_learns_the_reward_on_frozen_features(tmp_path):
    """reward[t] = 2 action[t, 0] after a 2-update phase 2: `--head-fit-steps` refits only the
    reward and continuation heads, on every training frame's streamed features, until their
    distance-0 reward follows the rule; every other weight equals the run without it."""
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.runs import load_agent
    from nanodreamer.train.agent import streamed_features

    data = action_reward_store(tmp_path / "data")
    train_world_model(tmp_path, data, steps=2)
    for name, flags in (("plain", ""), ("fit", "--head-fit-steps 300")):
        cli(f"train agent --data {data} --world-model {tmp_path}/dyn --out {tmp_path}/{name} "
            f"--steps 2 --batch-size 4 {flags}")  # fmt: skip
    plain, _ = load_agent(tmp_path / "plain")
    fit, info = load_agent(tmp_path / "fit")
    assert info["head_fit_steps"] == 300
    refit = ("heads.reward.", "heads.cont.")
    for key, value in plain.state_dict().items():
        if not key.startswith(refit):
            torch.testing.assert_close(fit.state_dict()[key], value, msg=key)

    def reward_corr(model) -> float:
        latents = encode_dataset(data, info["tokenizer"])
        h, targets = streamed_features(model, latents, 0)
        with torch.no_grad():
            predicted = model.heads.twohot.decode(model.heads.reward(h, 1)[:, 0])
        rule = targets["reward"][1:, 0]
        return np.corrcoef(predicted[1:].numpy(), rule.numpy())[0, 1]

    assert reward_corr(fit) > 0.9 > reward_corr(plain) + 0.3


def test_phase2_value_learns_the_discounted_return_of_the_data(tmp_path):
    """Reward 1 on every step of never-ending (truncated) episodes: with --value-gamma 0.5 the
    value of every state is 1 / (1 - 0.5) = 2, learned from windows of 8 frames by bootstrapping
    at their ends; imagination then starts from that value."""
    from conftest import synthetic_episode

    from nanodreamer.data import EpisodeStore
    from nanodreamer.data.latents import encode_dataset
    from nanodreamer.dynamics import latent_batch
    from nanodreamer.runs import load_agent

    data = tmp_path / "data"
    with EpisodeStore.create(data, env="synthetic", obs_shape=(16, 16, 3), action_dim=2) as store:
        for i in range(4):
            episode = synthetic_episode(40, i, 16)
            episode["reward"] = (np.arange(40) > 0).astype(np.float32)
            store.add(episode)
    train_world_model(tmp_path, data, steps=2)
    cli(
        f"train agent --data {data} --world-model {tmp_path}/dyn --out {tmp_path}/agent "
        "--steps 300 --lr 2e-3 --batch-size 8 --seq-len 16 --value-gamma 0.5"
    )
    model, info = load_agent(tmp_path / "agent")
    assert info["value_gamma"] == 0.5
    episode = {k: torch.from_numpy(np.array(v[:8]))[None]
               for k, v in encode_dataset(data, info["tokenizer"]).load(1).items()}  # fmt: skip
    episode["has_action"] = ~episode["is_first"]
    with torch.no_grad():
        value = model.heads.twohot.decode(model.heads.value(model.context_features(
            latent_batch(episode | {"valid": torch.ones(1, 8, dtype=torch.bool)}))))  # fmt: skip
    assert value[0, -4:].tolist() == pytest.approx([2.0] * 4, abs=0.3), value


def test_rollouts_start_only_from_real_non_terminal_windows():
    from nanodreamer.train.imagination import imagination_starts

    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[1, 3:] = False  # padded: the episode ended inside the window
    terminal = torch.zeros(4, 5, dtype=torch.bool)
    terminal[2, -1] = True  # ends on the episode's terminal frame
    terminal[3, 2] = True  # impossible inside a window, but a frame before the last is fine
    starts = imagination_starts({"valid": valid, "is_terminal": terminal})
    assert starts.tolist() == [True, False, False, True]


def test_world_model_reset_gives_the_first_context_frame_no_action():
    from conftest import TINY_TOKENIZER

    from nanodreamer.dynamics import Dynamics, DynamicsConfig
    from nanodreamer.tokenizer import Tokenizer
    from nanodreamer.world import WorldModel

    tokenizer = Tokenizer(TINY_TOKENIZER)
    config = DynamicsConfig(n_latents=4, latent_dim=3, dim=32, depth=2, heads=2, kv_heads=1,
                            time_every=2, window=4, registers=1)  # fmt: skip
    dynamics = Dynamics(config)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("has_action", kwargs["has_action"])

    dynamics.register_forward_pre_hook(record, with_kwargs=True)
    world = WorldModel(tokenizer, dynamics)
    world.reset(torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 2) * 2 - 1)
    assert seen["has_action"].tolist() == [[False, True, True]] * 2
