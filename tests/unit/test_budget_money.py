"""Money settings and the ledger fail closed: NaN, infinite and negative amounts never let a run buy more
(issue #41: `--max-cost nan` or a NaN price once bought every label of a pool)."""

import json
import math
import random

import pytest
from typer.testing import CliRunner

from actprm.config import ConfigError, flow_settings, load_settings
from actprm.judges import build_judge
from actprm.judges.budget import Budget, BudgetError, BudgetLimits
from actprm.store import Store
from actprm.testing.pools import synth_pool
from tasks.label import label_pool

BAD = [math.nan, math.inf, -math.inf, -1.0, -1e-9]
MONEY_FIELDS = ["max_cost", "price_per_1k_tokens", "per_pool_max_cost"]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "actprm.duckdb") as s:
        yield s


@pytest.mark.parametrize("field", MONEY_FIELDS)
@pytest.mark.parametrize("value", BAD)
def test_bad_money_settings_are_refused_from_every_source(field, value, tmp_path, monkeypatch):
    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=f"budget.{field}"):
        load_settings({"budget": {field: value}})  # CLI flags arrive as overrides
    with pytest.raises(ConfigError, match=f"budget.{field}"):
        flow_settings({"budget": {field: value}})  # a flow run's parameters (Prefect UI, deployments)
    with pytest.raises(BudgetError, match=field):
        BudgetLimits(**{field: value})  # code that builds limits by hand
    monkeypatch.setenv(f"ACTPRM_BUDGET__{field.upper()}", str(value))
    with pytest.raises(ConfigError, match=f"budget.{field}"):
        load_settings()
    monkeypatch.delenv(f"ACTPRM_BUDGET__{field.upper()}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"budget:\n  {field}: {'.nan' if math.isnan(value) else value}\n")
    monkeypatch.setenv("ACTPRM_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=f"budget.{field}"):
        load_settings()


def test_negative_label_and_token_caps_are_refused():
    for field in ("max_labels", "max_tokens", "per_pool_max_labels", "per_pool_max_tokens"):
        with pytest.raises(ConfigError, match=field):
            load_settings({"budget": {field: -1}})


def test_cli_refuses_max_cost_nan_in_one_line_of_strict_json(tmp_path, monkeypatch):
    from actprm_cli.main import app

    monkeypatch.setenv("ACTPRM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["label", "--max-cost", "nan", "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout.strip().splitlines()[-1])  # strict: a bare NaN would not parse
    assert "budget.max_cost" in out["error"] and "finite" in out["error"]
    assert not (tmp_path / "home" / "actprm.duckdb").exists()  # refused before anything was opened


def test_a_poisoned_ledger_is_refused_until_repaired(store):
    synth_pool(store, "p", 20)
    # What a run before this check left behind: a settled request priced at NaN.
    store.sql("INSERT INTO budget_ledger (request_id, pool, trajectory_id, state, labels, tokens, cost) "
              "VALUES ('old', 'p', 'x', 'settled', 1, 900, 'NaN'::DOUBLE)")
    limits = BudgetLimits(max_cost=0.01, price_per_1k_tokens=0.002)
    with pytest.raises(BudgetError, match="repair-ledger"):
        label_pool(store, "p", build_judge("verifier", max_completion_tokens=256), select="all", limits=limits,
                   progress=False)
    assert store.sql("SELECT count(*) FROM judge_labels").fetchone()[0] == 0  # nothing bought
    assert store.ledger_reprice_nonfinite(0.002) == 1
    s = label_pool(store, "p", build_judge("verifier", max_completion_tokens=256), select="all", limits=limits,
                   progress=False)
    spent = store.budget_spent()
    assert s.stopped_because == "budget" and 0 < s.labeled < 20
    assert math.isfinite(spent["cost"]) and spent["cost"] <= 0.01 + 1e-9


def test_the_ledger_never_stores_a_non_finite_or_negative_amount(store):
    for row in [("r1", "p", "t", 10, math.nan), ("r2", "p", "t", -5, 0.0), ("r3", "p", "t", 10, -0.5)]:
        with pytest.raises(ValueError, match="ledger amount"):
            store.ledger_write(reserve=[row])
    assert store.sql("SELECT count(*) FROM budget_ledger").fetchone()[0] == 0


def test_property_adversarial_usage_never_breaks_a_cap(store):
    """Random caps and prices, and a judge whose reported usage is negative, NaN or infinite: what is spent stays
    finite and within every cap, and no reported usage refunds the budget. (Usage up to the reservation: the
    reservation is the request's worst case, max completion tokens included, which is what makes caps hold.)"""
    import asyncio

    rng = random.Random(0)
    weird = [math.nan, math.inf, -math.inf, -1.0, -1e12, 0.0, 1e-300]

    async def drive(limits: BudgetLimits, pool: str) -> None:
        budget = Budget(store, pool, limits)
        try:
            for i in range(60):
                r = await budget.reserve(f"t{i}", rng.choice([1, 50, 500, 5_000]))
                if r is None:
                    break
                tokens = rng.choice([-1, -10**12, 0, rng.randint(0, r.tokens), r.tokens])
                cost = rng.choice(weird + [limits.cost(max(tokens, 0))])
                await budget.settle(r, labels=rng.choice([0, 1]), tokens=tokens, cost=cost)
        finally:
            await budget.aclose()

    for trial in range(40):
        pool = f"p{trial}"
        limits = BudgetLimits(max_cost=rng.choice([None, 0.0, 1e-6, 0.01, 1.0]),
                              max_tokens=rng.choice([None, 0, 100, 20_000]),
                              per_pool_max_cost=rng.choice([None, 0.005, 0.5]),
                              price_per_1k_tokens=rng.choice([0.0, 1e-9, 0.002, 3.0]))
        asyncio.run(drive(limits, pool))
        spent, pool_spent = store.budget_spent(None), store.budget_spent(pool)
        assert all(math.isfinite(v) and v >= 0 for v in spent.values())
        for cap, used in ((limits.max_cost, spent["cost"]), (limits.max_tokens, spent["tokens"]),
                          (limits.per_pool_max_cost, pool_spent["cost"])):
            assert cap is None or used <= cap + 1e-9
        store.sql("DELETE FROM budget_ledger")  # each trial starts from an empty ledger
