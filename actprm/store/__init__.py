"""The one owner of the DuckDB schema and its queries.

Other modules never write SQL strings of their own; they ask a `Store` for rows. `Store` is a short-lived
handle on the file (one writer process at a time) composed of one class per stage, each in its own file:
- `connection`: opening, the single-writer lock, migrations, transactions (`StoreLockedError`);
- `pools`: pool rows, members, splits, reading trajectories back, the data contract's facts;
- `ingest`: ingest stage tables, quarantine, deduplicating and storing new trajectories;
- `ledger`: the judge's budget ledger, its labels and the training examples they make;
- `scores`: ensemble scores per model version, written in shards;
- `rounds`: acquisition ranking and what each round selected and did;
- `loops`: active-learning loops and their owners;
- `schema`: the tables, their migrations and the trajectory id (a content hash);
- `parsing`: the SELECT that reads, parses and checks an input file's lines for one format, run by
  `Store.stage_file` into an ingest stage table.
"""

from actprm.store.connection import StoreLockedError
from actprm.store.ingest import IngestQueries
from actprm.store.ledger import LedgerQueries
from actprm.store.loops import LoopQueries
from actprm.store.pools import PoolQueries
from actprm.store.rounds import RoundQueries
from actprm.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TRAJECTORY_ID_SQL, trajectory_id
from actprm.store.scores import ScoreQueries


class Store(PoolQueries, IngestQueries, LedgerQueries, ScoreQueries, RoundQueries, LoopQueries):
    """A short-lived handle on the project's DuckDB file, with the queries of every stage. Use as a context
    manager: `with Store(settings.duckdb_path) as store: ...`. No two stage classes define the same name
    (tests/unit/test_store_layout.py), so the order of the bases decides nothing."""


__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "TRAJECTORY_ID_SQL", "Store", "StoreLockedError",
           "trajectory_id"]
