import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from nanodreamer import envs
from nanodreamer.cli import main
from nanodreamer.data import EpisodeStore, collect
from nanodreamer.envs.multi_car_racing import MultiCarRacing
from nanodreamer.errors import UserError

GAS = (0.0, 0.5)


def hull_positions(env) -> np.ndarray:
    return np.array([tuple(car.hull.position) for car in env.unwrapped.cars])


def drive(env, actions, steps: int):
    """Step `steps` times with fixed per-car actions; the per-step results."""
    return [env.step(np.array(actions, np.float32)) for _ in range(steps)]


def test_spaces_and_determinism_under_a_seed():
    a, b = envs.make("multi-car-racing", num_cars=3), envs.make("multi-car-racing", num_cars=3)
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    assert obs_a.shape == (3, 96, 96, 3) and obs_a.dtype == np.uint8
    assert a.action_space.shape == (3, 2)
    np.testing.assert_array_equal(obs_a, obs_b)
    rng = np.random.default_rng(0)
    for _ in range(30):
        action = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        obs_a, reward_a, *_ = a.step(action)
        obs_b, reward_b, *_ = b.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(reward_a, reward_b)
        assert reward_a.shape == (3,)
    other, _ = b.reset(seed=8)
    assert not np.array_equal(other, a.reset(seed=7)[0])  # another seed, another track


def test_one_car_is_car_racing_exactly():
    multi, single = envs.make("multi-car-racing", num_cars=1), envs.make("car-racing")
    obs_m, _ = multi.reset(seed=3)
    obs_s, _ = single.reset(seed=3)
    np.testing.assert_array_equal(obs_m[0], obs_s)
    rng = np.random.default_rng(1)
    for _ in range(80):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        obs_m, reward_m, term_m, trunc_m, _ = multi.step(action[None])
        obs_s, reward_s, term_s, trunc_s, _ = single.step(action)
        np.testing.assert_array_equal(obs_m[0], obs_s)
        assert reward_m[0] == pytest.approx(reward_s, abs=1e-4)
        assert (term_m, trunc_m) == (term_s, trunc_s)


def ghost(car) -> None:
    """Let a car pass through everything (the control for the collision test)."""
    for body in [car.hull, *car.wheels]:
        for fixture in body.fixtures:
            fixture.filterData.maskBits = 0


@pytest.mark.parametrize("collide", [True, False])
def test_cars_driven_into_each_other_collide(collide):
    env = envs.make("multi-car-racing", num_cars=2)
    env.reset(seed=0)
    if not collide:
        ghost(env.unwrapped.cars[1])
    gaps = []
    for _ in range(120):  # the two cars start abreast and steer towards each other
        env.step(np.array([[1.0, 0.3], [-1.0, 0.3]], np.float32))
        gaps.append(np.linalg.norm(np.subtract(*hull_positions(env))))
    hull_width = 2.4  # CarRacing's hull is 120 * 0.02 wide
    if collide:
        assert min(gaps) > 0.95 * hull_width  # they met but never overlapped
        assert min(gaps) < 1.2 * hull_width
    else:
        assert min(gaps) < 0.5 * hull_width  # without contacts they drive through each other


def test_per_car_reward_bookkeeping_on_a_scripted_drive():
    env = envs.make("multi-car-racing", num_cars=2)
    env.reset(seed=2)
    u = env.unwrapped
    steps = drive(env, [GAS, (0.0, -1.0)], 150)  # car 0 drives, car 1 brakes at the start
    returns = np.sum([s[1] for s in steps], axis=0)
    tiles = u.tiles_visited
    expected = tiles * 1000.0 / len(u.track) - 0.1 * len(steps)
    np.testing.assert_allclose(returns, expected, atol=1e-3)
    assert tiles[0] > tiles[1] + 10 and returns[0] > returns[1]
    for car in range(2):  # each car's count is the tiles marked visited by that car
        assert tiles[car] == sum(tile.visited[car] for tile in u.road)
    shared = sum(tile.visited.all() for tile in u.road)
    assert shared >= 1  # the start tiles count for both cars


def test_leaving_the_playfield_costs_100_and_ends_the_race():
    env = envs.make("multi-car-racing", num_cars=2)
    env.reset(seed=0)
    env.unwrapped.cars[1].hull.position = (1000.0, 0.0)
    _, reward, terminated, _, info = env.step(np.zeros((2, 2), np.float32))
    assert terminated and reward[1] == -100.0 and reward[0] > -100.0
    assert info["off_playfield"].tolist() == [False, True]


def test_views_are_centred_on_their_own_car():
    env = envs.make("multi-car-racing", num_cars=2)
    obs, _ = env.reset(seed=0)
    drive(env, [GAS, GAS], 60)  # past the zoom-in
    obs, *_ = env.step(np.array([GAS, GAS], np.float32))
    assert not np.array_equal(obs[0], obs[1])
    car_area = (slice(60, 76), slice(40, 56))  # below the centre, where CarRacing puts the car
    red = [(v[car_area][..., 0] > 150) & (v[car_area][..., 2] < 60) for v in obs]
    blue = [(v[car_area][..., 2] > 150) & (v[car_area][..., 0] < 60) for v in obs]
    assert red[0].sum() > 5 and blue[1].sum() > 5  # car 0 is red, car 1 blue
    assert red[1].sum() < red[0].sum() and blue[0].sum() < blue[1].sum()
    strip = env.unwrapped.render()
    assert strip.shape == (96, 192, 3)


def test_gymnasium_checker_passes():
    with pytest.warns(UserWarning, match="reward"):  # one reward per car, not a float
        check_env(MultiCarRacing(num_cars=2), skip_render_check=True)


def test_bad_car_counts_and_action_shapes():
    for bad in (0, -1, 2.5, 99):
        with pytest.raises(UserError, match="num_cars"):
            envs.make("multi-car-racing", num_cars=bad)
    env = envs.make("multi-car-racing", num_cars=2)
    env.reset(seed=0)
    with pytest.raises(UserError, match=r"shape \(2, 2\)"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(UserError, match="96px"):
        envs.make("multi-car-racing", resolution=64)


def test_collect_writes_one_episode_per_car(tmp_path):
    options = {"num_cars": 2, "max_episode_steps": 12}
    store = collect("multi-car-racing", tmp_path, 4, workers=2, env_options=options)
    assert len(store) == 4 and store.manifest["obs_shape"] == [96, 96, 3]
    entries = store.episodes
    assert [e["car"] for e in entries] == [0, 1, 0, 1]
    race = [e for e in entries if e["seed"] == entries[0]["seed"]]
    assert len(race) == 2  # the two cars of one race share its seed
    env = envs.make("multi-car-racing", **options)
    obs, _ = env.reset(seed=entries[0]["seed"])
    first = [store[i] for i, e in enumerate(entries) if e["seed"] == entries[0]["seed"]]
    for car, episode in enumerate(first):  # replaying the recorded actions gives the frames
        np.testing.assert_array_equal(episode["obs"][0], obs[car])
    for t in range(1, len(first[0]["obs"])):
        obs, reward, *_ = env.step(np.stack([e["action"][t] for e in first]))
        for car, episode in enumerate(first):
            np.testing.assert_array_equal(episode["obs"][t], obs[car])
            assert episode["reward"][t] == pytest.approx(reward[car], abs=1e-5)


def test_cli_collect_multi_car(tmp_path, capsys):
    out = tmp_path / "mc"
    main(
        f"collect --env multi-car-racing --num-cars 2 --episodes 4 --out {out} "
        "--max-episode-steps 5".split()
    )  # two races one after the other in one worker: the second starts from a reset
    entries = EpisodeStore(out).episodes
    assert [e["car"] for e in entries] == [0, 1, 0, 1]
    assert entries[0]["seed"] == entries[1]["seed"] != entries[2]["seed"] == entries[3]["seed"]
    assert all(EpisodeStore(out)[i]["is_first"][0] for i in range(4))
    with pytest.raises(SystemExit):
        main(f"collect --env car-racing --num-cars 2 --episodes 2 --out {tmp_path / 'x'}".split())
    assert "--num-cars is for --env multi-car-racing" in capsys.readouterr().err


def test_registered_in_gymnasium_style_make():
    env = envs.make("multi-car-racing", num_cars=2, action_repeat=2)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros((2, 2), np.float32))
    assert reward.shape == (2,) and isinstance(env.unwrapped, gym.Env)


class Scripted:
    """Full gas, straight ahead, for every car it is asked about."""

    def act(self, obs, is_first):
        return np.tile(np.float32(GAS), (len(obs), 1))


def test_racing_copies_of_a_policy_or_against_random_cars(tmp_path):
    from nanodreamer.data import RandomPolicy
    from nanodreamer.eval.agent import run_episodes

    options = {"num_cars": 2, "max_episode_steps": 30}
    video = tmp_path / "race.gif"
    own, steps, tiles = run_episodes("multi-car-racing", options, Scripted(), [0, 1], video=video)
    assert own.shape == (2, 2) and (steps == 30).all() and video.stat().st_size > 0
    assert np.isnan(tiles).all()  # the multi-car race counts tiles per car, in its rewards
    rivals = RandomPolicy(2, 2, seed=0, low=(-1.0, -1.0), high=(1.0, -1.0))  # brakes only
    mixed, *_ = run_episodes("multi-car-racing", options, Scripted(), [0, 1], opponents=rivals)
    np.testing.assert_allclose(mixed[:, 0], own[:, 0], atol=1e-4)  # same car 0, same seeds
    assert (mixed[:, 1] < own[:, 1]).all()  # a braking car visits fewer tiles


@pytest.fixture(scope="module")
def race_agent(tmp_path_factory):
    """A world model and agent trained for a few steps on 2-car races (the plumbing only)."""
    from conftest import cli, train_world_model

    root = tmp_path_factory.mktemp("race")
    options = {"num_cars": 2, "max_episode_steps": 24}  # evaluation rolls out 8 + 16 frames
    data = collect("multi-car-racing", root / "data", 4, env_options=options, progress=False).path
    train_world_model(root, data, steps=2)
    cli(f"train agent --data {data} --world-model {root}/dyn --out {root}/agent --steps 2 "
        "--seq-len 8")  # fmt: skip
    return root


def test_evaluating_an_agent_in_a_race(race_agent, capsys):
    from nanodreamer.eval.agent import evaluate_agent

    run = race_agent / "agent"
    short = {"max_episode_steps": 24}  # the plumbing: full 1000-frame races take minutes
    copies = evaluate_agent(run, "multi-car-racing", 2, num_cars=3, **short)
    assert len(copies["per_car_return_mean"]) == 3 and len(copies["returns"]) == 6
    assert copies["return_mean"] == pytest.approx(np.mean(copies["returns"]))
    against = evaluate_agent(run, "multi-car-racing", 2, opponents="random", random=False, **short)
    assert len(against["returns"]) == 2  # car 0's return per race
    assert against["returns"] == pytest.approx([against["per_car_return_mean"][0]] * 2, abs=100)
    main(
        f"eval agent --run {run} --env multi-car-racing --episodes 1 --json "
        "--max-episode-steps 24".split()
    )
    assert "per_car_return_mean" in capsys.readouterr().out
    with pytest.raises(UserError, match="trained on 'multi-car-racing', not 'car-racing'"):
        evaluate_agent(run, "car-racing", 1)
    with pytest.raises(UserError, match="opponents must be"):
        evaluate_agent(run, "multi-car-racing", 1, opponents="humans")
