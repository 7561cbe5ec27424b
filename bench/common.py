"""Shared bench helpers: machine description, peak memory, and RESULTS.md section updates."""

from __future__ import annotations

import json
import platform
import re
import resource
import subprocess
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    cores = len(__import__("os").sched_getaffinity(0))
    return f"{cpu}, {cores} cores{gpu}, torch {torch.__version__}"


def matmul_peak(device: str) -> float:
    """Measured FLOP/s of a large matmul in the training precision (fp32 CPU, bf16 CUDA): the
    denominator of the model FLOPs utilisation."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def step_flops(step) -> float:
    """FLOPs of one call of `step` (forward and backward), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def update_results(section: str, body: str) -> None:
    """Replace (or append) the section `### {section}` (or `## {section}`) of bench/RESULTS.md
    with `body`, keeping its heading level."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    pattern = re.compile(rf"^(#{{2,3}}) {re.escape(section)}\n.*?(?=^#{{2,3}} |\Z)", re.S | re.M)
    found = pattern.search(text)
    level = found.group(1) if found else "##"
    block = f"{level} {section}\n\n{body.strip()}\n"
    text = pattern.sub(lambda _: block + "\n", text) if found else text + "\n" + block
    RESULTS.write_text(text.rstrip() + "\n")


def timed_run(command: list[str], wall: Path) -> None:
    """Run `command`, adding its wall time to the seconds kept in `wall` (JSON) each minute, so
    a run that is stopped and resumed reports its total."""
    spent = json.loads(wall.read_text())["seconds"] if wall.exists() else 0.0
    start, done = time.monotonic(), threading.Event()

    def keep_time() -> None:
        while not done.wait(60):
            wall.write_text(json.dumps({"seconds": spent + time.monotonic() - start}))

    threading.Thread(target=keep_time, daemon=True).start()
    try:
        subprocess.run(command, check=True)
    finally:
        done.set()
        wall.write_text(json.dumps({"seconds": spent + time.monotonic() - start}))


def hours(wall: Path) -> float | None:
    return json.loads(wall.read_text())["seconds"] / 3600 if wall.exists() else None


def publish(section: str, body: str, command: str, note: str, update: bool) -> None:
    """Print a table; with `update`, also make it RESULTS.md's `section`, dated, with the commit,
    the machine, the command and `note`."""
    print(body)
    if update:
        stamp = f"{time.strftime('%Y-%m-%d')}, commit {commit()}, {machine()}"
        update_results(section, f"{stamp}; `{command.strip()}`; {note}\n\n{body}")
