import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import TINY_TOKENIZER, make_store

from nanodreamer.errors import UserError
from nanodreamer.runs import load_tokenizer, read_run
from nanodreamer.train.distributed import Distributed
from nanodreamer.train.tokenizer import TokenizerObjective, TokenizerPhase
from nanodreamer.train.trainer import TrainConfig, Trainer, learning_rate

MODEL = TINY_TOKENIZER
TRAIN = TrainConfig(
    steps=6,
    batch_size=4,
    seq_len=4,
    lr=3e-3,
    warmup=2,
    eval_every=3,
    save_every=3,
    log_every=1,
    workers=0,
    tensorboard=False,
)


@pytest.fixture
def data(tmp_path):
    return make_store(tmp_path / "data", [30, 24, 40, 20], size=16).path


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def fit(data, run, cfg=TRAIN, resume=False):
    return Trainer(run, TokenizerPhase(data, MODEL, cfg), cfg, Distributed()).fit(resume=resume)


class Interrupted(TokenizerPhase):
    """Dies (like a killed process) when asked for the batch after step 3's checkpoint."""

    def batches(self, start_step, env):
        for step, batch in enumerate(super().batches(start_step, env), start_step):
            if step == 3:
                raise KeyboardInterrupt
            yield batch


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    fit(data, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "part", Interrupted(data, MODEL, TRAIN), TRAIN, Distributed()).fit()
    assert not read_run(tmp_path / "part")["finished"]  # a pipeline resumes it, never skips it
    fit(data, tmp_path / "part", resume=True)
    assert (
        read_run(tmp_path / "part")["finished"] and read_run(tmp_path / "part")["steps_done"] == 6
    )
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "whole"), rel=1e-6)
    assert len(losses(tmp_path / "whole")) == 6
    whole, part = load_tokenizer(tmp_path / "whole"), load_tokenizer(tmp_path / "part")
    for a, b in zip(whole.state_dict().values(), part.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_run_folder_contents_and_refusals(data, tmp_path):
    results = fit(data, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("run.json", "checkpoint.pt", "model.safetensors", "reconstruction.gif"):
        assert (run / name).is_file()
    assert set(results) >= {"psnr", "ssim"}
    assert read_run(run)["phase"] == "tokenizer"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["schedule"]["step"] == 6 and state["optimizer"]["state"]
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    with pytest.raises(UserError, match="already holds a run"):
        fit(data, run)
    with pytest.raises(UserError, match="dynamics run is needed"):
        read_run(run, "dynamics")
    bigger = replace(MODEL, dim=64)
    with pytest.raises(UserError, match="different model_config"):
        Trainer(run, TokenizerPhase(data, bigger, TRAIN), TRAIN, Distributed()).fit(resume=True)
    other = make_store(tmp_path / "other", [10], size=8).path
    with pytest.raises(UserError, match="holds 8x8x3 frames but the tokenizer expects 16x16x3"):
        TokenizerPhase(other, MODEL, TRAIN)


def test_corrupt_checkpoint_and_weights_are_clear_errors(data, tmp_path):
    run = tmp_path / "run"
    fit(data, run, replace(TRAIN, steps=1))
    (run / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_tokenizer(run)
    (run / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="checkpoint.pt is corrupt"):
        fit(data, run, resume=True)


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0.0, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 0.0, 20) == pytest.approx(1.0)
    assert learning_rate(cfg, 0.5, 500) == pytest.approx(0.55)
    assert learning_rate(cfg, 1.0, 1000) == pytest.approx(0.1)


def _ddp_worker(rank, init_file, batch, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    objective = TokenizerObjective(
        __import__("nanodreamer.tokenizer").tokenizer.Tokenizer(replace(MODEL, mask_max=0.0))
    )
    ddp = torch.nn.parallel.DistributedDataParallel(objective)
    half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
    loss, _ = ddp(half)
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in objective.named_parameters()}, out)
    dist.destroy_process_group()


def test_two_process_gloo_ddp_matches_single_process_gradient(tmp_path):
    batch = {
        "obs": torch.randint(0, 256, (4, 3, 16, 16, 3), dtype=torch.uint8),
        "valid": torch.ones(4, 3, dtype=torch.bool),
    }
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "init"), batch, tmp_path / "g.pt"), nprocs=2
    )
    ddp_grads = torch.load(tmp_path / "g.pt")
    torch.manual_seed(0)
    from nanodreamer.tokenizer import Tokenizer

    objective = TokenizerObjective(Tokenizer(replace(MODEL, mask_max=0.0)))
    loss, _ = objective(batch)
    loss.backward()
    for name, param in objective.named_parameters():
        torch.testing.assert_close(ddp_grads[name], param.grad, atol=1e-6, rtol=1e-4)


def test_torchrun_two_processes_same_command(data, tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "nanodreamer",
        "train",
        "tokenizer",
        "--data",
        str(data),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "4",
        "--workers",
        "0",
        "--eval-every",
        "2",
        "--no-tensorboard",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=240)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "val/psnr" in rows[-1]
    assert load_tokenizer(run) is not None


class Slow(TokenizerPhase):
    """Takes 0.6 s per batch: one step overruns a tiny time budget."""

    def batches(self, start_step, env):
        for batch in super().batches(start_step, env):
            time.sleep(0.6)
            yield batch


def test_time_budget_overrun_by_one_step_ends_cleanly(data, tmp_path):
    """The run stops after the step that used up the budget and saves it (the progress bar
    counts seconds and must survive a step that overshoots its total)."""
    cfg = replace(TRAIN, steps=100, minutes=1e-3)
    Trainer(tmp_path / "run", Slow(data, MODEL, cfg), cfg, Distributed()).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["schedule"]["step"] == 1


@pytest.mark.parametrize(
    "plain, lean",
    [
        ({}, {"checkpointing": "selective"}),
        ({"compile": True}, {"compile": True, "memory_budget": 0.5}),
        ({"compile": True}, {"compile": True, "checkpointing": "full"}),
    ],
    ids=["selective-checkpointing", "compile-memory-budget", "compile-full-checkpointing"],
)
def test_memory_options_train_the_same_model(data, tmp_path, plain, lean):
    """Selective checkpointing, a compiled step under a memory budget and a compiled step with
    full checkpointing keep fewer activations and recompute the rest (the random MAE masks
    included): the losses stay."""
    cfg = replace(TRAIN, steps=3, eval_every=100, save_every=100)
    fit(data, tmp_path / "plain", replace(cfg, **plain))
    fit(data, tmp_path / "lean", replace(cfg, **lean))
    assert losses(tmp_path / "lean") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"checkpointing": "some"}, "checkpointing 'some' is unknown"),
        ({"memory_budget": 0.5}, "add --compile"),
        ({"compile": True, "memory_budget": 1.5}, r"must lie in \(0, 1\]"),
    ],
)
def test_memory_options_refused(data, tmp_path, options, message):
    cfg = replace(TRAIN, **options)
    with pytest.raises(UserError, match=message):
        Trainer(tmp_path / "run", TokenizerPhase(data, MODEL, cfg), cfg, Distributed())


def test_memory_flags_reach_the_train_config():
    from nanodreamer.cli import build_parser
    from nanodreamer.cli.flags import with_flags
    from nanodreamer.train.tokenizer import TRAIN_PRESETS

    def parse(*flags):
        words = ["train", "tokenizer", "--data", "d", "--out", "o", *flags]
        return with_flags(build_parser().parse_args(words), TRAIN_PRESETS["tiny"])

    assert (parse().checkpointing, parse().memory_budget, parse().compile) == ("none", 1.0, False)
    assert parse("--checkpointing", "full").checkpointing == "full"
    assert (parse("--no-tensorboard").tensorboard, parse("--wandb").wandb) == (False, True)
    assert parse("--checkpointing", "selective").checkpointing == "selective"
    cfg = parse("--compile", "--memory-budget", "0.5")
    assert (cfg.compile, cfg.memory_budget) == (True, 0.5)
