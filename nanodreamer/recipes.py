"""Recipes: the settings of the whole pipeline as typed configs, with one home for defaults.

Every default is the car-racing recipe's (the one that drives, bench/RESULTS.md); a named
recipe in `RECIPES` overrides some, as dreamerv3's configs.yaml keeps `defaults` plus named
overlays. `rounds`, `demo` and `train dynamics|agent|imagination` read their settings here,
and every `knob` field is also a flag of the commands that use it (`cli.flags`).

    RoundsConfig              rounds of collect -> train -> evaluate (`pipeline.run_rounds`)
      .collect   EnvSettings          how episodes are collected (`envs.make` options)
      .dynamics  DynamicsSettings     phase 1b (`train dynamics`)
      .agent     AgentSettings        phase 2 (`train agent`)
      .imagination ImaginationSettings phase 3 (`train imagination`)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from nanodreamer import envs
from nanodreamer.errors import UserError

PRESETS = ("tiny", "small", "base")


def knob(default, help: str, choices: tuple | None = None):
    """A config field with the help text (and choices) its command-line flag shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class EnvSettings:
    action_repeat: int = knob(8, "env frames per decision")
    max_episode_steps: int | None = knob(400, "cap collected episodes, in frames")
    max_gas: float | None = knob(0.2, "car-racing: gas at full throttle (a speed cap)")
    resolution: int | None = knob(None, "frames resized to this size (none: as the env gives)")

    def options(self, env: str) -> dict:
        """`envs.make` options for `env`: unset ones left out, the gas cap car racing's alone."""
        given = {k: v for k, v in vars(self).items() if v is not None}
        return {k: v for k, v in given.items() if env == "car-racing" or k != "max_gas"}


@dataclass
class DynamicsSettings:
    window: int | None = knob(8, "context in decisions = training window (none: the preset's)")
    action_bins: int | None = knob(8, "bins per continuous action dimension (none: 32)")
    rollout_frac: float = knob(1.0, "windows whose second half reads the model's own rollout")
    independent_frac: float = knob(0.3, "windows trained as separate images")


@dataclass
class AgentSettings:
    value_gamma: float | None = knob(0.9, "also fit the value to the data's returns (none: off)")
    head_fit_steps: int = knob(0, "updates refitting the reward heads on frozen features")


@dataclass
class ImaginationSettings:
    horizon: int = knob(3, "imagined decisions per rollout")
    gamma: float = knob(0.9, "discount")
    beta: float = knob(0.1, "weight of KL[policy || prior]")
    sampling_steps: int = knob(2, "shortcut steps per imagined frame")
    value_warmup: int = knob(50, "first updates train the value alone")
    prior: str = knob(
        "data", "policy start and KL prior: data action frequencies or BC", ("data", "bc")
    )


@dataclass
class RoundsConfig:
    env: str = knob("car-racing", "environment")
    rounds: int = knob(2, "rounds, round 0 included")
    first_episodes: int = knob(100, "random episodes before round 0")
    episodes_per_round: int = knob(50, "episodes added before each later round")
    first_steps: int | None = knob(None, "random agent steps before round 0, instead of episodes")
    steps_per_round: int | None = knob(None, "agent steps added before each later round")
    random_share: float = knob(0.2, "of those, random-policy ones")
    first_minutes: float | None = knob(75.0, "round 0's training budget (none: --minutes)")
    minutes: float = knob(40.0, "training budget of each later round")
    eval_episodes: int = knob(10, "evaluation episodes: full length, fresh seeds")
    workers: int = knob(2, "parallel collection envs")
    seed: int = knob(0, "every random draw: collection, initialisation, data order, sampling")
    train_steps: int | None = knob(None, "each phase's updates instead of minutes (exact reruns)")
    figures: bool = knob(True, "each round's counterfactual and control figures (minutes)")
    preset: str | None = knob(None, "model sizes (none: tiny on a CPU, small on a GPU)", PRESETS)
    collect: EnvSettings = field(default_factory=EnvSettings)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    imagination: ImaginationSettings = field(default_factory=ImaginationSettings)


RECIPES = {
    "car-racing": RoundsConfig(),
    # the dot world of the end-to-end test: a fresh action every step, 50-step episodes
    "dot": RoundsConfig(
        env="dot",
        collect=EnvSettings(action_repeat=1, max_episode_steps=None, max_gas=None),
        dynamics=DynamicsSettings(
            window=4, action_bins=None, rollout_frac=0.0, independent_frac=0.0
        ),
        agent=AgentSettings(value_gamma=None),
        imagination=ImaginationSettings(horizon=8, beta=0.03, value_warmup=0, prior="bc"),
    ),
    # every Atari game (the Atari 100k protocol, `envs.atari`): 100k agent steps in 3 rounds,
    # a decision held for 2 of them, a longer discount for rewards that come later, the
    # sparse reward's heads refit on the frozen features (bench/log/atari-recipe.md)
    "atari": RoundsConfig(
        env="atari:Boxing",
        rounds=3,
        first_steps=50_000,
        steps_per_round=25_000,
        first_minutes=70.0,
        minutes=35.0,
        collect=EnvSettings(action_repeat=2, max_episode_steps=None, max_gas=None),
        dynamics=DynamicsSettings(action_bins=None),
        agent=AgentSettings(value_gamma=0.97, head_fit_steps=3000),
        imagination=ImaginationSettings(gamma=0.97),
    ),
}


def recipe(name: str) -> RoundsConfig:
    """A copy of the named recipe (its settings can change without touching `RECIPES`)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    return copy.deepcopy(RECIPES[name])


def recipe_for(env: str) -> RoundsConfig:
    """The recipe of an env: its own (car racing, the dot, every Atari game), else one derived
    from its spaces (`derived_recipe`)."""
    if envs.atari_id(env):
        return replace(recipe("atari"), env=env)
    if env in ("car-racing", "multi-car-racing"):
        return replace(recipe("car-racing"), env=env)
    return recipe(env) if env in RECIPES else derived_recipe(env)


def derived_recipe(env: str) -> RoundsConfig:
    """Any other Gymnasium pixel env: the Atari recipe's step budget, no action repeat,
    episodes as long as the env's own time limit, continuous actions cut into the car-racing
    recipe's bins (discrete ones keep their choices) and frames over 96 pixels made 64x64."""
    probe = envs.make(env)
    size = probe.observation_space.shape[-2]
    discrete = envs.action_bins(probe) is not None
    probe.close()
    config = recipe("atari")
    config.env, config.collect.action_repeat = env, 1
    config.collect.resolution = 64 if size > 96 else None
    config.dynamics.action_bins = None if discrete else RECIPES["car-racing"].dynamics.action_bins
    return config
