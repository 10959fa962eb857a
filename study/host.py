"""What a wall time or a float result depends on besides the code: the host's CPU kernels and its speed that day.

The shared 2-core development host ran the same study preset in 13 minutes one day and 36 the next, and the same
seed gave runs up to 6 F1 points apart on hosts with other kernels (float rounding follows the kernels), so a
study records both next to its wall time and its runs.
"""

from __future__ import annotations

import os
import time

import torch

# The study heads' first-layer GEMM: (steps in a minibatch, MiniLM width) @ (width, 32 heads x 128 hidden units).
GEMM_SHAPE = (512, 384, 4096)


def cpu_capability() -> str:
    """The vector kernel set torch dispatches to on this CPU (e.g. AVX2, AVX512): runs reproduce bit for bit only
    between hosts that share it."""
    return torch.backends.cpu.get_cpu_capability()


def gemm_gflops(threads: int, seconds: float = 3.0) -> float:
    """Best fp32 GEMM rate of GEMM_SHAPE with `threads` torch threads over `seconds`, in GFLOP/s to 0.1 (at least
    one multiplication, however short `seconds`)."""
    m, k, n = GEMM_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, end = float("inf"), time.perf_counter() + seconds
        while best == float("inf") or time.perf_counter() < end:
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return round(2 * m * k * n / best / 1e9, 1)


def host_facts(threads: int, seconds: float) -> dict:
    """This host as one study invocation records it; `after` is filled in when the invocation ends."""
    return {"cpu_capability": cpu_capability(), "cpu_count": os.cpu_count(), "threads": threads,
            "shape": list(GEMM_SHAPE), "before": gemm_gflops(threads, seconds), "after": None}
