"""bench/run_all.py, what `make bench` runs: which benchmarks, and a clear answer for a name it does not know."""

from __future__ import annotations

import subprocess
import sys

import pytest

from actprm.testing.bench import BENCH, load_bench_script

SCRIPT = BENCH / "run_all.py"
run_all = load_bench_script("run_all")


def test_every_benchmark_it_names_exists():
    for script, *_ in run_all.BENCHMARKS.values():
        assert (SCRIPT.parent / script).is_file(), script


def test_without_cuda_the_gpu_check_is_skipped_with_a_reason_not_failed():
    names, notes = run_all.chosen(None, with_study=False, has_cuda=False)
    assert "gpu" not in names and "study" not in names and names[0] == "ingest"
    assert any(n.startswith("gpu: skipped") for n in notes)
    names, notes = run_all.chosen(None, with_study=True, has_cuda=True)
    assert "gpu" in names and names[-1] == "study" and not notes


def test_an_unknown_name_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "score,ingset"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "run_all: unknown benchmark(s) ingset; choose from " + ", ".join(run_all.BENCHMARKS)


def test_only_the_gpu_check_on_a_cpu_machine_runs_nothing_and_says_so():
    if run_all.cuda_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "gpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "gpu: skipped" in proc.stdout and "== gpu" not in proc.stdout


def test_every_benchmark_script_compiles():
    """A script no test imports can break unseen (bench/al_study.py once shipped an IndentationError)."""
    import py_compile

    for script in sorted(SCRIPT.parent.glob("*.py")):
        py_compile.compile(str(script), doraise=True)

