"""The one owner of the DuckDB schema and its queries.

Other modules never write SQL strings of their own; they ask a `Store` for rows.
- `schema`: the tables, their migrations and the trajectory id (a content hash);
- `queries`: `Store`, a short-lived handle on the file (one writer process at a time), with the queries of
  every stage;
- `parsing`: the SELECT that reads, parses and checks an input file's lines for one format, run by
  `Store.stage_file` into an ingest stage table.
"""

from actprm.store.queries import Store, StoreLockedError
from actprm.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TRAJECTORY_ID_SQL, trajectory_id

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "TRAJECTORY_ID_SQL", "Store", "StoreLockedError",
           "trajectory_id"]
