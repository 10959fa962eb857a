"""The judge's budget ledger and its labels: reservations, settlements, the label cache, what training reads.

Ledger row states: reserved (sent, answer not committed) -> settled (actual usage, committed
with its label in one transaction) | released (surely unbilled: refused or never sent) |
maybe_billed (sent, no answer: kept at its worst case). Spent budget counts reserved, settled,
maybe_billed and orphaned rows: an orphan is a reservation left by a crashed run, and we may have
been billed for it.
"""

from __future__ import annotations

import math
from typing import Protocol

from actprm.store.connection import Connection, same_family


class BudgetCaps(Protocol):
    """What `budget_left` needs of the limits (`actprm.judges.budget.BudgetLimits`): its caps per scope."""

    def caps(self, scope: str) -> dict[str, float | None]: ...


def left_under(caps: dict, spent: dict) -> dict:
    """What is left under each cap (None: uncapped)."""
    return {k: None if caps[k] is None else max(0, caps[k] - spent[k]) for k in caps}


class LedgerQueries(Connection):
    """Budget ledger rows, judge labels and the labeled training examples."""

    def ledger_orphan_stale(self) -> int:
        """Mark reservations of a crashed run as orphaned (still counted as spent); call at run start."""
        n = self.sql("SELECT count(*) FROM budget_ledger WHERE state = 'reserved'").fetchone()[0]
        if n:
            self.sql("UPDATE budget_ledger SET state = 'orphaned', settled_at = current_timestamp "
                     "WHERE state = 'reserved'")
        return int(n)

    def budget_spent(self, pool: str | None = None) -> dict:
        """Labels, tokens and cost spent (reservations at their worst case), globally or for one pool."""
        row = self.sql(
            "SELECT coalesce(sum(labels), 0), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_ledger "
            "WHERE state IN ('reserved', 'settled', 'maybe_billed', 'orphaned') AND (?::VARCHAR IS NULL OR pool = ?)",
            [pool, pool],
        ).fetchone()
        return {"labels": int(row[0]), "tokens": int(row[1]), "cost": float(row[2])}

    def ledger_reprice_nonfinite(self, price_per_1k_tokens: float) -> int:
        """Re-price the ledger and label rows whose cost is NaN or infinite from their tokens; returns the
        number of ledger rows repaired."""
        with self.transaction() as con:
            n = con.execute("SELECT count(*) FROM budget_ledger WHERE NOT isfinite(cost)").fetchone()[0]
            con.execute("UPDATE budget_ledger SET cost = tokens / 1000.0 * ? WHERE NOT isfinite(cost)",
                        [price_per_1k_tokens])
            con.execute("UPDATE judge_labels SET cost = (coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) "
                        "/ 1000.0 * ? WHERE NOT isfinite(cost)", [price_per_1k_tokens])
        return int(n)

    def budget_left(self, pool: str | None, limits: BudgetCaps) -> dict:
        """What is left under each cap of `limits` (None = uncapped), globally and for `pool`, with what was
        spent: for `actprm status` and the label task's summary."""
        out: dict = {}
        scopes = [("global", None)] + ([("pool", pool)] if pool else [])
        for scope, p in scopes:
            spent = self.budget_spent(p)
            out[scope] = {"spent": spent, "left": left_under(limits.caps(scope), spent)}
        return out

    _JUDGE_LABEL_COLS = {"trajectory_id": "VARCHAR", "judge_model": "VARCHAR", "prompt_version": "VARCHAR",
                         "pool": "VARCHAR", "status": "VARCHAR", "first_error": "INTEGER", "reason": "VARCHAR",
                         "raw_answer": "VARCHAR", "prompt_tokens": "BIGINT", "completion_tokens": "BIGINT",
                         "cost": "DOUBLE", "attempts": "INTEGER", "latency_s": "DOUBLE", "request_id": "VARCHAR"}

    def ledger_write(self, reserve: list[tuple] = (), settle: list[tuple] = (), labels: list[dict] = ()) -> None:
        """One transaction (group commit) of ledger and label changes:
        reserve: (request_id, pool, trajectory_id, tokens, cost) rows sent next, at their worst case;
        settle: (request_id, state, labels, tokens, cost) with state settled (actual usage), released
        (bought nothing) or maybe_billed (its worst case); labels: judge_labels rows (a request's label
        commits with its settlement).
        Multi-row statements: DuckDB's per-statement overhead (~1-3 ms) would otherwise cap throughput."""
        # The ledger never stores an amount no cap can be checked against (NaN, inf) or one that refunds.
        amounts = [a for r in reserve for a in r[3:5]] + [a for r in settle for a in r[2:5]]
        if not all(isinstance(a, (int, float)) and math.isfinite(a) and a >= 0 for a in amounts):
            raise ValueError(f"refusing a non-finite or negative ledger amount: {amounts}")
        with self.transaction() as con:
            if reserve:
                cols = list(zip(*reserve))
                con.execute("INSERT INTO budget_ledger (request_id, pool, trajectory_id, state, labels, tokens, cost) "
                            "SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), 'reserved', 1, "
                            "unnest(?::BIGINT[]), unnest(?::DOUBLE[])", [list(c) for c in cols])
            if settle:
                cols = list(zip(*settle))
                con.execute("UPDATE budget_ledger SET state = v.state, labels = v.labels, tokens = v.tokens, "
                            "cost = v.cost, settled_at = current_timestamp FROM (SELECT unnest(?::VARCHAR[]) AS rid, "
                            "unnest(?::VARCHAR[]) AS state, unnest(?::INTEGER[]) AS labels, unnest(?::BIGINT[]) AS tokens, "
                            "unnest(?::DOUBLE[]) AS cost) v WHERE budget_ledger.request_id = v.rid",
                            [list(c) for c in cols])
            names = list(self._JUDGE_LABEL_COLS)
            select = ", ".join(f"unnest(?::{t}[])" for t in self._JUDGE_LABEL_COLS.values())
            # A failed row is replaced by a later answer (rows flagged `replaces`); a labeled row is never
            # re-requested (the cache). Plain INSERT for the rest: it costs half of INSERT OR REPLACE.
            for verb, rows in (("INSERT OR REPLACE", [r for r in labels if r.get("replaces")]),
                               ("INSERT", [r for r in labels if not r.get("replaces")])):
                if rows:
                    con.execute(f"{verb} INTO judge_labels ({', '.join(names)}, created_at) "
                                f"SELECT {select}, current_timestamp", [[row.get(c) for row in rows] for c in names])

    def ledger_summary(self) -> dict[str, dict]:
        """Judge requests per ledger state, with their tokens and cost: what to hold against an invoice
        (maybe_billed and orphaned rows are counted at their worst case)."""
        rows = self.sql("SELECT state, count(*), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) "
                        "FROM budget_ledger GROUP BY state ORDER BY state").fetchall()
        return {state: {"requests": int(n), "tokens": int(tokens), "cost": float(cost)} for state, n, tokens, cost in rows}

    def ledger_consistency(self) -> dict:
        """Counts that must be zero after any crash: settled label-buying requests without their label
        row, and labeled rows without their settled request."""
        missing_label = self.sql(
            "SELECT count(*) FROM budget_ledger b WHERE b.state = 'settled' AND b.labels = 1 AND NOT EXISTS "
            "(SELECT 1 FROM judge_labels j WHERE j.request_id = b.request_id AND j.status = 'labeled')").fetchone()[0]
        missing_request = self.sql(
            "SELECT count(*) FROM judge_labels j WHERE j.status = 'labeled' AND NOT EXISTS "
            "(SELECT 1 FROM budget_ledger b WHERE b.request_id = j.request_id AND b.state = 'settled' "
            "AND b.labels = 1)").fetchone()[0]
        states = dict(self.sql("SELECT state, count(*) FROM budget_ledger GROUP BY state").fetchall())
        return {"settled_without_label": int(missing_label), "label_without_settled": int(missing_request),
                "states": {k: int(v) for k, v in states.items()}}

    def judge_label_status(self, ids: list[str], judge_model: str, prompt_version: str) -> dict[str, str]:
        """Status (labeled | failed) of the rows `ids` already have for this (judge model, prompt version):
        labeled ones are the label cache; failed ones are asked again and their row replaced."""
        if not ids:
            return {}
        # Any version of the prompt's family counts (processbench-v1 labels serve processbench-v2): a template
        # revision must not buy every label again. A labeled row under any of them wins over a failed one.
        rows = self.sql("SELECT trajectory_id, CASE WHEN bool_or(status = 'labeled') THEN 'labeled' ELSE 'failed' END "
                        "FROM judge_labels WHERE judge_model = ? AND " + same_family("prompt_version", "?")
                        + " AND trajectory_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY trajectory_id",
                        [judge_model, prompt_version, ids]).fetchall()
        return dict(rows)

    def judge_label_truncations(self, ids: list[str], judge_model: str, prompt_version: str) -> dict[str, int]:
        """Completion tokens of the rows `ids` that failed as truncated under this (judge model, prompt version):
        the label task re-asks them only under a larger completion limit."""
        if not ids:
            return {}
        rows = self.sql("SELECT trajectory_id, completion_tokens FROM judge_labels WHERE judge_model = ? "
                        "AND prompt_version = ? AND status = 'failed' AND reason = 'truncated' "
                        "AND trajectory_id IN (SELECT unnest(?::VARCHAR[]))", [judge_model, prompt_version, ids]).fetchall()
        return {t: int(c or 0) for t, c in rows}

    def judge_label_quality(self, pool: str, judge_model: str, prompt_version: str) -> dict | None:
        """Judge first-error accuracy against the pool's gold labels, overall and per error_kind, and the
        parse-failure rate; None when the pool has no gold labels for the judged trajectories."""
        rows = self.sql(
            "SELECT coalesce(g.error_kind, CASE WHEN g.first_error = -1 THEN 'correct' ELSE 'unknown' END), "
            "count(*) FILTER (WHERE j.status = 'labeled'), "
            "count(*) FILTER (WHERE j.status = 'labeled' AND j.first_error = g.first_error), "
            "count(*) FILTER (WHERE j.status = 'failed') "
            "FROM judge_labels j JOIN pool_members pm ON pm.trajectory_id = j.trajectory_id AND pm.pool = ? "
            "JOIN gold_labels g ON g.trajectory_id = j.trajectory_id "
            "WHERE j.judge_model = ? AND j.prompt_version = ? GROUP BY 1 ORDER BY 1",
            [pool, judge_model, prompt_version]).fetchall()
        if not rows:
            return None
        labeled = sum(r[1] for r in rows)
        correct = sum(r[2] for r in rows)
        failed = sum(r[3] for r in rows)
        return {"n_labeled": labeled, "accuracy": correct / labeled if labeled else None,
                "per_error_kind": {r[0]: {"n": r[1], "accuracy": r[2] / r[1] if r[1] else None} for r in rows},
                "parse_failure_rate": failed / (labeled + failed) if labeled + failed else 0.0}

    def training_examples(self, pool: str, *, split: str | None = "train", judge_model: str | None = None,
                          prompt_version: str | None = None) -> list[dict]:
        """The pool's judge-labeled trajectories, as train_prm examples {id, question, steps, first_error}.

        A label belongs to the trajectory (its content hash), not to the pool that bought it, so a label
        bought through another pool counts too. When a trajectory has several labels (other judge models or
        prompt versions) the newest wins, unless `judge_model`/`prompt_version` pin one. Labels that point
        past the last step are dropped rather than guessed at. Ordered by the pool's line order.
        """
        q = (
            "SELECT t.id, t.question, t.steps, j.first_error FROM pool_members pm "
            "JOIN trajectories t ON t.id = pm.trajectory_id "
            "JOIN (SELECT trajectory_id, first_error FROM judge_labels "
            "      WHERE status = 'labeled' AND first_error IS NOT NULL"
            "        AND (? IS NULL OR judge_model = ?) AND (? IS NULL OR " + same_family("prompt_version", "?") + ") "
            "      QUALIFY row_number() OVER (PARTITION BY trajectory_id "
            "                                 ORDER BY created_at DESC, judge_model, prompt_version) = 1"
            ") j ON j.trajectory_id = pm.trajectory_id "
            "WHERE pm.pool = ? AND (? IS NULL OR pm.split = ?) AND j.first_error BETWEEN -1 AND t.num_steps - 1 "
            "ORDER BY pm.line_no, t.id"
        )
        rows = self.sql(q, [judge_model, judge_model, prompt_version, prompt_version, pool, split, split]).fetchall()
        return [{"id": r[0], "question": r[1], "steps": list(r[2]), "first_error": int(r[3])} for r in rows]
