"""Atari under the Atari 100k protocol (`envs.atari`): the wrappers' semantics, the step
budget, replay from seed and actions, and discrete actions through `rounds`."""

import json

import cv2
import gymnasium as gym
import numpy as np
import pytest

from nanodreamer import envs
from nanodreamer.data import EpisodeStore, collect
from nanodreamer.envs import atari
from nanodreamer.eval.replay import Replay, alternative_actions
from nanodreamer.recipes import recipe, recipe_for


def raw_game(name: str) -> gym.Env:
    return gym.make(atari.atari_id(name), **atari.PROTOCOL)


def test_names_and_spaces():
    for name in ("atari:Pong", "ALE/Pong-v5", "ale_py:ALE/Pong-v5"):
        env = envs.make(name)
        assert env.observation_space.shape == (64, 64, 3)
        assert envs.action_bins(env) == [6]  # Pong's minimal action set
        env.close()
    assert atari.atari_id("car-racing") is None


def test_frame_skip_max_pools_the_last_two_frames_and_sums_rewards():
    env, raw = envs.make("atari:Boxing"), raw_game("atari:Boxing")
    obs, info = env.reset(seed=3)
    raw.reset(seed=3)
    for _ in range(info["episode_frame_number"]):  # the same no-op start
        raw.step(0)
    action = 0.9  # the last of Boxing's 18 choices
    for _ in range(40):
        obs, reward, *_ = env.step(np.array([action], np.float32))
        frames, total = [], 0.0
        for _ in range(atari.FRAME_SKIP):
            frame, r, *_ = raw.step(17)
            frames.append(frame)
            total += r
        pooled = np.maximum(frames[-2], frames[-1])
        expected = cv2.resize(pooled, (atari.SIZE, atari.SIZE), interpolation=cv2.INTER_AREA)
        assert np.array_equal(obs, expected) and reward == total


def test_noop_starts_are_drawn_from_the_seed():
    env = envs.make("atari:Pong")
    starts = {}
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        again, info_again = env.reset(seed=seed)
        assert np.array_equal(obs, again)
        assert info["episode_frame_number"] == info_again["episode_frame_number"]
        starts[seed] = info["episode_frame_number"]
    assert all(1 <= n <= atari.NOOP_MAX for n in starts.values()) and len(set(starts.values())) > 1


def test_life_loss_ends_training_episodes_only_and_the_budget_counts_every_step(tmp_path):
    store = collect("atari:Breakout", tmp_path / "data", None, steps=333, workers=1)
    assert sum(e["length"] - 1 for e in store.episodes) == 333  # exactly the budget
    episode = store.load(0, ("is_terminal",))
    assert store.episodes[0]["terminated"]  # a random Breakout game ends within 333 steps
    assert episode["is_terminal"][1:-1].sum() == 4  # 5 lives: 4 lost mid-game, then the end
    assert not store.episodes[-1]["terminated"]  # cut by the budget: truncated
    for repeat in (1, 2):  # the env plays on after a lost life; one on either repeat counts
        env = envs.make("atari:Breakout", action_repeat=repeat)
        env.reset(seed=0)
        lost, done = 0, False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            lost, done = lost + info["life_loss"], terminated or truncated
        assert lost == 4 and env.unwrapped.ale.lives() == 0


@pytest.mark.parametrize("sticky", [0.0, 0.25])
def test_replay_from_seed_and_actions_is_exact(tmp_path, sticky):
    options = {"repeat_action_probability": sticky}
    store = collect("atari:MsPacman", tmp_path / "data", 1, env_options=options)
    episode = store.load(0, ("obs", "action"))
    replay = Replay(store)
    for end in (0, 5, 60, len(episode["obs"]) - 1):
        frame = replay.reach(store.episodes[0]["seed"], episode["action"][: end + 1])
        assert np.array_equal(frame, episode["obs"][end])


def test_discrete_alternatives_hold_each_choice():
    actions = alternative_actions("atari:Pong", 1, horizon=3, randoms=2, bins=[6])
    assert actions.shape == (8, 3, 1)
    chosen = np.floor((actions[:6, 0, 0] + 1) / 2 * 6)  # DiscreteAsBins' choice
    assert chosen.tolist() == list(range(6)) and (actions[:6] == actions[:6, :1]).all()


def test_recipes_for_atari_and_for_any_gymnasium_pixel_env():
    c = recipe_for("ALE/Breakout-v5")
    assert c.env == "ALE/Breakout-v5" and c.dynamics.action_bins is None
    assert c.first_steps + (c.rounds - 1) * c.steps_per_round == 100_000  # Atari 100k
    derived = recipe_for("CartPole-v1")  # rendered frames (400x600, made 64x64), 2 choices
    assert derived.collect.resolution is None and derived.dynamics.action_bins is None
    gym.register("test/BigDot-v0", "nanodreamer.envs.dot:DotEnv", kwargs={"cell": 8, "cells": 16})
    assert recipe_for("test/BigDot-v0").collect.resolution == 64  # 128x128 frames
    pendulum = recipe_for("Pendulum-v1")  # continuous: the car-racing recipe's bins
    assert pendulum.dynamics.action_bins == 8 and pendulum.collect.action_repeat == 1


def test_discrete_actions_through_rounds(tmp_path, monkeypatch, capsys):
    """The Atari recipe on a tiny budget: games capped at 200 agent steps (100 decisions), one
    worker (so the cap, patched here, holds in the collecting process)."""
    from nanodreamer.cli import main

    monkeypatch.setitem(atari.PROTOCOL, "max_num_frames_per_episode", 800)
    out = tmp_path / "pong"
    main(
        f"rounds --recipe atari --env atari:Pong --out {out} --rounds 2 --first-steps 250 "
        "--steps-per-round 250 --first-minutes 0.12 --minutes 0.06 --eval-episodes 1 "
        "--workers 1 --head-fit-steps 50 --no-figures".split()  # the figures: the tests above
    )
    store, repeat = EpisodeStore(out / "data"), recipe("atari").collect.action_repeat
    assert sum(e["length"] - 1 for e in store.episodes) * repeat == 500  # agent steps
    policy = sum(e["length"] - 1 for e in store.episodes if e["policy"] != "random") * repeat
    assert policy == 200  # the later round: 20% random, the rest the policy's
    results = json.loads((out / "rounds.json").read_text())
    agent = json.loads((out / "round_1" / "agent" / "run.json").read_text())
    assert agent["agent_config"]["action_bins"] == 6 and agent["value_gamma"] == 0.97
    assert agent["head_fit_steps"] == 50
    real = results[-1]["real_env"]
    assert {"return_mean", "bc_best_return_mean", "random_return_mean"} <= set(real)
    assert "round 1: imagination" in capsys.readouterr().out
