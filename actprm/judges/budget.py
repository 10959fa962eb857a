"""Hard caps on what labeling may spend: labels, judge tokens (prompt + completion) and money,
globally and per pool, backed by the DuckDB `budget_ledger`.

Every request reserves its worst case (prompt upper bound + max completion tokens) before it is
sent, so however many requests are in flight the caps can never be overspent; the actual usage
replaces the reservation when the answer is committed. A request that was sent but never answered
(a timeout) is charged by the run's unanswered rule (`judge.unanswered_charge`: its worst case, or its
prompt's bound only) and stays `maybe_billed`. Spent = reserved + settled + maybe_billed + orphaned rows.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from actprm.errors import ActPRMError
from actprm.store import Store


class BudgetError(ActPRMError):
    """A money setting or the ledger itself cannot be trusted; nothing is bought."""


def _check_amount(name: str, value: float | int | None) -> None:
    # NaN compares false with everything, so a NaN cap would never be reached and a NaN price never add up:
    # both would buy without limit. A negative price would refund spending. Refuse them all.
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise BudgetError(f"budget setting {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class BudgetLimits:
    max_labels: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    price_per_1k_tokens: float = 0.0
    per_pool_max_labels: int | None = None
    per_pool_max_tokens: int | None = None
    per_pool_max_cost: float | None = None

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            _check_amount(name, getattr(self, name))

    @classmethod
    def from_settings(cls, budget) -> BudgetLimits:
        """From `Settings.budget` (a BudgetSettings)."""
        return cls(**{k: getattr(budget, k) for k in cls.__dataclass_fields__})

    def cost(self, tokens: int) -> float:
        return tokens / 1000.0 * self.price_per_1k_tokens

    def caps(self, scope: str) -> dict[str, float | None]:
        if scope == "global":
            return {"labels": self.max_labels, "tokens": self.max_tokens, "cost": self.max_cost}
        return {"labels": self.per_pool_max_labels, "tokens": self.per_pool_max_tokens, "cost": self.per_pool_max_cost}


def ledger_snapshot_path(duckdb_path: Path) -> Path:
    return Path(duckdb_path).parent / "status" / "ledger.json"


def check_ledger(spent: dict) -> None:
    """Refuse a ledger that holds a non-finite amount (left by a run before money settings were checked):
    against it no cap can be enforced."""
    if not all(math.isfinite(v) for v in spent.values()):
        raise BudgetError("the budget ledger holds a non-finite amount (a run priced at NaN or inf), so no cap can "
                          "be enforced; repair it with `actprm repair-ledger --price-per-1k-tokens PRICE`")


def budget_left(store: Store, pool: str | None, limits: BudgetLimits) -> dict:
    """What is left under each cap (None = uncapped), globally and for `pool`, with what was spent. The
    arithmetic lives with the ledger in the store (`Store.budget_left`), which must not import judges."""
    return store.budget_left(pool, limits)


@dataclass
class Reservation:
    request_id: str
    pool: str
    trajectory_id: str
    tokens: int
    cost: float


class LedgerWriter:
    """Group commit: every change is written before the caller goes on (a request is sent only once
    its reservation is in the file; a label is acknowledged only once committed), and all changes that
    queued up while the previous transaction was written go into the next one. No change waits for a
    long timer: a label is in memory only for one commit plus a few milliseconds."""

    def __init__(self, store: Store, gather_s: float = 0.002):
        self.store = store
        self.gather_s = gather_s
        self.flushes = 0
        self._pending: list = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.on_commit = None  # called after each committed transaction

    async def write(self, *, reserve: tuple | None = None, settle: tuple | None = None, label: dict | None = None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((reserve, settle, label, fut))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let the loop finish reading answers that are already on the wire (a few ms at most), so
            # one transaction carries many of them: each DuckDB statement costs ~1-3 ms however small.
            await asyncio.sleep(self.gather_s)
            self._wake.clear()
            batch, self._pending = self._pending, []
            self.flushes += 1
            try:
                self.store.ledger_write(reserve=[b[0] for b in batch if b[0]], settle=[b[1] for b in batch if b[1]],
                                        labels=[b[2] for b in batch if b[2]])
            except Exception as exc:  # the callers fail; nothing is acknowledged that was not written
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for *_, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            if self.on_commit is not None:
                self.on_commit()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class Budget:
    """In-memory mirror of the ledger totals for fast, race-free reservations in one event loop.

    DuckDB admits one writer process per file, so once the totals are loaded nobody else can change
    them behind our back; every reservation is in the file before its request is sent.
    """

    def __init__(self, store: Store, pool: str, limits: BudgetLimits):
        self.store, self.pool, self.limits = store, pool, limits
        self.spent_global = store.budget_spent(None)
        self.spent_pool = store.budget_spent(pool)
        check_ledger(self.spent_global)
        self.orphaned = store.ledger_orphan_stale()
        self.in_flight = 0
        self.writer = LedgerWriter(store)
        self.writer.on_commit = self._snapshot
        self._snapshot_at = 0.0
        self._changed = asyncio.Condition()

    def _snapshot(self, force: bool = False) -> None:
        """What is spent, for `actprm status` while this run holds the DuckDB file (one process per file):
        at most twice a second, written whole and renamed into place, so a reader never sees half of it."""
        now = time.monotonic()
        if not force and now - self._snapshot_at < 0.5:
            return
        self._snapshot_at = now
        path = ledger_snapshot_path(self.store.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"written_at": time.time(), "pid": os.getpid(), "pool": self.pool,
                                       "spent_global": self.spent_global, "spent_pool": self.spent_pool}))
            os.replace(tmp, path)
        except OSError:  # a status aid: never a reason to stop buying
            pass

    def _fits(self, tokens: int, cost: float) -> bool:
        want = {"labels": 1, "tokens": tokens, "cost": cost}
        for spent, caps in ((self.spent_global, self.limits.caps("global")), (self.spent_pool, self.limits.caps("pool"))):
            for k, cap in caps.items():
                # Written so that it fails closed: any NaN that got this far makes the request not fit.
                if cap is not None and not spent[k] + want[k] <= cap + 1e-12:
                    return False
        return True

    def _add(self, labels: int, tokens: int, cost: float) -> None:
        for spent in (self.spent_global, self.spent_pool):
            spent["labels"] += labels
            spent["tokens"] += tokens
            spent["cost"] += cost

    async def reserve(self, trajectory_id: str, tokens: int) -> Reservation | None:
        """Reserve one request's worst case, waiting while in-flight requests may still hand budget
        back; None when it cannot fit even after every in-flight request has settled (budget spent)."""
        cost = self.limits.cost(tokens)
        async with self._changed:
            while not self._fits(tokens, cost):
                if self.in_flight == 0:
                    return None
                await self._changed.wait()
            self._add(1, tokens, cost)
            self.in_flight += 1
        r = Reservation(uuid.uuid4().hex, self.pool, trajectory_id, tokens, cost)
        await self.writer.write(reserve=(r.request_id, r.pool, r.trajectory_id, r.tokens, r.cost))
        return r

    async def settle(self, r: Reservation, *, labels: int, tokens: int, cost: float, label: dict | None = None,
                     state: str = "settled") -> None:
        """Replace a reservation by what it spent (`state` settled: actual usage), committing `label` (if
        any) in the same transaction."""
        if not (math.isfinite(cost) and cost >= 0 and tokens >= 0):
            # A judge reporting negative or non-finite usage must not refund the budget: keep the worst case.
            tokens, cost = r.tokens, r.cost
        await self.writer.write(settle=(r.request_id, state, labels, tokens, cost),
                                label={**label, "request_id": r.request_id} if label else None)
        await self._give_back(r, labels, tokens, cost)

    async def keep(self, r: Reservation, *, tokens: int | None = None, label: dict | None = None) -> None:
        """The request was sent and may have been billed, but no answer came back: `tokens` (default its
        worst case, never more) stay spent (state maybe_billed), so a cap holds against what the judge bills."""
        tokens = r.tokens if tokens is None else min(tokens, r.tokens)
        cost = r.cost if tokens == r.tokens else self.limits.cost(tokens)
        await self.settle(r, labels=0, tokens=tokens, cost=cost, label=label, state="maybe_billed")

    async def release(self, r: Reservation, *, label: dict | None = None) -> None:
        """The request surely bought nothing (refused, never sent): free its reservation."""
        await self.settle(r, labels=0, tokens=0, cost=0.0, label=label, state="released")

    async def record_failure(self, label: dict) -> None:
        """A failed label row with no request of its own (the budget ran out between re-asks)."""
        await self.writer.write(label=label)

    async def _give_back(self, r: Reservation, labels: int, tokens: int, cost: float) -> None:
        async with self._changed:
            self._add(labels - 1, tokens - r.tokens, cost - r.cost)
            self.in_flight -= 1
            self._changed.notify_all()

    def left(self) -> dict:
        return budget_left(self.store, self.pool, self.limits)

    async def aclose(self) -> None:
        self._snapshot(force=True)
        await self.writer.aclose()
