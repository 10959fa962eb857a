"""bench/bench_rerank.py: its candidates are graded by the verifier, and its baselines are computed as defined."""

from __future__ import annotations

from actprm.synth import generate, verify_first_error
from actprm.testing.bench import load_bench_script

bench = load_bench_script("bench_rerank")


def test_a_slip_is_the_first_error_and_is_carried_to_the_answer():
    rec = next(iter(generate(1, seed=3, error_rate=0.0)))
    question, steps = rec["question"], rec["steps"]
    for k in range(len(steps)):
        new = bench.slipped(steps, k, 10)
        if new is None:  # a slip that cannot be carried (e.g. an inexact division) is skipped by the generator
            continue
        assert verify_first_error(question, new) == k
        assert bench.final_answer(new) != bench.final_answer(steps)


def test_problems_hold_n_graded_candidates_with_both_kinds():
    problems = bench.make_problems(12, 8, 0.3, seed=1)
    assert len(problems) == 12 and all(len(p) == 8 for p in problems)
    flat = [c for p in problems for c in p]
    assert 0 < sum(c["correct"] for c in flat) < len(flat)
    assert all(c["correct"] == (verify_first_error(c["question"], c["steps"]) == -1) for c in flat)


def test_random_majority_and_oracle_follow_their_definitions():
    def cand(i, correct, answer):
        return {"id": f"c{i}", "group": "g", "correct": correct, "answer": answer}

    # 1 correct (answer 5) of 4; the wrong ones agree on 7: the vote is wrong, the oracle right, random 1/4.
    problem = [cand(0, True, "5"), cand(1, False, "7"), cand(2, False, "7"), cand(3, False, "8")]
    acc = bench.method_accuracies([problem], {"min": {"g": "c0"}, "last": {"g": "c3"}})
    assert acc == {"random": 0.25, "majority": 0.0, "oracle": 1.0, "prm-min": 1.0, "prm-last": 0.0}
    # A tie between answers counts at its expected accuracy.
    tie = [cand(0, True, "5"), cand(1, False, "7")]
    assert bench.method_accuracies([tie], {})["majority"] == 0.5


def test_auroc_is_the_chance_a_correct_candidate_outscores_a_wrong_one():
    assert bench.auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert bench.auroc([0.1, 0.9], [True, False]) == 0.0
    assert bench.auroc([0.5, 0.5], [True, False]) == 0.5
    assert bench.auroc([0.5], [True]) is None
