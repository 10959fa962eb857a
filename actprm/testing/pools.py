"""Small pools written straight into the store, for tests and benchmarks that must not depend on ingest."""

from __future__ import annotations

from actprm.store import Store, trajectory_id


def make_pool(store: Store, name: str, records: list[dict], *, eval_every: int = 0) -> list[str]:
    """Insert `records` ({question, steps, first_error?, error_kind?}) as pool `name`; every
    `eval_every`-th one goes to the eval split. Returns the trajectory ids in pool order."""
    store.sql("INSERT OR REPLACE INTO pools (name, source, format, status) VALUES (?, 'test', 'actprm', 'registered')",
              [name])
    ids = []
    for i, r in enumerate(records):
        tid = trajectory_id(r["question"], r["steps"])
        ids.append(tid)
        # these tables have no PRIMARY KEY (see actprm.store.SCHEMA): keep their keys unique by hand
        store.sql("INSERT INTO trajectories SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM trajectories WHERE id = ?)",
                  [tid, r["question"], r["steps"], len(r["steps"]), tid])
        split = "eval" if eval_every and i % eval_every == eval_every - 1 else "train"
        store.sql("DELETE FROM pool_members WHERE pool = ? AND trajectory_id = ?", [name, tid])
        store.sql("INSERT INTO pool_members (pool, trajectory_id, line_no, source_id, split) "
                  "VALUES (?, ?, ?, ?, ?)", [name, tid, i, r.get("id"), split])
        if r.get("first_error") is not None:
            store.sql("DELETE FROM gold_labels WHERE trajectory_id = ?", [tid])
            store.sql("INSERT INTO gold_labels (trajectory_id, first_error, error_kind, source_format) "
                      "VALUES (?, ?, ?, 'test')", [tid, r["first_error"], r.get("error_kind")])
    return ids


def synth_pool(store: Store, name: str, n: int, *, seed: int = 0, eval_every: int = 0) -> list[str]:
    """A pool of `n` built-in synthetic trajectories with gold labels."""
    from actprm.synth import generate

    return make_pool(store, name, list(generate(n, seed=seed)), eval_every=eval_every)
