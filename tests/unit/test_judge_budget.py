"""Budget caps, the label cache and selection, with the oracle and verifier judges on a real DuckDB file."""

import pytest

from actprm.errors import ActPRMError
from actprm.judges import JUDGES, build_judge
from actprm.judges.budget import BudgetLimits
from actprm.store import Store
from actprm.testing.pools import synth_pool
from tasks.label import label_ids, label_pool


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "actprm.duckdb") as s:
        yield s


def _spent_labels(store):
    return store.sql("SELECT count(*) FROM judge_labels WHERE status = 'labeled'").fetchone()[0]


def test_registry_has_every_backend_and_vllm_explains_the_missing_extra():
    assert {"openai", "vllm", "oracle", "verifier"} <= set(JUDGES.names())
    with pytest.raises(ActPRMError, match=r"actprm\[gpu\]"):
        build_judge("vllm", model="Qwen/QwQ-32B")
    with pytest.raises(ActPRMError, match="unknown judge"):
        build_judge("gpt-magic")
    with pytest.raises(ActPRMError, match="bogus_option"):
        build_judge("openai", bogus_option=1)


def test_the_vllm_judge_fails_a_broken_batch_with_an_error_instead_of_hanging(monkeypatch):
    """The engine runs batches in a background task: a failure there must reach every waiting `ask`. (vLLM itself
    needs a GPU; this stands in a module with its API.)"""
    import asyncio
    import sys
    import types

    from actprm.judges.base import JudgeFatalError, JudgeRequest, JudgeUnavailable

    class LLM:
        def __init__(self, model, **engine_kwargs):
            pass

        def chat(self, messages, params, use_tqdm=False):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = LLM, dict, "0.9.2"
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", types.ModuleType("vllm.sampling_params"))  # pre-0.12
    req = JudgeRequest("t1", "What is 2 + 2?", ["2 + 2 = 4"])

    async def ask(judge):
        try:
            return await asyncio.wait_for(judge.ask(req, judge.prompt(req)), timeout=10)
        finally:
            await judge.aclose()

    with pytest.raises(JudgeFatalError, match=r"this vLLM \(0.9.2\) has no StructuredOutputsParams"):
        asyncio.run(ask(build_judge("vllm", model="m", structured_output=True)))
    with pytest.raises(JudgeUnavailable, match="engine_error: RuntimeError"):
        asyncio.run(ask(build_judge("vllm", model="m")))


def test_settings_map_onto_judge_and_budget(monkeypatch):
    from actprm.config import Settings
    from actprm.judges import judge_kwargs_from_settings

    monkeypatch.setenv("ACTPRM_JUDGE_API_KEY", "sk-from-env-123")
    settings = Settings(judge={"backend": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 5},
                        budget={"max_labels": 7, "per_pool_max_cost": 1.5})
    judge = build_judge(settings.judge.backend, **judge_kwargs_from_settings(settings))
    assert (judge.model, judge.timeout_s, judge.url) == ("m", 5, "http://127.0.0.1:9/v1/chat/completions")
    assert "sk-from-env-123" not in repr(judge)
    limits = BudgetLimits.from_settings(settings.budget)
    assert (limits.max_labels, limits.per_pool_max_cost, limits.max_tokens) == (7, 1.5, None)
    # The environment beats a config file: a key rotated in ACTPRM_JUDGE_API_KEY wins over an old one in YAML.
    from_yaml = Settings(judge={"backend": "openai", "api_key": "sk-old-from-yaml"})
    assert from_yaml.judge_api_key() == "sk-from-env-123"
    monkeypatch.delenv("ACTPRM_JUDGE_API_KEY")
    assert from_yaml.judge_api_key() == "sk-old-from-yaml"


def test_verifier_labels_the_synthetic_pool_like_its_gold(store):
    synth_pool(store, "p", 40)
    s = label_pool(store, "p", build_judge("verifier"), select="all", progress=False)
    assert (s.requested, s.labeled, s.failed, s.stopped_because) == (40, 40, 0, "done")
    assert s.quality["accuracy"] == 1.0 and s.quality["parse_failure_rate"] == 0.0
    assert s.tokens > 0  # metered as if paid, so token caps apply


def test_oracle_reveals_gold_and_is_metered_against_the_label_cap(store):
    ids = synth_pool(store, "p", 30, seed=3)
    s = label_pool(store, "p", build_judge("oracle"), select="all", limits=BudgetLimits(max_labels=12),
                   concurrency=8, progress=False)
    assert s.stopped_because == "budget" and s.labeled == 12 == _spent_labels(store)
    assert s.budget_left["global"]["left"]["labels"] == 0
    gold = dict(store.sql("SELECT trajectory_id, first_error FROM gold_labels").fetchall())
    got = dict(store.sql("SELECT trajectory_id, first_error FROM judge_labels").fetchall())
    assert got and all(got[t] == gold[t] for t in got) and set(got) <= set(ids)


def test_token_and_cost_caps_are_never_exceeded(store):
    synth_pool(store, "p", 30)
    judge = build_judge("verifier", max_completion_tokens=256)
    limits = BudgetLimits(max_tokens=3_000, max_cost=0.005, price_per_1k_tokens=0.002)
    s = label_pool(store, "p", judge, select="all", limits=limits, concurrency=8, progress=False)
    spent = store.budget_spent()
    assert s.stopped_because == "budget" and 0 < s.labeled < 30
    assert spent["tokens"] <= 3_000 and spent["cost"] <= 0.005 + 1e-9
    assert store.ledger_consistency()["settled_without_label"] == 0


def test_per_pool_cap_leaves_other_pools_their_budget(store):
    synth_pool(store, "a", 10, seed=1)
    synth_pool(store, "b", 10, seed=2)
    limits = BudgetLimits(per_pool_max_labels=4)
    assert label_pool(store, "a", build_judge("verifier"), select="all", limits=limits, progress=False).labeled == 4
    sb = label_pool(store, "b", build_judge("verifier"), select="all", limits=limits, progress=False)
    assert sb.labeled == 4 and sb.budget_left["pool"]["left"]["labels"] == 0
    assert store.budget_left("a", limits)["pool"]["spent"]["labels"] == 4


def test_rerun_never_pays_twice(store):
    synth_pool(store, "p", 20)
    first = label_pool(store, "p", build_judge("verifier"), select="all", max_requests=8, progress=False)
    again = label_pool(store, "p", build_judge("verifier"), select="all", progress=False)
    assert (first.labeled, again.cached, again.requested, again.labeled) == (8, 8, 12, 12)
    ledger = store.sql("SELECT count(*) FROM budget_ledger WHERE state = 'settled' AND labels = 1").fetchone()[0]
    assert ledger == _spent_labels(store) == 20
    third = label_pool(store, "p", build_judge("verifier"), select="all", progress=False)
    assert (third.requested, third.cached) == (0, 20)


def test_stale_reservations_of_a_crashed_run_count_as_spent(store):
    ids = synth_pool(store, "p", 10)
    store.ledger_write(reserve=[("crashed-1", "p", ids[0], 5_000, 0.0)])
    s = label_pool(store, "p", build_judge("verifier"), select="all", limits=BudgetLimits(max_labels=5),
                   progress=False)
    assert s.orphaned_reservations == 1 and s.labeled == 4  # the orphan may have been billed
    assert store.ledger_consistency()["states"]["orphaned"] == 1


def test_an_unforeseen_error_on_one_trajectory_stops_the_run_keeping_every_label_paid_for(store):
    """Whatever goes wrong on one reply (a bug, an answer no parser foresaw), the requests other workers have in
    flight are answered, paid for and committed before the run stops; a rerun buys only what is missing."""
    import asyncio

    from actprm.judges.oracle import OracleJudge

    ids = synth_pool(store, "p", 12)
    doomed = ids[5]

    class Flaky(OracleJudge):
        async def ask(self, req, prompt):
            await asyncio.sleep(0.05)  # several requests in flight when the doomed one fails
            if req.trajectory_id == doomed:
                raise RuntimeError("reply nobody foresaw")
            return await super().ask(req, prompt)

    with pytest.raises(ActPRMError, match=f"labeling stopped at trajectory {doomed} .*RuntimeError: reply nobody "
                                          r"foresaw \(\d+ labels bought before it are kept\)"):
        label_ids(store, ids, Flaky(), pool="p", concurrency=4, progress=False)
    # The 4 workers had the doomed trajectory and up to 3 others in flight: those were answered and committed.
    kept = _spent_labels(store)
    assert kept >= 5 and store.ledger_consistency()["states"].get("settled") == kept
    again = label_ids(store, ids, build_judge("oracle"), pool="p", concurrency=4, progress=False)
    assert (again.cached, again.labeled, again.orphaned_reservations) == (kept, 12 - kept, 1)
    paid = "SELECT count(*) FROM budget_ledger WHERE state = 'settled' AND labels = 1"
    assert store.sql(paid).fetchone()[0] == 12 == _spent_labels(store)


def test_uncertain_selection_follows_acquisition_and_skips_eval_split(store):
    ids = synth_pool(store, "p", 12, eval_every=4)  # ids[3], ids[7], ids[11] are held out
    for rank, tid in enumerate(ids):
        store.sql("INSERT INTO scores (trajectory_id, model_version, mu, sigma, scored_steps, truncated_steps, "
                  "predicted_first_error, uncertain, acquisition) VALUES (?, 'v1', [0.5], [0.1], 1, 0, -1, ?, ?)",
                  [tid, rank % 2 == 1, float(rank)])
    s = label_pool(store, "p", build_judge("verifier"), select="uncertain", max_requests=2, progress=False)
    labeled = {r[0] for r in store.sql("SELECT trajectory_id FROM judge_labels").fetchall()}
    # uncertain train ids by acquisition: 9, 5, 1 (7, 3 and 11 are eval) -> the two highest
    assert s.requested == 2 and labeled == {ids[9], ids[5]}
    synth_pool(store, "unscored", 3, seed=9)
    with pytest.raises(ActPRMError, match="no scores"):
        label_pool(store, "unscored", build_judge("oracle"), select="uncertain", progress=False)


def test_random_selection_is_seeded_and_unknown_pool_is_a_clear_error(store):
    synth_pool(store, "p", 30)
    a = label_pool(store, "p", build_judge("verifier", model="v-a"), select="random", seed=7, max_requests=5,
                   progress=False)
    b = label_pool(store, "p", build_judge("verifier", model="v-b"), select="random", seed=7, max_requests=5,
                   progress=False)
    pick = lambda m: {r[0] for r in store.sql("SELECT trajectory_id FROM judge_labels WHERE judge_model = ?", [m]).fetchall()}  # noqa: E731
    assert a.labeled == b.labeled == 5 and pick("v-a") == pick("v-b")
    with pytest.raises(ActPRMError, match="unknown pool"):
        label_pool(store, "nope", build_judge("verifier"), select="all", progress=False)


def test_label_ids_counts_explicit_ids_already_labeled_as_cached(store):
    ids = synth_pool(store, "p", 6)
    label_ids(store, ids[:3], build_judge("verifier"), pool="p", progress=False)
    s = label_ids(store, ids, build_judge("verifier"), pool="p", progress=False)
    assert (s.cached, s.requested, s.labeled) == (3, 3, 3)


@pytest.mark.parametrize("knob, value", [("run_deadline_s", float("nan")), ("run_deadline_s", -1.0),
                                         ("timeout_s", 0.0), ("timeout_s", float("nan")), ("circuit_breaker", 0),
                                         ("concurrency", 0), ("max_completion_tokens", 0), ("top_p", 1.5),
                                         ("temperature", -0.1), ("unanswered_charge", "never")])
def test_judge_settings_that_would_never_stop_or_never_charge_are_refused(knob, value):
    """A NaN deadline or timeout compares false with everything: it would never fire."""
    from pydantic import ValidationError

    from actprm.config import Settings

    with pytest.raises(ValidationError, match=knob):
        Settings(judge={knob: value})


def test_labels_bought_under_an_earlier_revision_of_the_prompt_are_not_bought_again(store):
    """processbench-v1 -> v2 only hardened the template: a home's labels stay its label cache, for buying and
    for training, and a labeled row under v1 wins over a failed one under v2."""
    ids = synth_pool(store, "p", 10)
    old = label_pool(store, "p", build_judge("verifier", prompt_version="processbench-v1"), select="all",
                     max_requests=6, progress=False)
    assert old.labeled == 6
    new = label_pool(store, "p", build_judge("verifier"), select="all", progress=False)  # processbench -> v2
    assert new.prompt_version == "processbench-v2"
    assert (new.cached, new.requested, new.labeled) == (6, 4, 4)
    assert store.sql("SELECT count(*) FROM budget_ledger WHERE labels = 1").fetchone()[0] == 10
    assert len(store.training_examples("p", split=None, judge_model=new.judge_model,
                                       prompt_version="processbench-v2")) == 10
    # Another family is another question: its labels are bought anew.
    other = label_pool(store, "p", build_judge("verifier", prompt_version="actprm"), select="all", progress=False)
    assert (other.cached, other.labeled) == (0, len(ids)) and other.quality["accuracy"] == 1.0
