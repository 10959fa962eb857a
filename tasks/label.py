"""Stage: label — buy first-error labels from a judge under a hard budget, losing and double-paying none.

Each trajectory's request reserves its worst-case cost in the ledger before it is sent, and its label
is committed together with the ledger settlement the moment it arrives. A request sent and never
answered (a timeout) may still be billed: it stays spent by the `unanswered_charge` rule (its worst
case by default) and any re-ask reserves anew, so a cap holds against what the judge bills. The
judge_labels key (trajectory, judge model, prompt version) is the cache, so a rerun (even after kill -9)
pays only for what is still missing. All DuckDB writes happen on the event-loop thread through one
connection. The run stops for the judge's health (breaker, deadline, every request failed) with every
label kept; `judge_down` turns that stop into the error the commands exit with (docs/JUDGES.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from tqdm.auto import tqdm

from actprm.errors import ActPRMError, CircuitOpen, JudgeDown
from actprm.judges.base import Judge, JudgeFatalError, JudgeReply, JudgeRequest, JudgeUnavailable, redact
from actprm.judges.budget import Budget, BudgetLimits, Reservation
from actprm.judges.prompt import RAW_ANSWER_CHARS, max_prompt_tokens, parse_answer
from actprm.runlog import stage_logger
from actprm.store import Store

log = logging.getLogger(__name__)

SAMPLE_ROWS = 20  # prompts/answers kept for the MLflow sample table
UNANSWERED_CHARGES = ("worst_case", "prompt")  # judge.unanswered_charge, see _Run._unanswered_tokens
WAVE_MIN = 5  # the fewest failed requests in a row that count as a failed wave (see alabel_ids)


@dataclass
class LabelSummary:
    pool: str
    judge_model: str
    prompt_version: str
    requested: int = 0          # trajectories sent to the judge in this run
    labeled: int = 0
    failed: int = 0
    cached: int = 0             # already labeled by this judge and prompt: not requested again
    tokens: int = 0             # judge tokens billed in this run (prompt + completion), unanswered ones at worst case
    cost: float = 0.0
    maybe_billed: int = 0       # requests sent but never answered (timeouts): counted as spent at worst case
    budget_left: dict = field(default_factory=dict)
    # done, budget; or, for the judge's health (see `judge_down`): circuit_open, judge_failed (every request
    # failed), deadline (judge.run_deadline_s passed)
    stopped_because: Literal["done", "budget", "circuit_open", "judge_failed", "deadline"] = "done"
    skipped_truncated: int = 0  # failed as truncated under a completion limit no larger than this judge's: not re-asked
    orphaned_reservations: int = 0  # left by a crashed earlier run, counted as spent
    latency_p50: float | None = None
    latency_p90: float | None = None
    latency_p99: float | None = None
    failures_by_reason: dict = field(default_factory=dict)
    quality: dict | None = None  # judge vs gold, where the pool has gold labels
    round: int | None = None
    samples: list = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


class _Run:
    """One labeling run's shared state (all touched from the event-loop thread only)."""

    def __init__(self, store: Store, pool: str, judge: Judge, limits: BudgetLimits, circuit_breaker: int,
                 max_parse_retries: int, summary: LabelSummary, bar, unanswered_charge: str = "worst_case"):
        self.store, self.pool, self.judge, self.limits = store, pool, judge, limits
        self.circuit_breaker, self.max_parse_retries = circuit_breaker, max_parse_retries
        self.unanswered_charge = unanswered_charge
        self.summary, self.bar = summary, bar
        self.budget = Budget(store, pool, limits)
        summary.orphaned_reservations = self.budget.orphaned
        self.stop: str | None = None
        # Set with `stop` when the run must end now (circuit open, deadline, fatal): requests in flight are
        # abandoned instead of waited for, so a hung judge cannot hold the run for another timeout.
        self.halt = asyncio.Event()
        self.fatal: JudgeFatalError | None = None
        self.crash: tuple[str, Exception] | None = None  # the first unexpected error, with its trajectory
        self.consecutive_failures = 0
        self.latencies: list[float] = []
        self.failures: Counter = Counter()
        self.failed_before: set[str] = set()  # trajectories whose failed row from an earlier run is replaced

    def halt_run(self, reason: str) -> None:
        self.stop = self.stop or reason
        self.halt.set()

    def _label_row(self, req: JudgeRequest, status: str, first_error: int | None, reason: str | None,
                   raw: str | None, prompt_tokens: int, completion_tokens: int, cost: float, attempts: int,
                   latency: float) -> dict:
        return {"trajectory_id": req.trajectory_id, "judge_model": self.judge.model,
                "prompt_version": self.judge.prompt_version, "pool": self.pool, "status": status,
                "first_error": first_error, "reason": reason,
                "raw_answer": redact(raw)[:RAW_ANSWER_CHARS] if raw else None,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost": cost,
                "attempts": attempts, "latency_s": latency, "replaces": req.trajectory_id in self.failed_before}

    def _request_failed(self) -> None:
        """The breaker counts every failed request as it fails (a timeout, an error, an unusable answer), re-asks
        included, not trajectories once their re-asks are spent: with a hung judge, the requests in flight time out
        together and open it after one timeout, where counting trajectories took (re-asks + 1) timeouts each."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.circuit_breaker:
            self.halt_run("circuit_open")

    def _count(self, ok: bool, reason: str | None = None) -> None:
        if ok:
            self.summary.labeled += 1
            self.consecutive_failures = 0
        else:
            self.summary.failed += 1
            self.failures[reason] += 1
        if self.bar is not None:
            self.bar.update(1)

    async def _ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        """The judge's answer, or JudgeUnavailable('abandoned', maybe_billed) when the run halts first."""
        answer = asyncio.ensure_future(self.judge.ask(req, prompt))
        halted = asyncio.ensure_future(self.halt.wait())
        try:
            await asyncio.wait({answer, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
        if not answer.done():
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await answer
            raise JudgeUnavailable("abandoned", detail=f"the run stopped ({self.stop})", maybe_billed=True)
        return answer.result()

    def _unanswered_tokens(self, prompt: str, r: Reservation) -> int:
        """What a request sent and never answered is charged (`judge.unanswered_charge`): its worst case, or the
        prompt's upper bound only, for servers that stop generating when the client hangs up."""
        return r.tokens if self.unanswered_charge == "worst_case" else min(r.tokens, max_prompt_tokens(prompt))

    async def label_one(self, req: JudgeRequest) -> None:
        prompt = self.judge.prompt(req)
        worst = self.judge.max_request_tokens(prompt)
        t0 = time.monotonic()
        p_tok = c_tok = attempts = 0
        cost = 0.0
        last_reason: str | None = None   # why the previous (paid) ask gave no label
        for ask in range(self.max_parse_retries + 1):
            r: Reservation | None = None if self.stop else await self.budget.reserve(req.trajectory_id, worst)
            if r is not None and self.stop:  # the run halted while this waited for budget: send nothing
                await self.budget.release(r)
                r = None
            if r is None:
                self.stop = self.stop or "budget"
                if ask > 0:  # paid for asks that gave no label, then the run stopped: record why it has none
                    reason = "budget_exhausted" if self.stop == "budget" else last_reason
                    await self.budget.record_failure(self._label_row(req, "failed", None, reason, None,
                                                                     p_tok, c_tok, cost, attempts, time.monotonic() - t0))
                    self._count(False, reason)
                return
            if ask == 0:
                self.summary.requested += 1
            # Interrupted here (cancel, kill -9), the reservation stays and the next run counts it as spent.
            try:
                reply: JudgeReply = await self._ask(req, prompt)
            except JudgeUnavailable as exc:
                attempts += exc.attempts
                last_reason = exc.reason
                charged = 0
                if exc.maybe_billed:  # sent, never answered: charged by the unanswered rule
                    charged = self._unanswered_tokens(prompt, r)
                    charged_cost = self.limits.cost(charged) if charged != r.tokens else r.cost
                    cost += charged_cost
                    self.summary.cost += charged_cost
                    self.summary.tokens += charged
                    self.summary.maybe_billed += 1
                if exc.reason != "abandoned":
                    self._request_failed()
                last = not exc.maybe_billed or ask == self.max_parse_retries or self.stop is not None
                row = self._label_row(req, "failed", None, exc.reason, None, p_tok, c_tok, cost, attempts,
                                      time.monotonic() - t0) if last else None
                if exc.maybe_billed:
                    await self.budget.keep(r, tokens=charged, label=row)
                else:
                    await self.budget.release(r, label=row)
                if last:
                    self._count(False, exc.reason)
                    return
                await asyncio.sleep(self.judge.reask_delay(ask))
                continue
            except JudgeFatalError as exc:  # the endpoint refuses us: nothing bought, stop the run
                await self.budget.release(r)
                self.fatal = self.fatal or exc
                self.halt_run("fatal")
                return
            attempts += reply.attempts
            req_cost = self.limits.cost(reply.tokens)
            p_tok, c_tok, cost = p_tok + reply.prompt_tokens, c_tok + reply.completion_tokens, cost + req_cost
            self.summary.tokens += reply.tokens
            self.summary.cost += req_cost
            parsed = parse_answer(reply.text, len(req.steps), finish_reason=reply.finish_reason,
                                  structured=self.judge.structured_output, reasoning=reply.reasoning,
                                  rule=self.judge.template.answer_rule)
            latency = time.monotonic() - t0
            if not parsed.ok:
                last_reason = parsed.reason
                self._request_failed()
            # A truncated answer is final: asked again under the same completion limit it would most likely be cut
            # again and paid twice; a later run re-asks it only with a larger limit (see `alabel_ids`).
            final = parsed.ok or parsed.reason == "truncated" or ask == self.max_parse_retries or self.stop is not None
            if final:
                status = "labeled" if parsed.ok else "failed"
                row = self._label_row(req, status, parsed.first_error, parsed.reason, reply.text, p_tok, c_tok,
                                      cost, attempts, latency)
                await self.budget.settle(r, labels=int(parsed.ok), tokens=reply.tokens, cost=req_cost, label=row)
                self.latencies.append(latency)
                self._sample(req, prompt, reply.text, parsed.first_error, status, parsed.reason)
                self._count(parsed.ok, parsed.reason)
                return
            # Unparseable: this answer is paid for, then the judge is asked again
            # (`max_parse_retries` bounds every re-ask after a paid request that gave no label).
            await self.budget.settle(r, labels=0, tokens=reply.tokens, cost=req_cost)

    def _sample(self, req, prompt, answer, first_error, status, reason) -> None:
        if len(self.summary.samples) < SAMPLE_ROWS:
            self.summary.samples.append({
                "trajectory_id": req.trajectory_id, "prompt": redact(prompt)[:RAW_ANSWER_CHARS],
                "answer": redact(answer or "")[:RAW_ANSWER_CHARS], "first_error": first_error,
                "gold_first_error": req.gold_first_error, "status": status, "reason": reason})

    async def worker(self, queue: asyncio.Queue) -> None:
        while self.stop is None:
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self.label_one(req)
            except Exception as exc:  # noqa: BLE001 - a bug or a reply nobody foresaw: stop, keep what is paid for
                # The other workers finish the requests they have in flight and commit their labels before the
                # run raises this; the request that failed keeps its reservation, which the next run counts as
                # spent (an orphan), so nothing is bought twice and no cap is overrun.
                self.crash = self.crash or (req.trajectory_id, exc)
                self.stop = self.stop or "error"


async def alabel_ids(store: Store, ids: list[str], judge: Judge, *, pool: str, limits: BudgetLimits | None = None,
                     concurrency: int = 16, max_requests: int | None = None, max_parse_retries: int = 2,
                     circuit_breaker: int = 20, progress: bool = True, round: int | None = None,
                     close_judge: bool = True, run_deadline_s: float | None = None,
                     unanswered_charge: str = "worst_case") -> LabelSummary:
    """Label the trajectories `ids` (in this order of priority) of `pool`; see `label_ids`."""
    if concurrency < 1:
        raise ActPRMError(f"judge concurrency must be >= 1 (got {concurrency})")
    if circuit_breaker < 1:
        raise ActPRMError(f"judge circuit_breaker must be >= 1 (got {circuit_breaker})")
    if run_deadline_s is not None and not run_deadline_s > 0:  # NaN fails this too
        raise ActPRMError(f"judge run_deadline_s must be a positive number of seconds (got {run_deadline_s})")
    if unanswered_charge not in UNANSWERED_CHARGES:
        raise ActPRMError(f"unknown judge unanswered_charge {unanswered_charge!r}; choose one of: "
                          f"{', '.join(UNANSWERED_CHARGES)}")
    limits = limits or BudgetLimits()
    summary = LabelSummary(pool=pool, judge_model=judge.model, prompt_version=judge.prompt_version, round=round)
    ids = list(dict.fromkeys(ids))  # first occurrence wins: the caller's priority order
    status = store.judge_label_status(ids, judge.model, judge.prompt_version)
    summary.cached = sum(1 for s in status.values() if s == "labeled")
    # A truncated answer is re-asked only by a run that allows more completion tokens than it was cut at:
    # under the same limit it would be cut (and paid) again.
    cut_at = store.judge_label_truncations([i for i, s in status.items() if s == "failed"], judge.model,
                                           judge.prompt_version)
    summary.skipped_truncated = sum(1 for t in cut_at.values() if t >= judge.max_completion_tokens)
    todo = [i for i in ids if status.get(i) != "labeled" and cut_at.get(i, -1) < judge.max_completion_tokens]
    if max_requests is not None:
        todo = todo[:max(0, max_requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for t in store.trajectories(todo):
        queue.put_nowait(JudgeRequest(t["id"], t["question"], t["steps"], t["gold_first_error"], t["error_kind"]))
    bar = tqdm(total=queue.qsize(), desc=f"label {pool}", unit="traj", disable=not progress)
    workers = min(concurrency, max(1, queue.qsize()))
    # A whole wave of failures in a row also opens the breaker: when every request in flight timed out together,
    # waiting for `circuit_breaker` of them would cost another timeout_s per wave (10 minutes for a reasoning
    # judge's default). Never below WAVE_MIN, so a run of one or two workers is not stopped by one bad answer.
    breaker = min(circuit_breaker, max(workers, WAVE_MIN))
    run = _Run(store, pool, judge, limits, breaker, max_parse_retries, summary, bar, unanswered_charge)
    run.failed_before = {i for i, s in status.items() if s == "failed"}
    deadline = (asyncio.get_running_loop().call_later(run_deadline_s, run.halt_run, "deadline")
                if run_deadline_s is not None else None)
    try:
        await asyncio.gather(*(run.worker(queue) for _ in range(workers)))
    finally:
        if deadline is not None:
            deadline.cancel()
        bar.close()
        await run.budget.aclose()
        if close_judge:
            await judge.aclose()
    if run.fatal is not None:
        raise run.fatal
    if run.crash is not None:
        trajectory_id, exc = run.crash
        raise ActPRMError(f"labeling stopped at trajectory {trajectory_id} with judge {judge.model}: "
                          f"{type(exc).__name__}: {redact(str(exc)).splitlines()[0] if str(exc) else ''} "
                          f"({summary.labeled} labels bought before it are kept)") from exc
    summary.stopped_because = run.stop or "done"  # type: ignore[assignment]
    if summary.stopped_because == "done" and summary.failed and not summary.labeled:
        summary.stopped_because = "judge_failed"  # every request failed: not "done", whatever the reasons
    summary.failures_by_reason = dict(run.failures)
    summary.latency_p50, summary.latency_p90, summary.latency_p99 = (
        _percentile(run.latencies, q) for q in (50, 90, 99))
    summary.budget_left = run.budget.left()
    summary.quality = store.judge_label_quality(pool, judge.model, judge.prompt_version)
    log.info("labeled %d, failed %d, cached %d in pool %s (stopped: %s)", summary.labeled, summary.failed,
             summary.cached, pool, summary.stopped_because)
    return summary


def label_ids(store: Store, ids: list[str], judge: Judge, *, pool: str, limits: BudgetLimits | None = None,
              concurrency: int = 16, max_requests: int | None = None, max_parse_retries: int = 2,
              circuit_breaker: int = 20, progress: bool = True, round: int | None = None,
              run_deadline_s: float | None = None, unanswered_charge: str = "worst_case") -> LabelSummary:
    """Label an explicit list of trajectory ids (the active-learning flow selects first, then labels).

    Already-labeled ids are counted as `cached` and not requested. Stops early, keeping every label
    bought, when the budget is spent (stopped_because="budget"), after `circuit_breaker` consecutive
    failed requests or a whole wave of them (as many as run at once, at least WAVE_MIN: "circuit_open") or at
    `run_deadline_s` ("deadline", requests in flight abandoned);
    "judge_failed" when every request failed. A 401/403/404 raises JudgeFatalError (an ActPRMError).
    `judge_down(summary)` turns the judge's-health stops into an error for the commands to raise.
    """
    return asyncio.run(alabel_ids(store, ids, judge, pool=pool, limits=limits, concurrency=concurrency,
                                  max_requests=max_requests, max_parse_retries=max_parse_retries,
                                  circuit_breaker=circuit_breaker, progress=progress, round=round,
                                  run_deadline_s=run_deadline_s, unanswered_charge=unanswered_charge))


JUDGE_DOWN_STOPS = ("circuit_open", "judge_failed", "deadline")


def judge_down(summary: dict | LabelSummary) -> JudgeDown | None:
    """The error a command exits with when labeling stopped for the judge's health (None otherwise), so a script
    can tell "done" (or "budget spent") from "judge down"; every label bought is kept either way."""
    s = summary.as_dict() if isinstance(summary, LabelSummary) else summary
    stop = s.get("stopped_because")
    if stop not in JUDGE_DOWN_STOPS:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted((s.get("failures_by_reason") or {}).items())) or "none"
    what = {"circuit_open": "the circuit breaker opened (too many consecutive failed requests)",
            "judge_failed": "every request to the judge failed",
            "deadline": "the run's deadline (judge.run_deadline_s) passed"}[stop]
    message = (f"labeling pool {s.get('pool')!r} stopped: {what}; {s.get('labeled', 0)} labels bought and kept, "
               f"{s.get('failed', 0)} failed (by reason: {reasons}), {s.get('maybe_billed', 0)} unanswered requests "
               f"charged, {s.get('tokens', 0)} tokens spent")
    return (CircuitOpen if stop == "circuit_open" else JudgeDown)(message)


def select_for_labeling(store: Store, pool: str, select: str = "uncertain", *, model_version: str | None = None,
                        seed: int = 0) -> list[str]:
    """The pool's train trajectories in the order they should be labeled: uncertain ones by acquisition
    (from the latest scoring of `model_version`), a seeded random order, or all in pool order."""
    store.require_pool(pool)
    if select == "all":
        return store.pool_trajectory_ids(pool, split="train")
    if select == "random":
        ids = store.pool_trajectory_ids(pool, split="train")
        random.Random(seed).shuffle(ids)
        return ids
    if select == "uncertain":
        version = model_version or store.latest_scored_model_version(pool)
        if version is None:
            raise ActPRMError(f"pool {pool!r} has no scores yet; run `actprm score` first or use select='random'")
        return store.rank_for_labeling(pool, version, split="train")
    raise ActPRMError(f"unknown selection {select!r}; choose one of: uncertain, random, all")


def loop_judge_down(summary: dict) -> JudgeDown | None:
    """`judge_down` for the active-learning loop's summary: its stop, with the rounds it finished."""
    stop = summary.get("stopped_because")
    if stop not in JUDGE_DOWN_STOPS:
        return None
    rounds = summary.get("rounds") or []
    bought = sum(r.get("labels_bought") or 0 for r in rounds)
    what = {"circuit_open": "the judge's circuit breaker opened", "judge_failed": "every request to the judge failed",
            "deadline": "the labeling deadline (judge.run_deadline_s) passed"}[stop]
    return (CircuitOpen if stop == "circuit_open" else JudgeDown)(
        f"the active-learning loop on pool {summary.get('pool')!r} stopped in round {len(rounds)}: {what}; "
        f"{bought} labels bought and the rounds finished are kept")


def label_pool(store: Store, pool: str, judge: Judge, *, select: str = "uncertain", model_version: str | None = None,
               seed: int = 0, **options) -> LabelSummary:
    """Label the not-yet-labeled train trajectories of `pool` picked by `select`; `options` as `label_ids`."""
    ids = select_for_labeling(store, pool, select, model_version=model_version, seed=seed)
    return label_ids(store, ids, judge, pool=pool, **options)


def log_labeling_to_mlflow(summary: LabelSummary, sample_rows: list[dict] | None = None) -> bool:
    """Log a labeling run to the active MLflow run (if any): labels bought, tokens, cost, failures by
    reason, latency percentiles, a sample of prompts/answers and the label-quality report. Returns
    whether anything was logged."""
    import mlflow

    if mlflow.active_run() is None:
        return False
    prefix = "label" if summary.round is None else f"label_round{summary.round}"
    metrics = {"labels_bought": summary.labeled, "label_failed": summary.failed, "label_cached": summary.cached,
               "judge_tokens": summary.tokens, "judge_cost": summary.cost, "judge_maybe_billed": summary.maybe_billed}
    for q in ("p50", "p90", "p99"):
        value = getattr(summary, f"latency_{q}")
        if value is not None:
            metrics[f"judge_latency_{q}_s"] = value
    for reason, n in summary.failures_by_reason.items():
        metrics[f"judge_failures_{reason}"] = n
    quality = summary.quality or {}
    if quality.get("accuracy") is not None:
        metrics["judge_first_error_accuracy"] = quality["accuracy"]
    if quality:
        metrics["judge_parse_failure_rate"] = quality["parse_failure_rate"]
        for kind, q in quality["per_error_kind"].items():
            if q["accuracy"] is not None:
                metrics[f"judge_accuracy_{kind}"] = q["accuracy"]
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=summary.round or 0)
    rows = sample_rows if sample_rows is not None else summary.samples
    if rows:
        cols = sorted({k for r in rows for k in r})
        table = {c: [redact(str(r.get(c))) if isinstance(r.get(c), str) else r.get(c) for r in rows] for c in cols}
        mlflow.log_table(table, artifact_file=f"{prefix}/sample.json")
    mlflow.log_dict(summary.as_dict(), f"{prefix}/summary.json")  # includes the label-quality report
    return True


def label_round(settings, pool: str, ids: list[str] | None, run_id: str | None = None, *, round: int | None = None,
                select: str = "uncertain") -> LabelSummary:
    """Loop stage: buy labels for `ids` (or the pool's trajectories picked by `select`) under the
    configured judge and budget, logging what was bought to the round's MLflow run."""
    from actprm.judges import build_judge, judge_kwargs_from_settings
    from actprm.judges.budget import BudgetLimits
    from actprm.tracking import logging_into

    judge = build_judge(settings.judge.backend, **judge_kwargs_from_settings(settings))
    limits = BudgetLimits.from_settings(settings.budget)
    j = settings.judge
    common = dict(limits=limits, concurrency=j.concurrency, max_parse_retries=j.max_parse_retries,
                  circuit_breaker=j.circuit_breaker, round=round, run_deadline_s=j.run_deadline_s,
                  unanswered_charge=j.unanswered_charge)
    with Store(settings.duckdb_path) as store:
        if ids is None:
            summary = label_pool(store, pool, judge, select=select, seed=settings.train.seed, **common)
        else:
            summary = label_ids(store, ids, judge, pool=pool, **common)
    with logging_into(run_id, settings.tracking_uri):
        log_labeling_to_mlflow(summary)
    stage_logger().info("label %s: %d labels bought from %s, %d from the cache, %d failed, cost %.4f (%s)", pool,
                        summary.labeled, summary.judge_model, summary.cached, summary.failed, summary.cost,
                        summary.stopped_because)
    return summary
