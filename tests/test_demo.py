import json

from nanodreamer.demo import run_demo


def test_demo_leaves_a_complete_folder(tmp_path):
    """The README's main command, on the dot world with a seconds-long budget: every phase
    runs and the folder holds what the summary points to."""
    out = tmp_path / "demo"
    dot = {"action_repeat": 1, "max_episode_steps": 30}  # short dot episodes, every step
    results = run_demo(out, minutes=0.15, env="dot", episodes=4, workers=1, env_options=dot)
    real_env = results["real_env"]
    assert {"return_mean", "random_return_mean", "bc_return_mean"} <= set(real_env)
    saved = json.loads((out / "metrics.json").read_text())["final"]["real_env"]
    assert saved.keys() == real_env.keys() and saved["return_mean"] == real_env["return_mean"]
    assert {"reward_corr", "imagined_return", "return_ci95"} <= set(saved)
    assert "max_episode_steps" not in real_env["env_options"]  # evaluation: full episodes
    for name in ("summary.md", "round_0/imagination.gif", "round_0/agent.gif",
                 "tokenizer/reconstruction.gif", "learning_curve.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert "nanodreamer play --run" in (out / "summary.md").read_text()
