"""What identifies an active-learning loop, and what `open_loop` does with the pool's unfinished loops (issue 41:
a rerun continues the loop a killed run left instead of buying its rounds again)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from actprm.config import Settings
from actprm.errors import ActPRMError
from actprm.store import Store
from tasks.pipeline import loop_key, loop_shaping, open_loop


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path / "home", model={"preset": "tiny"}, judge={"backend": "verifier"})


def test_the_loop_is_the_pool_and_the_settings_that_shape_what_it_buys_and_trains(settings):
    key = loop_key(loop_shaping(settings, "p"))
    # Stopping rules, money caps, the judge's transport, scoring sizes and checkpoint spacing: the same loop.
    same = settings.model_copy(update={
        "loop": settings.loop.model_copy(update={"rounds": 9, "plateau_rounds": 5}),
        "budget": settings.budget.model_copy(update={"max_labels": 10, "max_cost": 1.0}),
        "judge": settings.judge.model_copy(update={"concurrency": 2, "timeout_s": 5.0}),
        "uncertainty": settings.uncertainty.model_copy(update={"batch_size": 8}),
        "train": settings.train.model_copy(update={"checkpoint_every": 7}),
        "registry": settings.registry.model_copy(update={"min_delta": 0.1})})
    assert loop_key(loop_shaping(same, "p")) == key
    # The pool, or what decides which trajectories are bought and what the model learns: another loop.
    assert loop_key(loop_shaping(settings, "q")) != key
    for section, change in [("loop", {"labels_per_round": 7}), ("uncertainty", {"strategy": "random"}),
                            ("train", {"lr": 1e-3}), ("train", {"warmup_steps": 5}), ("train", {"max_grad_norm": 0.5}),
                            ("model", {"num_heads": 4}),
                            ("judge", {"backend": "oracle"})]:
        other = settings.model_copy(update={section: getattr(settings, section).model_copy(update=change)})
        assert loop_key(loop_shaping(other, "p")) != key, (section, change)


def test_shaping_settings_added_later_keep_the_key_of_loops_opened_before_them(settings):
    # The key as it was hashed before train.warmup_steps and train.max_grad_norm were part of it.
    before = loop_shaping(settings, "p")
    assert "warmup_steps" not in before["train"] and "max_grad_norm" not in before["train"]
    at_default = settings.model_copy(update={"train": settings.train.model_copy(
        update={"warmup_steps": settings.train.warmup_steps, "max_grad_norm": settings.train.max_grad_norm})})
    assert loop_key(loop_shaping(at_default, "p")) == loop_key(before)


def _loops(settings):
    with Store(settings.duckdb_path, read_only=True) as store:
        return [(row["loop_id"], row["status"]) for row in store._loop_rows("TRUE", [])][::-1]


def test_a_rerun_continues_the_unfinished_loop_and_fresh_abandons_it(settings):
    first = open_loop(settings, "p")
    assert not first["resumed"]
    again = open_loop(settings, "p")
    assert again["resumed"] and again["loop_id"] == first["loop_id"]
    other = settings.model_copy(update={"loop": settings.loop.model_copy(update={"labels_per_round": 7})})
    elsewhere = open_loop(other, "p")  # other settings: a loop of its own; the first stays open
    assert not elsewhere["resumed"] and elsewhere["loop_id"] != first["loop_id"]
    fresh = open_loop(settings, "p", fresh=True)
    assert not fresh["resumed"] and fresh["abandoned"] == [first["loop_id"]]
    assert _loops(settings) == [(first["loop_id"], "abandoned"), (elsewhere["loop_id"], "open"),
                                (fresh["loop_id"], "open")]


def test_a_loop_another_live_process_runs_is_refused(settings):
    loop = open_loop(settings, "p")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store(settings.duckdb_path) as store:
            store.claim_loop(loop["loop_id"], f"{socket.gethostname()}:{other.pid}")
        for fresh in (False, True):
            with pytest.raises(ActPRMError, match=f"being run by process {other.pid}"):
                open_loop(settings, "p", fresh=fresh)
    finally:
        other.kill()
        other.wait()
    assert open_loop(settings, "p")["loop_id"] == loop["loop_id"]  # its owner is gone: continued
