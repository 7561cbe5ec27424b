import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from nanodreamer import envs
from nanodreamer.envs.car_racing import CarRacingAction, frames_skipped, redrawn, tiles_visited
from nanodreamer.envs.wrappers import DiscreteAsBins, bin_centers
from nanodreamer.errors import UserError


@pytest.fixture(scope="module")
def car():
    env = envs.make("car-racing")
    yield env
    env.close()


def test_car_racing_spaces(car):
    obs, _ = car.reset(seed=0)
    assert obs.shape == (96, 96, 3) and obs.dtype == np.uint8
    assert car.observation_space.shape == (96, 96, 3)
    assert car.action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    assert envs.action_bins(car) is None


@pytest.mark.parametrize(
    "action, expected",
    [
        ((0.0, 0.0), (0.0, 0.0, 0.0)),
        ((-1.0, 1.0), (-1.0, 1.0, 0.0)),
        ((0.5, -1.0), (0.5, 0.0, 1.0)),
        ((1.0, -0.25), (1.0, 0.0, 0.25)),
        ((2.0, 3.0), (1.0, 1.0, 0.0)),  # out of range is clipped, never passed through
    ],
)
def test_car_racing_action_mapping(action, expected):
    wrapper = CarRacingAction(gym.make("CarRacing-v3"))
    np.testing.assert_allclose(wrapper.action(np.array(action, np.float32)), expected)


def test_car_racing_max_gas_scales_gas_only():
    """The recipe's speed cap: full throttle is `max_gas`; brake and steering keep their range,
    and the env's spec rebuilds the cap."""
    capped = CarRacingAction(gym.make("CarRacing-v3"), max_gas=0.2).action
    np.testing.assert_allclose(capped(np.array([-1.0, 1.0], np.float32)), (-1.0, 0.2, 0.0))
    np.testing.assert_allclose(capped(np.array([0.5, 0.5], np.float32)), (0.5, 0.1, 0.0))
    np.testing.assert_allclose(capped(np.array([0.0, -1.0], np.float32)), (0.0, 0.0, 1.0))
    env = envs.make("car-racing", max_gas=0.2)
    assert gym.make(env.spec).get_wrapper_attr("max_gas") == 0.2
    with pytest.raises(UserError, match="max_gas"):
        envs.make("car-racing", max_gas=0.0)


def test_action_repeat_sums_rewards():
    one, two = envs.make("car-racing"), envs.make("car-racing", action_repeat=2)
    one.reset(seed=3)
    two.reset(seed=3)
    action = np.array([0.0, 1.0], np.float32)
    rewards = [one.step(action)[1] for _ in range(4)]
    obs_two = [two.step(action) for _ in range(2)]
    np.testing.assert_allclose(sum(rewards), sum(o[1] for o in obs_two), rtol=1e-5)


def test_tiles_visited_is_what_the_return_paid_for():
    """CarRacing pays 1000/N per new tile and -0.1 per frame: the return gives the share."""
    env = envs.make("car-racing", action_repeat=8)
    env.reset(seed=3)
    total = sum(env.step(np.array([0.0, 1.0], np.float32))[1] for _ in range(10))  # 80 frames
    assert tiles_visited(env) > 0.02
    np.testing.assert_allclose(tiles_visited(env), (total + 0.1 * 80) / 1000, rtol=1e-4)
    assert np.isnan(tiles_visited(envs.make("dot")))


def test_skipped_frames_change_nothing_but_time():
    """Action repeat draws only the frame it returns, and a redrawn frame after skipped steps
    is the frame every step drawn: rewards, frames and episode ends are those of AR 1."""
    one, four = envs.make("car-racing"), envs.make("car-racing", action_repeat=4)
    one.reset(seed=5)
    four.reset(seed=5)
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
    for action in actions:
        steps = [one.step(action) for _ in range(4)]
        obs, reward, *_ = four.step(action)
        np.testing.assert_array_equal(obs, steps[-1][0])
        np.testing.assert_allclose(reward, sum(s[1] for s in steps), rtol=1e-5)
    with frames_skipped(one):
        stale = [one.step(actions[0])[0] for _ in range(3)]
    assert all(np.array_equal(frame, steps[-1][0]) for frame in stale)  # nothing drawn
    fresh = one.step(actions[0])[0]  # drawing is back on after the block
    four.step(actions[0])
    np.testing.assert_array_equal(fresh, four.unwrapped.state)
    np.testing.assert_array_equal(redrawn(one, stale[0]), fresh)
    small = envs.make("car-racing", resolution=48)  # redrawn frames pass the resize too
    small.reset(seed=5)
    with frames_skipped(small):
        small.step(actions[0])
    assert redrawn(small, None).shape == (48, 48, 3)


def test_gym_env_rendered_and_discrete_bins():
    env = envs.make("CartPole-v1", resolution=32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8 and obs.std() > 0
    assert envs.action_bins(env) == [2]
    assert env.action_space.shape == (1,)
    env.step(np.array([0.9], np.float32))
    env.close()


def test_discrete_bins_round_trip():
    env = DiscreteAsBins(gym.make("CartPole-v1"))
    env.action_bins = [5]
    for choice, value in enumerate(bin_centers(5)):
        assert env.action(np.array([value])) == choice
    assert env.action(np.array([-1.0])) == 0 and env.action(np.array([1.0])) == 4


def test_continuous_actions_rescaled():
    env = envs.make("Pendulum-v1", resolution=16)
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    assert env.get_wrapper_attr("action")(np.array([1.0], np.float32)) == pytest.approx(2.0)
    env.close()


def test_bad_env_names_and_spaces():
    with pytest.raises(UserError, match="unknown environment"):
        envs.make("car-racin")
    gym.register("NoPixels-v0", entry_point=NoPixels)
    with pytest.raises(UserError, match="no image observation"):
        envs.make("NoPixels-v0")


def test_a_plugin_module_registers_its_id_before_the_env_is_made(tmp_path, monkeypatch):
    """Gymnasium's `module:EnvId` form: the module is imported (and registers), then the id made."""
    (tmp_path / "dot_plugin.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('Plugin/Dot-v0', 'nanodreamer.envs.dot:DotEnv', max_episode_steps=9)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="unknown environment 'Plugin/Dot-v0'"):
        envs.make("Plugin/Dot-v0")  # not registered until its module is imported
    env = envs.make("dot_plugin:Plugin/Dot-v0")
    assert env.reset(seed=0)[0].shape == (16, 16, 3) and env.spec.max_episode_steps == 9
    env.close()
    with pytest.raises(UserError, match="cannot import 'no_such_plugin'"):
        envs.make("no_such_plugin:Some-v0")


class NoPixels(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    metadata = {"render_modes": []}


SHIPPED = [
    ("dot", {}),
    ("car-racing", {}),
    ("car-racing", {"action_repeat": 2, "max_episode_steps": 30}),
    ("multi-car-racing", {"num_cars": 2}),
    ("CartPole-v1", {"resolution": 32}),
]


@pytest.mark.parametrize("name, options", SHIPPED)
def test_gymnasium_checker_and_spec_recreate_every_env(name, options):
    env = envs.make(name, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "different from the unwrapped version", the car reward
        check_env(env, skip_render_check=True)
    again = gym.make(env.spec)
    first, _ = env.reset(seed=5)
    second, _ = again.reset(seed=5)
    np.testing.assert_array_equal(first, second)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        a, b = env.step(action), again.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert again.spec.max_episode_steps == env.spec.max_episode_steps
    env.close()
    again.close()
