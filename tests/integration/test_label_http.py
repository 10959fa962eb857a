"""Labeling against a REAL local OpenAI-compatible HTTP server with injected faults (no mocks).

The client under test is the production path: OpenAIJudge (httpx) -> label_ids -> DuckDB ledger.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from actprm.errors import ActPRMError, CircuitOpen, JudgeDown
from actprm.judges import build_judge
from actprm.judges.base import JudgeRequest
from actprm.judges.budget import BudgetLimits
from actprm.judges.prompt import max_prompt_tokens
from actprm.store import Store
from actprm.testing.judge_server import JudgeServer
from actprm.testing.pools import synth_pool
from tasks.label import judge_down, label_ids, label_pool, log_labeling_to_mlflow, loop_judge_down

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-7f3a9c0d1e2b"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "actprm.duckdb") as s:
        yield s


def judge_for(server, **kw):
    opts = dict(url=server.url, model="local-judge", api_key=KEY, base_delay=0.01, max_delay=0.05, timeout_s=2.0,
                max_retries=4, seed=0)
    opts.update(kw)
    return build_judge("openai", **opts)


def labeled_rows(store):
    return dict(store.sql("SELECT trajectory_id, first_error FROM judge_labels WHERE status = 'labeled'").fetchall())


def test_labels_match_the_judge_and_send_the_key(store):
    ids = synth_pool(store, "p", 24)
    with JudgeServer(api_key=KEY) as server:
        s = label_pool(store, "p", judge_for(server), select="all", concurrency=6, progress=False)
    assert (s.labeled, s.failed, s.stopped_because) == (24, 0, "done")
    assert set(server.auth_headers) == {f"Bearer {KEY}"}
    gold = dict(store.sql("SELECT trajectory_id, first_error FROM gold_labels").fetchall())
    assert labeled_rows(store) == {t: gold[t] for t in ids}  # the server answers with the verifier
    assert s.tokens == store.budget_spent("p")["tokens"] > 0 and s.latency_p50 is not None


def test_one_judge_serves_several_runs(store):
    """The active-learning flow builds the judge once and labels every round with it."""
    ids = synth_pool(store, "p", 6)
    with JudgeServer() as server:
        judge = judge_for(server)
        first = label_ids(store, ids[:3], judge, pool="p", concurrency=2, progress=False, round=0)
        second = label_ids(store, ids, judge, pool="p", concurrency=2, progress=False, round=1)
    assert (first.labeled, second.labeled, second.cached) == (3, 3, 3)


def test_structured_output_sends_the_json_schema_and_parses_json(store):
    ids = synth_pool(store, "p", 3)
    with JudgeServer() as server:
        s = label_pool(store, "p", judge_for(server, structured_output=True), select="all", concurrency=1,
                       progress=False)
        schema = server.last_payload["structured_outputs"]["json"]
    assert s.labeled == 3 and schema["required"] == ["first_error"]
    assert server.last_payload["max_completion_tokens"] == 4096 and server.last_payload["model"] == "local-judge"
    gold = dict(store.sql("SELECT trajectory_id, first_error FROM gold_labels").fetchall())
    assert labeled_rows(store) == {t: gold[t] for t in ids}


def test_retry_after_is_honoured_and_transient_errors_are_retried(store):
    synth_pool(store, "p", 1)
    with JudgeServer(script=["429", "500", "drop", "badjson"], retry_after="1") as server:
        t0 = time.monotonic()
        s = label_pool(store, "p", judge_for(server), select="all", concurrency=1, progress=False)
        elapsed = time.monotonic() - t0
    assert s.labeled == 1 and server.requests == 5
    assert elapsed >= 1.0  # waited the server's Retry-After, not our 10 ms backoff
    assert store.sql("SELECT attempts FROM judge_labels").fetchone()[0] == 5


@pytest.mark.parametrize("fault", ["slow", "504", "524"])
def test_answers_lost_after_sending_are_reasked_and_stay_spent(store, fault):
    """A read timeout, or a gateway's 504 (Cloudflare's 524), loses an answer the model may still generate and
    bill: one request per reservation, never a blind transport retry."""
    synth_pool(store, "p", 2)
    with JudgeServer(script=[fault], slow_s=0.6) as server:
        s = label_pool(store, "p", judge_for(server, timeout_s=0.3), select="all", concurrency=1, progress=False)
        time.sleep(0.5)  # the server finishes (and bills) the answer the client gave up on
    assert s.labeled == 2 and server.injected[fault] == 1 and s.maybe_billed == 1 and server.requests == 3
    # the timed-out request stays in the ledger at its worst case: the ledger never under-counts the bill
    states = dict(store.sql("SELECT state, count(*) FROM budget_ledger GROUP BY state").fetchall())
    assert states == {"settled": 2, "maybe_billed": 1}
    assert store.budget_spent("p")["tokens"] >= server.billed_tokens > 0


def test_a_judge_that_always_times_out_cannot_spend_past_the_cap(store):
    """Each sent request may be billed even when its answer never arrives, so the token cap must hold
    against what the server generated, not against what the client read."""
    synth_pool(store, "p", 10)
    cap = 6_000  # three requests' worst case: the cap, before the breaker's wave of five, must stop it
    with JudgeServer(script=["slow"] * 500, slow_s=0.3) as server:
        judge = judge_for(server, timeout_s=0.1, max_retries=6, max_completion_tokens=512)
        s = label_pool(store, "p", judge, select="all", concurrency=2, limits=BudgetLimits(max_tokens=cap),
                       progress=False)
        time.sleep(0.5)
    assert s.labeled == 0 and s.stopped_because == "budget"
    assert server.requests == s.maybe_billed >= 3  # one request per reservation: no blind transport retries
    assert server.billed_tokens <= store.budget_spent()["tokens"] <= cap
    rows = store.sql("SELECT status, reason FROM judge_labels").fetchall()
    assert rows and {status for status, _ in rows} == {"failed"}
    assert {reason for _, reason in rows} <= {"timeout", "budget_exhausted"}


def test_unparseable_answers_are_reasked_then_failed_with_a_reason(store):
    synth_pool(store, "p", 2)
    # trajectory 1: two malformed answers then a good one; trajectory 2: three malformed answers
    with JudgeServer(script=["malformed", "malformed", None, "malformed", "malformed", "malformed"]) as server:
        s = label_pool(store, "p", judge_for(server), select="all", concurrency=1, max_parse_retries=2,
                       progress=False)
    assert (s.labeled, s.failed, s.failures_by_reason) == (1, 1, {"no_boxed": 1})
    failed = store.sql("SELECT reason, attempts, raw_answer FROM judge_labels WHERE status = 'failed'").fetchone()
    assert failed[0] == "no_boxed" and failed[1] == 3 and "middle" in failed[2]
    # every unparseable answer was paid for: 6 settled requests, 1 of them bought a label
    rows = store.sql("SELECT count(*), sum(labels) FROM budget_ledger WHERE state = 'settled'").fetchone()
    assert rows == (6, 1)


def test_answers_in_other_servers_shapes_are_read_or_failed_and_never_lower_the_spend(store):
    """Content as text parts (Mistral's API) is an answer; a box holding a 5,000-digit number is an unparseable
    one; a usage block that cannot be real (negative, or too large to store) is charged at the request's worst
    case. None of them stops the run."""
    ids = synth_pool(store, "p", 5)
    script = ["chunks", "hugebox", "hugebox", "hugebox", "negusage", "hugeusage", None]
    with JudgeServer(script=script) as server:
        s = label_pool(store, "p", judge_for(server, max_completion_tokens=512), select="all", concurrency=1,
                       max_parse_retries=2, progress=False)
    assert (s.labeled, s.failed, s.failures_by_reason, s.stopped_because) == (4, 1, {"out_of_range": 1}, "done")
    gold = dict(store.sql("SELECT trajectory_id, first_error FROM gold_labels").fetchall())
    labeled = labeled_rows(store)
    assert labeled == {t: gold[t] for t in ids if t in labeled} and len(labeled) == 4
    tokens = [t for (t,) in store.sql("SELECT prompt_tokens FROM judge_labels").fetchall()]
    assert min(tokens) > 0 and max(tokens) < 100_000
    assert store.budget_spent("p")["tokens"] >= server.billed_tokens > 0


def test_unauthorized_fails_fast_with_one_line_and_no_key(store, caplog):
    synth_pool(store, "p", 5)
    caplog.set_level(logging.DEBUG)
    with JudgeServer(api_key="the-right-key") as server:
        judge = judge_for(server)
        with pytest.raises(ActPRMError) as err:
            label_pool(store, "p", judge, select="all", concurrency=1, progress=False)
    message = str(err.value)
    assert "401" in message and "API key" in message and "\n" not in message
    assert server.requests == 1  # no retry on 401
    assert KEY not in message and KEY not in repr(judge) and KEY not in repr(err.value)
    assert KEY not in caplog.text
    assert store.budget_spent()["labels"] == 0  # the refused request was released, not billed


def test_circuit_breaker_stops_the_run_keeping_labels(store):
    synth_pool(store, "p", 30)
    with JudgeServer(script=[None] * 3 + ["500"] * 200) as server:
        s = label_pool(store, "p", judge_for(server, max_retries=1), select="all", concurrency=1,
                       circuit_breaker=4, progress=False)
    assert s.stopped_because == "circuit_open" and s.labeled == 3 and s.failed == 4
    assert len(labeled_rows(store)) == 3 and s.failures_by_reason == {"http_500": 4}


def test_under_30_percent_faults_budget_holds_and_no_paid_label_is_lost(store):
    ids = synth_pool(store, "p", 60, seed=5)
    faults = {"429": 0.05, "500": 0.05, "slow": 0.03, "malformed": 0.05, "truncated": 0.04, "drop": 0.04,
              "badjson": 0.04}
    limits = BudgetLimits(max_tokens=400_000, max_labels=45, price_per_1k_tokens=0.01)
    with JudgeServer(faults=faults, slow_s=0.6, seed=11) as server:
        s = label_pool(store, "p", judge_for(server, timeout_s=0.3, max_retries=6, max_completion_tokens=512),
                       select="all", concurrency=8, limits=limits, circuit_breaker=50, progress=False)
    time.sleep(0.6)  # slow answers still being generated are billed too
    spent = store.budget_spent()
    assert spent["labels"] <= 45 and spent["tokens"] <= 400_000
    assert spent["tokens"] >= server.billed_tokens  # whatever the server billed is in the ledger
    assert s.stopped_because == "budget" and s.labeled + s.failed == s.requested
    assert sum(server.injected.values()) >= 0.15 * server.requests  # the faults did happen
    # no paid label lost: every good answer the server sent is a stored label, each paid once
    labeled = labeled_rows(store)
    good_answers = sum(server.answered.values())
    assert good_answers == len(labeled) == s.labeled
    questions = dict(store.sql("SELECT id, question FROM trajectories").fetchall())
    assert all(server.answered[questions[t]] == 1 for t in labeled)
    # every requested trajectory ends labeled or failed with a reason
    rows = store.sql("SELECT status, reason FROM judge_labels").fetchall()
    assert len(rows) == s.requested and all(st == "labeled" or reason for st, reason in rows)
    assert store.ledger_consistency()["settled_without_label"] == 0
    assert store.ledger_consistency()["label_without_settled"] == 0
    assert set(labeled) <= set(ids)


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from actprm.judges import build_judge
    from actprm.store import Store
    from tasks.label import label_pool
    with Store({db!r}) as store:
        judge = build_judge("openai", url={url!r}, model="local-judge", api_key="k", base_delay=0.01)
        label_pool(store, "p", judge, select="all", concurrency=4, progress=False)
""")


def test_kill_9_mid_run_loses_nothing_and_rerun_pays_only_the_rest(tmp_path):
    db = tmp_path / "actprm.duckdb"
    with Store(db) as store:
        ids = synth_pool(store, "p", 80)
    with JudgeServer(latency_s=0.05) as server:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # keep what it held
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), db=str(db), url=server.url)],
                                 env={**os.environ, "PYTHONPATH": path})
        deadline = time.monotonic() + 60
        while server.requests < 25 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        time.sleep(0.1)  # mid-run: some labels committed, some requests in flight
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        with Store(db) as store:
            before = store.ledger_consistency()
            n_before = len(labeled_rows(store))
            assert before["settled_without_label"] == 0 and before["label_without_settled"] == 0
            assert 0 < n_before < 80
            labeled_before = set(labeled_rows(store))
            questions = dict(store.sql("SELECT id, question FROM trajectories").fetchall())
            s = label_pool(store, "p", judge_for(server), select="all", concurrency=4, progress=False)
            after = store.ledger_consistency()
            assert s.cached == n_before and s.labeled == 80 - n_before and len(labeled_rows(store)) == 80
            paid = store.sql("SELECT count(*) FROM budget_ledger WHERE state = 'settled' AND labels = 1").fetchone()[0]
            assert paid == 80  # no double payment
            assert after["settled_without_label"] == 0 and after["label_without_settled"] == 0
            assert after["states"].get("reserved", 0) == 0
            assert s.orphaned_reservations == before["states"].get("reserved", 0)
    # a trajectory labeled before the kill was answered (paid) exactly once; only answers in flight at
    # the kill (their reservations orphaned, counted as spent) may have been asked again
    assert all(server.answered[questions[t]] == 1 for t in labeled_before)
    assert all(server.answered[questions[t]] >= 1 for t in ids)
    assert sum(server.answered.values()) - 80 <= s.orphaned_reservations


def test_api_key_never_reaches_logs_mlflow_or_the_store(tmp_path, caplog, monkeypatch):
    import mlflow

    caplog.set_level(logging.DEBUG)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # An earlier test may have set MLflow's process-wide URI, which wins over the environment.
    mlflow.set_tracking_uri(uri)
    with Store(tmp_path / "actprm.duckdb") as store:
        synth_pool(store, "p", 8)
        with JudgeServer(api_key=KEY, script=["malformed"]) as server:
            judge = judge_for(server)
            s = label_pool(store, "p", judge, select="all", concurrency=2, progress=False)
        mlflow.set_experiment("label-test")
        with mlflow.start_run():
            mlflow.log_params({"judge": repr(judge), "url": server.url})
            assert log_labeling_to_mlflow(s)
            run = mlflow.active_run().info
        store.sql("CHECKPOINT")
    assert s.labeled == 8
    client = mlflow.MlflowClient()
    data = client.get_run(run.run_id).data
    assert data.metrics["labels_bought"] == 8 and data.metrics["judge_first_error_accuracy"] == 1.0
    assert "judge_latency_p99_s" in data.metrics and data.metrics["judge_parse_failure_rate"] == 0.0
    assert any(k.startswith("judge_accuracy_") for k in data.metrics)  # per error_kind
    artifacts = Path(run.artifact_uri.replace("file://", ""))
    texts = [p.read_text() for p in artifacts.rglob("*") if p.is_file()]
    assert texts and any("paragraph_0" in t for t in texts)  # the prompt sample table is there
    assert all(KEY not in t for t in texts)
    assert KEY not in json.dumps(data.params) and KEY not in caplog.text and KEY not in repr(judge)
    assert KEY.encode() not in (tmp_path / "actprm.duckdb").read_bytes()
    assert KEY.encode() not in (tmp_path / "mlflow.db").read_bytes()


# -- a judge that is down: bounded time, a non-zero exit, a documented charge, nothing bought twice ---------------

ACTPRM = shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"


def label_cli(home: Path, server: JudgeServer, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`actprm label` as a user runs it: the real console script, its (ephemeral) Prefect flow and MLflow store."""
    environment = {**os.environ, "ACTPRM_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
                   "ACTPRM_JUDGE_API_KEY": KEY, **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([ACTPRM, "label", "--pool", "p", "--select", "all", "--judge", "openai", "--judge-url",
                           server.url, "--judge-model", "local-judge", "--json", *args],
                          capture_output=True, text=True, env=environment, timeout=300)


def test_a_never_answering_judge_stops_at_the_deadline_with_a_non_zero_exit(tmp_path):
    """The audit's hung judge (accepts TCP, never answers) ran 18.3 minutes and exited 0. With a 120 s request
    timeout and a breaker it cannot reach, only the run's deadline can stop it: the command exits 1 with one line
    well before a single request could have timed out, and every abandoned request is charged by the rule."""
    home = tmp_path / "home"
    home.mkdir()
    with Store(home / "actprm.duckdb") as store:
        synth_pool(store, "p", 12)
    env = {"ACTPRM_JUDGE__TIMEOUT_S": "120", "ACTPRM_JUDGE__CIRCUIT_BREAKER": "1000",
           "ACTPRM_JUDGE__CONCURRENCY": "3", "ACTPRM_JUDGE__UNANSWERED_CHARGE": "prompt"}
    with JudgeServer(script=["hang"] * 100) as server:
        t0 = time.monotonic()
        proc = label_cli(home, server, "--deadline", "3", env=env)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert error["type"] == "JudgeDown" and "deadline" in error["error"]
    assert elapsed < 120  # no request timed out: the deadline ended the run (CLI and Prefect start-up included)
    assert server.requests == 3  # the three in flight; nothing sent after the deadline
    with Store(home / "actprm.duckdb") as store:
        ledger = store.sql("SELECT state, tokens FROM budget_ledger").fetchall()
        rows = store.sql("SELECT status, reason FROM judge_labels").fetchall()
        prompts = [t["question"] for t in store.trajectories(store.pool_trajectory_ids("p"))]
    assert {state for state, _ in ledger} == {"maybe_billed"} and len(ledger) == 3
    # unanswered_charge=prompt: each abandoned request costs its prompt's bound, not the 4,096 completion tokens
    assert all(tokens < 4096 for _, tokens in ledger)
    assert rows == [("failed", "abandoned")] * 3 and len(prompts) == 12


def test_a_judge_answering_garbage_exits_non_zero_through_the_cli(tmp_path):
    """Every answer unparseable: the run bought nothing, and says so with exit 1 instead of "done"."""
    home = tmp_path / "home"
    home.mkdir()
    with Store(home / "actprm.duckdb") as store:
        synth_pool(store, "p", 4)
    with JudgeServer(script=["malformed"] * 100) as server:
        proc = label_cli(home, server, env={"ACTPRM_JUDGE__MAX_PARSE_RETRIES": "0"})  # fewer than a wave of 5
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert error["type"] == "JudgeDown" and "every request to the judge failed" in error["error"]
    with Store(home / "actprm.duckdb") as store:
        n = len(store.pool_trajectory_ids("p", split="train"))  # the flow holds out an eval split first
        assert store.sql("SELECT count(*), sum(labels) FROM budget_ledger WHERE state = 'settled'").fetchone() == (n, 0)
    assert f"no_boxed {n}" in error["error"] and f"error: {error['error']}" in proc.stderr.splitlines()
    assert server.requests == n  # each trajectory asked once, then failed: paid, and recorded


def test_the_breaker_counts_requests_as_they_fail_and_abandons_the_rest(store):
    """Counted per trajectory, a hung judge cost (re-asks + 1) timeouts per trajectory before one failure counted,
    and 20 of them; counted per request, the first wave of timeouts (all 6 in flight, under the default breaker of
    20) opens the breaker and nothing more is sent."""
    synth_pool(store, "p", 30)
    with JudgeServer(script=["hang"] * 100) as server:
        judge = judge_for(server, timeout_s=0.5)
        s = label_pool(store, "p", judge, select="all", concurrency=6, max_parse_retries=2, progress=False)
    assert s.stopped_because == "circuit_open" and s.labeled == 0
    assert s.requested == 6 and server.requests < 12  # no trajectory reached its third ask
    assert isinstance(judge_down(s), CircuitOpen) and "circuit breaker" in str(judge_down(s))
    assert store.ledger_consistency()["states"].get("reserved", 0) == 0  # every request settled one way or another


@pytest.mark.parametrize("rule", ["worst_case", "prompt"])
def test_an_unanswered_request_is_charged_by_the_rule(store, rule):
    ids = synth_pool(store, "p", 1)
    with JudgeServer(script=["hang", None]) as server:
        judge = judge_for(server, timeout_s=0.3, max_completion_tokens=2048)
        s = label_ids(store, ids, judge, pool="p", concurrency=1, unanswered_charge=rule,
                      limits=BudgetLimits(price_per_1k_tokens=1.0), progress=False)
    assert s.labeled == 1 and s.maybe_billed == 1
    (tokens, cost), = store.sql("SELECT tokens, cost FROM budget_ledger WHERE state = 'maybe_billed'").fetchall()
    question = store.trajectories(ids)[0]
    prompt_bound = max_prompt_tokens(judge.prompt(JudgeRequest(ids[0], question["question"], question["steps"])))
    assert tokens == (prompt_bound + 2048 if rule == "worst_case" else prompt_bound)
    assert cost == pytest.approx(tokens / 1000)


def test_a_run_cut_by_its_deadline_keeps_its_labels_and_its_rerun_buys_none_twice(store):
    ids = synth_pool(store, "p", 10)
    with JudgeServer(script=[None] * 4 + ["hang"] * 100) as server:
        first = label_ids(store, ids, judge_for(server, timeout_s=60), pool="p", concurrency=1, run_deadline_s=1.5,
                          progress=False)
        first_answers = Counter(server.answered)
    assert first.stopped_because == "deadline" and first.labeled == 4 and isinstance(judge_down(first), JudgeDown)
    with JudgeServer() as healthy:
        second = label_ids(store, ids, judge_for(healthy), pool="p", concurrency=3, progress=False)
    assert (second.cached, second.labeled, second.stopped_because) == (4, 6, "done") and judge_down(second) is None
    questions = {t["id"]: t["question"] for t in store.trajectories(ids)}
    bought = first_answers + healthy.answered
    assert all(bought[questions[t]] == 1 for t in ids)  # every label paid for exactly once across both runs
    assert store.sql("SELECT count(*) FROM budget_ledger WHERE labels = 1").fetchone()[0] == 10


# -- reasoning judges (issue #40 item 5) --------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["think", "reasoning_content", "reasoning"])
@pytest.mark.parametrize("prompt_version", ["processbench", "actprm"])
def test_a_reasoning_judge_is_read_outside_its_reasoning_and_a_truncation_is_not_rebought(store, style,
                                                                                            prompt_version):
    """A QwQ-like server thinks for ~20k characters (quoting a wrong box and a `</think>` on the way), in the
    content or apart as `reasoning_content`, and cuts one reply at the completion limit. Every other answer is
    read right; the cut one is a failure of its own kind, paid once, and asked again only under a larger limit."""
    ids = synth_pool(store, "p", 6)
    with JudgeServer(style=style, script=[None, "truncated"] + [None] * 10) as server:
        judge = judge_for(server, model="Qwen/QwQ-32B", prompt_version=prompt_version, max_completion_tokens=8000)
        s = label_ids(store, ids, judge, pool="p", concurrency=1, progress=False)
        payload = server.last_payload
        again = label_ids(store, ids, judge, pool="p", concurrency=1, progress=False)  # same limit: nothing to buy
        asked_before_raise = server.requests
        larger = judge_for(server, model="Qwen/QwQ-32B", prompt_version=prompt_version, max_completion_tokens=16000)
        raised = label_ids(store, ids, larger, pool="p", concurrency=1, progress=False)
    assert (s.labeled, s.failed, s.failures_by_reason, s.stopped_because) == (5, 1, {"truncated": 1}, "done")
    gold = dict(store.sql("SELECT trajectory_id, first_error FROM gold_labels").fetchall())
    assert labeled_rows(store) == {t: gold[t] for t in ids}  # the 5, then the re-asked one, all read right
    assert s.requested == 6 and asked_before_raise == 6  # the truncated reply was not re-asked, by either run
    assert (again.requested, again.skipped_truncated, again.cached) == (0, 1, 5)
    assert (raised.requested, raised.labeled) == (1, 1) and server.requests == 7
    # what a truncation costs: the prompt and every completion token it was allowed, as the server billed it
    (cut,) = store.sql("SELECT tokens FROM budget_ledger WHERE state = 'settled' AND labels = 0").fetchone()
    assert cut >= 8000 and store.budget_spent("p")["tokens"] >= server.billed_tokens
    # the reasoning family's sampling (ActivePRM's released judge: temperature 0.5, top_p 0.95)
    assert (payload["temperature"], payload["top_p"], payload["max_completion_tokens"]) == (0.5, 0.95, 8000)
    assert store.sql("SELECT DISTINCT prompt_version FROM judge_labels").fetchall() == [(judge.prompt_version,)]


def test_the_loop_stops_with_the_judge_down_instead_of_nothing_to_train(actprm_home, prefect_harness):
    """`actprm run` against a judge answering garbage said "nothing_to_train" and exited 0: its flow now stops
    with the judge's reason, which the command turns into exit 1 (tasks.label.loop_judge_down)."""
    import flows.active_learning as loop
    from actprm.config import load_settings

    with JudgeServer(script=["malformed"] * 500) as server:
        config = {"synth": {"n": 60}, "model": {"num_heads": 4}, "train": {"epochs": 1},
                  "judge": {"backend": "openai", "url": server.url, "model": "local-judge", "concurrency": 4,
                            "max_parse_retries": 0}}
        summary = loop.active_learning(pool="sample", rounds=2, labels_per_round=20, preset="tiny", config=config)
    assert summary["stopped_because"] == "circuit_open" and [r["round"] for r in summary["rounds"]] == [1]
    assert server.requests < 20  # the breaker stopped the round's batch after a wave of garbage
    error = loop_judge_down(summary)
    assert isinstance(error, CircuitOpen) and "round 1" in str(error) and "0 labels bought" in str(error)
    with Store(load_settings().duckdb_path, read_only=True) as store:
        assert store.sql("SELECT count(*) FROM judge_labels WHERE status = 'labeled'").fetchone()[0] == 0
