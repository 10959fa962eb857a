"""The new-pool trigger spends judge budget, so which `actprm.pool.registered` events start a loop is checked here
with the very matcher the Prefect server applies to the trigger in prefect.yaml (the live check, with servers, is
tests/integration/test_servers.py)."""

from __future__ import annotations

import yaml
from prefect.server.events.schemas.events import Resource, ResourceSpecification

from actprm.servers import REPO_ROOT
from tasks.ingest import IngestSummary, pool_event_id, pool_event_resource


def _trigger_match() -> ResourceSpecification:
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (al,) = [d for d in spec["deployments"] if d["name"] == "active-learning"]
    (trigger,) = al["triggers"]
    return ResourceSpecification(trigger["match"])


def _starts_loop(summary: IngestSummary, *, subflow: bool) -> bool:
    return _trigger_match().matches(Resource(pool_event_resource(summary, subflow=subflow)))


def test_only_an_ingest_that_added_trajectories_outside_another_flow_starts_a_loop():
    new = IngestSummary(pool="batch-7", status="registered", trajectories_added=120, pool_trajectories=120)
    again = IngestSummary(pool="batch-7", status="registered", trajectories_added=0, pool_trajectories=120)
    assert _starts_loop(new, subflow=False)
    assert not _starts_loop(again, subflow=False), "re-ingesting the same file must not buy another loop"
    # The loop's own `sample` ingest (a subflow of active-learning) adds trajectories but starts no second loop.
    sample = IngestSummary(pool="sample", status="registered", trajectories_added=1000, pool_trajectories=1000)
    assert not _starts_loop(sample, subflow=True)
    assert _starts_loop(sample, subflow=False)  # `actprm ingest` of new lines into `sample` by a user does


def test_the_event_id_is_fixed_by_the_pool_content():
    """Prefect's trigger service drops an event id it has seen, so the same content re-sent starts one loop."""
    first = IngestSummary(pool="p", content_hash="abc", format="actprm", trajectories_added=5, pool_trajectories=5)
    resent = IngestSummary(pool="p", content_hash="abc", format="actprm", trajectories_added=5, pool_trajectories=5)
    assert pool_event_id(first) == pool_event_id(resent)
    more = IngestSummary(pool="p", content_hash="def", format="actprm", trajectories_added=3, pool_trajectories=8)
    other_pool = IngestSummary(pool="q", content_hash="abc", format="actprm", trajectories_added=5, pool_trajectories=5)
    assert len({pool_event_id(first), pool_event_id(more), pool_event_id(other_pool)}) == 3
