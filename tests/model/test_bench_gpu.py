"""bench/bench_gpu.py, the check a GPU user runs first: it must keep running on the code it measures.

CI has no GPU, so the same code runs here at toy sizes on the CPU (`--device cpu --small`); the GPU results
themselves are in bench/results/gpu.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py"
SECTIONS = ("train", "score_agreement", "scoring_7b_shape", "train_throughput")


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_every_section_runs_on_the_cpu_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("--device", "cpu", "--small", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for name in SECTIONS:
        assert "error" not in result[name], result[name].get("traceback")
    for precision in ("no", "bf16"):
        assert result["train"][precision]["steps"] > 0
    # Scoring the same weights twice on the same device must agree exactly: the check's own baseline.
    for case in ("untrained", "partly_trained_fp32", "trained_fp32"):
        agreement = result["score_agreement"][case]
        assert agreement["max_abs_delta_mu"] == 0.0 and agreement["uncertain_agreement"] == 1.0
    assert result["scoring_7b_shape"]["ensemble_overhead"]["ratio_e32_over_e1"] > 0
    assert all(r["tokens_per_s"] > 0 for r in result["train_throughput"].values() if isinstance(r, dict))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path):
    proc = run("--out", str(tmp_path / "gpu.json"), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()
