"""Rounds of collect -> train -> evaluate in one folder: `nanodreamer rounds`, and `nanodreamer
demo` (one budgeted call of it). Layout and figures: docs/commands.md, docs/evaluation.md.

Before round R > 0 the dataset grows: a `random_share` from the random policy, the rest from
round R-1's imagination policy acting as it is evaluated, so the world model learns the states
that policy reaches. The tokenizer trains in round 0 (on every stepped frame) and then stays
frozen; each later phase continues round R-1's weights. How the policy acts (greedy or
sampled) is chosen per round on validation episodes on seeds apart from the evaluation's
(bench/log/acting-mode.md). A finished phase is skipped, an interrupted one resumes, written
figures are kept and collection tops the dataset up: a killed run, rerun, continues.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from nanodreamer.data import EpisodeStore, collect, summarize
from nanodreamer.data.latents import encode_dataset
from nanodreamer.dynamics import DYNAMICS_PRESETS
from nanodreamer.errors import UserError
from nanodreamer.eval.agent import AgentPolicy, evaluate_agent
from nanodreamer.eval.control import control_figures
from nanodreamer.eval.dynamics import evaluate_dynamics
from nanodreamer.eval.metrics import seeded
from nanodreamer.eval.pictures import plot_learning_curve, plot_metrics
from nanodreamer.io import write_json
from nanodreamer.recipes import RoundsConfig
from nanodreamer.runs import CHECKPOINT, RUN_FILE, load_world_model, read_run, write_run
from nanodreamer.tokenizer import TOKENIZER_PRESETS
from nanodreamer.train import distributed
from nanodreamer.train.agent import AgentPhase, agent_train_config
from nanodreamer.train.dynamics import TRAIN_PRESETS as DYNAMICS_TRAIN
from nanodreamer.train.dynamics import DynamicsPhase, dynamics_config_for
from nanodreamer.train.imagination import ImaginationPhase, imagination_train_config
from nanodreamer.train.tokenizer import TRAIN_PRESETS as TOKENIZER_TRAIN
from nanodreamer.train.tokenizer import TokenizerPhase, tokenizer_config_for
from nanodreamer.train.trainer import TrainConfig, Trainer

SHARES = {"tokenizer": 0.3, "dynamics": 0.3, "agent": 0.12, "imagination": 0.13}
PLOTS = {
    "tokenizer": ("mse", "val/psnr"),
    "dynamics": ("flow_mse", "bootstrap_mse", "val/psnr_h8"),
    "agent": ("dynamics", "bc", "reward", "val/bc"),
    "imagination": ("return", "advantage_positive", "kl", "value_error"),
}


def run_rounds(out: str | Path, config: RoundsConfig) -> list[dict]:
    """Every round of `config` in `out`; returns each round's figures (also in rounds.json)."""
    out, c = Path(out), config
    device = distributed.setup()
    preset = c.preset or ("small" if device.device.type == "cuda" else "tiny")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rounds_config.json", asdict(c) | {"preset": preset})
    results = []
    for r in range(c.rounds):
        print(f"round {r + 1}/{c.rounds}: collect")
        _collect(out / "data", c, r)
        results.append(_round(out, c, r, preset, device))
        write_json(out / "rounds.json", results)
        plot_learning_curve(results, out / "learning_curve.png")
    return results


def round_dir(out: Path, r: int) -> Path:
    return out / f"round_{r}"


def _collect(data: Path, c: RoundsConfig, r: int) -> None:
    """Top the dataset up to its size at round r, in episodes or, with `first_steps`, agent
    steps (`action_repeat` per recorded decision)."""
    by_steps = c.first_steps is not None
    first, per = (c.first_steps, c.steps_per_round) if by_steps else (
        c.first_episodes, c.episodes_per_round)  # fmt: skip
    if by_steps and per is None:
        raise UserError("--first-steps needs --steps-per-round")
    entries = EpisodeStore(data).episodes if (data / "manifest.json").exists() else []
    repeat = c.collect.action_repeat
    size = (lambda e: (e["length"] - 1) * repeat) if by_steps else (lambda e: 1)  # noqa: E731
    have_random = sum(size(e) for e in entries if e.get("policy", "random") == "random")
    have_policy = sum(size(e) for e in entries) - have_random
    randoms = round(c.random_share * per) if r else 0
    need_random = first + r * randoms - have_random
    need_policy = r * (per - randoms) - have_policy
    seed = 1000 * c.seed + r  # each round's episodes apart; seed 0 keeps its old seeds
    options = {"workers": c.workers, "env_options": c.collect.options(c.env), "seed": seed}
    if r == 0 and c.collect.action_repeat > 1:
        options["frames"] = data.parent / "frames"

    def amount(need: int) -> dict:
        return {"episodes": None, "steps": -(-need // repeat)} if by_steps else {"episodes": need}

    if need_random > 0:
        collect(c.env, data, **amount(need_random), **options)
    if need_policy > 0:
        run = round_dir(data.parent, r - 1) / "imagination"
        policy = AgentPolicy(run, num_envs=min(c.workers, need_policy))  # acts as recorded
        with seeded(seed):  # its sampled actions
            collect(c.env, data, **amount(need_policy), policy=policy, **options)


def _round(out: Path, c: RoundsConfig, r: int, preset: str, device) -> dict:
    here, before = round_dir(out, r), (round_dir(out, r - 1) if r else None)
    shares = SHARES if r == 0 else {k: v for k, v in SHARES.items() if k != "tokenizer"}
    scale = sum(SHARES.values()) / sum(shares.values())
    minutes = c.first_minutes if r == 0 and c.first_minutes is not None else c.minutes
    budget = {phase: minutes * share * scale for phase, share in shares.items()}
    data, result = out / "data", {"round": r}
    if r == 0:
        images = out / "frames" if (out / "frames").exists() else data
        result["tokenizer"] = train_tokenizer(images, out / "tokenizer", preset, budget, device, c)
    result["dynamics"] = train_dynamics(data, out, here, preset, budget, device, before, c)
    result |= train_agent(data, here, budget, device, before, c)
    for phase in PLOTS:
        run = out / "tokenizer" if phase == "tokenizer" else here / phase
        if (run / "metrics.jsonl").exists():
            plot_metrics(run / "metrics.jsonl", run / "losses.png", PLOTS[phase])
    result["real_env"] = evaluate_round(here, c.env, c.eval_episodes, c.figures)
    result["data"] = kept(here / "data.json", lambda: summarize(EpisodeStore(data)))  # as trained
    return result


# phases ---------------------------------------------------------------------------------------
def _train(run: Path, phase_factory, cfg: TrainConfig, device) -> dict:
    """Train a phase; a finished one is skipped, an interrupted one resumes its checkpoint."""
    if (run / "run.json").exists() and read_run(run).get("finished"):
        print(f"{run} is done: skipping")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {k[4:]: v for r in rows for k, v in r.items() if k.startswith("val/")}
    phase = phase_factory()
    return Trainer(run, phase, cfg, device).fit(resume=(run / CHECKPOINT).exists())


def _budget(cfg: TrainConfig, minutes: float, c: RoundsConfig) -> TrainConfig:
    """`minutes` of training, or the recipe's `train_steps` updates, seeded by its `seed`."""
    by_steps = {"minutes": None, "steps": c.train_steps} if c.train_steps else {
        "minutes": minutes, "steps": 1_000_000}  # fmt: skip
    return replace(cfg, **by_steps, eval_every=1_000_000, save_every=250, seed=c.seed)


def train_tokenizer(data: Path, run: Path, preset: str, budget: dict, device, c) -> dict:
    cfg = _budget(TOKENIZER_TRAIN[preset], budget["tokenizer"], c)
    config = tokenizer_config_for(data, TOKENIZER_PRESETS[preset], cfg.seq_len)
    return _train(run, lambda: TokenizerPhase(data, config, cfg), cfg, device)


def train_dynamics(data, out: Path, here: Path, preset, budget, device, before, c) -> dict:
    cfg = _budget(DYNAMICS_TRAIN[preset], budget["dynamics"], c)
    if c.dynamics.window:  # every 8th step trains on windows twice the context, as presets do
        cfg = replace(cfg, seq_len=c.dynamics.window, long_seq_len=2 * c.dynamics.window)
    tokenizer, run = out / "tokenizer", here / "dynamics"
    latents = encode_dataset(data, tokenizer, device.device)
    config = dynamics_config_for(latents, DYNAMICS_PRESETS[preset], c.dynamics, cfg.seq_len)
    init = before / "dynamics" if before else None
    _train(run, lambda: DynamicsPhase(data, tokenizer, config, cfg, init=init), cfg, device)

    def measure() -> dict:
        world, gif = load_world_model(run, device.device), here / "imagination.gif"
        return evaluate_dynamics(world, data, gif=gif, windows=8, quick=not c.figures)

    return kept(here / "dynamics.json", measure)


def kept(path: Path, compute) -> dict:
    """The figures in `path`, computed and written once: a resumed run does not redo them."""
    if not path.exists():
        write_json(path, compute())
    return json.loads(path.read_text())


def train_agent(data: Path, here: Path, budget: dict, device, before, c: RoundsConfig) -> dict:
    cfg = _budget(agent_train_config(here / "dynamics"), budget["agent"], c)
    init = before / "agent" if before else None
    phase = lambda: AgentPhase(data, here / "dynamics", cfg, c.agent, init=init)  # noqa: E731
    bc = _train(here / "agent", phase, cfg, device)
    cfg = _budget(imagination_train_config(here / "agent"), budget["imagination"], c)
    init = before / "imagination" if before else None
    phase = lambda: ImaginationPhase(here / "agent", cfg, c.imagination, init=init)  # noqa: E731
    return {"bc": bc, "imagination": _train(here / "imagination", phase, cfg, device)}


def evaluate_round(here: Path, env: str, episodes: int, figures: bool = True) -> dict:
    """Full-length episodes on fresh seeds (the same for every policy) and the control figures
    (`eval.control`, unless `figures` is False), kept in eval.json. `return_*`: the policy in
    its `acting` mode (`choose_acting`, also kept in its run.json); `greedy_return_*`,
    `sampled_return_*`; BC greedy (`bc_return_*`), sampled (`bc_sampled_return_*`) and the
    better of the two on these seeds (`bc_best_*`: the baseline favoured)."""
    results = kept(here / "eval.json", lambda: _evaluate(here, env, episodes, figures))
    record_acting(here / "imagination", results["acting"])
    return results


def _evaluate(here: Path, env: str, episodes: int, figures: bool) -> dict:
    keys = ("return_mean", "return_std", "return_ci95")
    policy, bc = here / "imagination", here / "agent"
    results = choose_acting(policy, env, max(1, episodes // 2))
    greedy = results["acting"] == "greedy"
    results |= evaluate_agent(policy, env, episodes, video=here / "agent.gif", mode=greedy)
    other = evaluate_agent(policy, env, episodes, random=False, mode=not greedy)
    chosen, rest = ("greedy_", "sampled_") if greedy else ("sampled_", "greedy_")
    results |= {f"{chosen}{k}": results[k] for k in keys} | {f"{rest}{k}": other[k] for k in keys}
    for prefix, bc_greedy in (("bc_", True), ("bc_sampled_", False)):
        scores = evaluate_agent(bc, env, episodes, random=False, mode=bc_greedy)
        results |= {f"{prefix}{k}": scores[k] for k in keys}
    bc_mean = results["bc_return_mean"]
    best = "bc_" if bc_mean >= results["bc_sampled_return_mean"] else "bc_sampled_"
    results |= {f"bc_best_{k}": results[f"{best}{k}"] for k in keys}
    return results | (control_figures(here / "imagination") if figures else {})


ACTING_SEED = 1  # the validation episodes' seeds; the evaluation draws its own with seed 0


def choose_acting(run: Path, env: str, episodes: int) -> dict:
    """Greedy or sampled: whichever returns more over `episodes` validation episodes each
    (module doc). `acting_frames`: the env frames they stepped."""
    returns, frames = {}, 0
    for mode in ("greedy", "sampled"):
        scores = evaluate_agent(run, env, episodes, seed=ACTING_SEED, random=False,
                                mode=mode == "greedy")  # fmt: skip
        returns[mode], frames = scores["return_mean"], frames + scores["frames"]
    return {"acting": max(returns, key=returns.get), "acting_returns": returns,
            "acting_frames": frames}  # fmt: skip


def record_acting(run: Path, acting: str) -> None:
    """Keep the round's choice in the policy's run.json: `eval agent`, `collect --policy`,
    `play` and `pack` act that way by default."""
    info = json.loads((run / RUN_FILE).read_text())  # as written: links stay as they are
    if info.get("acting") != acting:
        write_run(run, info | {"acting": acting})
