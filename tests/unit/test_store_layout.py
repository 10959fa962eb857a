"""`Store` is one class composed of a class per stage (actprm/store/*.py): guard what the split must keep."""

from __future__ import annotations

import grimp

from actprm.store import Store
from actprm.store.connection import Connection


def test_no_stage_class_shadows_another():
    # Two stage files defining the same method would silently resolve to whichever base comes first.
    owners: dict[str, list[str]] = {}
    for cls in Store.__mro__[1:]:
        if issubclass(cls, Connection) and cls is not Connection:
            for name in vars(cls):
                if not name.startswith("__"):
                    owners.setdefault(name, []).append(cls.__name__)
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
    # ... nor does one redefine the connection's lifecycle (open/close/transaction/sql).
    assert set(owners) & {n for n in vars(Connection) if not n.startswith("__")} == set()


def test_store_sits_on_the_ground_floor():
    # The store owns the SQL and every stage asks it for rows: it may import only actprm.errors and
    # actprm.names (a judge, a format or a flow importing it back would be a cycle, as budget_left once was).
    graph = grimp.build_graph("actprm")
    store = {m for m in graph.modules if m == "actprm.store" or m.startswith("actprm.store.")}
    imported = {i for m in store for i in graph.find_modules_directly_imported_by(m)}
    assert {i for i in imported if i.startswith("actprm.")} - store == {"actprm.errors", "actprm.names"}
    # find_shortest_chains, not find_shortest_chain: the latter links the two __init__ modules only, and
    # missed the old store.queries -> judges.budget import.
    assert graph.find_shortest_chains(importer="actprm.store", imported="actprm.judges") == set()
