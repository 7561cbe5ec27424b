"""bench/gpu_check.py: its CPU smoke mode runs every step's code path; on a GPU (marker
`cuda`, skipped elsewhere) the correctness checks must pass."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import gpu_check  # noqa: E402


def test_smoke_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    results = gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert set(results["checks"]) == set(gpu_check.CHECKS)
    for name, figures in results["checks"].items():
        assert "error" not in figures, (name, figures)
        assert figures.get("ok", True), (name, figures)
    assert results["checks"]["sdpa"]["time (causal)"] != "none"
    assert {"tokenizer_compiled", "dynamics_compiled"} <= set(results["checks"]["training"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_correctness_on_cuda(tmp_path):
    results = gpu_check.main(
        ["--device", "cuda", "--only", "correctness", "cache", "--out", str(tmp_path / "c.json")]
    )
    assert all(r["ok"] for r in results["checks"].values()), results
