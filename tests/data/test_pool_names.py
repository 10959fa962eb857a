"""A pool name reaches file paths (reports/<pool>/, data/<pool>-...): one rule, refused at every entry (#41.5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actprm.config import ConfigError, load_settings
from actprm.names import InvalidName, check_pool_name
from actprm.store import Store
from tasks.ingest import ingest
from tests.data.conftest import actprm_record, write_lines

BAD = ["../x", "../../x", "a/b", "/abs", ".hidden", "", "x" * 65, "tab\tname", "new\nline", "ok\n", "é", "a\\b", "-x"]
GOOD = ["sample", "p", "synth-test", "pool_2026.v1", "A" * 64]


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_in_one_line(name):
    with pytest.raises(InvalidName) as err:
        check_pool_name(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name):
    assert check_pool_name(name) == name


def test_ingest_refuses_an_escaping_pool_before_writing_anything(tmp_path, db):
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(3)])
    reports = tmp_path / "home" / "reports"
    with pytest.raises(InvalidName, match="invalid pool name '../x'"):
        ingest(db, [str(path)], "../x", reports_dir=reports, emit=False)
    assert not (tmp_path / "home" / "x").exists() and not reports.exists() and not db.exists()
    with Store(db) as store:
        assert store.pools() == []
        with pytest.raises(InvalidName):  # score, label, train and the event-started loop ask this first
            store.require_pool("../x")


def test_the_flow_refuses_it_too(tmp_path):
    from flows.ingest_pool import ingest_pool

    with pytest.raises(InvalidName, match="invalid pool name"):
        ingest_pool.fn(paths=[str(tmp_path / "none.jsonl")], pool="../x", home=str(tmp_path / "home"))
    # the deployment's parameter schema carries the rule, so the Prefect UI checks it before a run starts
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(ingest_pool.fn).model_dump()
    assert schema["properties"]["pool"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def test_a_default_pool_setting_is_checked(monkeypatch):
    monkeypatch.setenv("ACTPRM_DEFAULT_POOL", "../x")
    with pytest.raises((ConfigError, ValueError), match="default_pool"):
        load_settings()


def test_cli_refuses_pool_dotdot_x_in_one_line(tmp_path):
    actprm = shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(0)])
    home = tmp_path / "home"
    env = {**os.environ, "ACTPRM_HOME": str(home)}
    proc = subprocess.run([actprm, "ingest", str(path), "--pool", "../x", "--json"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: invalid pool name '../x'")
    assert not home.exists() and not (tmp_path / "x").exists()


def test_the_loop_the_pool_registered_event_starts_refuses_a_forged_payload_name(tmp_path):
    """prefect.yaml passes `{{ event.payload.pool }}` to the active-learning flow: a forged event is refused there."""
    from flows.active_learning import active_learning

    with pytest.raises(InvalidName, match="invalid pool name '../../x'"):
        active_learning.fn(pool="../../x", config={"home": str(tmp_path / "home")})
    assert not (tmp_path / "home").exists()
