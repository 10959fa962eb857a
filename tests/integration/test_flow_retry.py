"""A retried active-learning flow run goes on after the rounds it finished (the tiny preset, a real Prefect
flow, DuckDB file and MLflow store)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_retried_flow_run_goes_on_after_its_finished_rounds(actprm_home, prefect_harness, monkeypatch):
    """Prefect keeps a flow run's id across retries. Attempt 1 finishes round 1 and dies evaluating round 2; the
    retry must not redo round 1 (it would buy a new batch and retrain onto the version round 1 registered) but go
    on with round 2 from the model round 1 registered."""
    from mlflow import MlflowClient

    import actprm.tracking
    import flows.active_learning as loop
    from actprm.config import load_settings
    from actprm.store import Store
    from flows import prefect_tasks, scoring
    from tasks import pipeline

    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: "retried-flow-run")
    monkeypatch.setattr(pipeline, "prefect_flow_run_id", lambda: "retried-flow-run")
    real_evaluate = prefect_tasks.evaluate_task
    started_from = []
    real_score = scoring.score

    def score(settings, pool, model_dir, model_version, run_id, **kw):
        started_from.append(model_version)
        return real_score(settings, pool, model_dir, model_version, run_id, **kw)

    def dies_in_round_2(settings, pool, model_dir, run_id):
        if "round-2" in str(model_dir):
            raise RuntimeError("worker lost")
        return real_evaluate(settings, pool, model_dir, run_id)

    monkeypatch.setattr(scoring, "score", score)
    monkeypatch.setattr(prefect_tasks, "evaluate_task", dies_in_round_2)
    args = dict(pool="sample", rounds=2, labels_per_round=20, preset="tiny",
                config={"synth": {"n": 120}, "model": {"num_heads": 4}, "train": {"epochs": 1}})
    with pytest.raises(RuntimeError, match="worker lost"):
        loop.active_learning(**args)
    monkeypatch.setattr(prefect_tasks, "evaluate_task", real_evaluate)
    summary = loop.active_learning(**args)

    settings = load_settings()
    name = settings.registry.model_name
    registered = MlflowClient(settings.tracking_uri).search_model_versions(f"name='{name}'")
    versions = sorted(int(v.version) for v in registered)
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and versions == [1, 2]
    assert [r["model_version"] for r in summary["rounds"]] == [1, 2]
    # Attempt 1 scored rounds 1 and 2; the retry scored only round 2, with the version round 1 registered.
    assert started_from[2:] == [f"{name}/v1"] and started_from[1] == f"{name}/v1"
    with Store(settings.duckdb_path, read_only=True) as store:
        assert [r["round"] for r in store.rounds(summary["loop"])] == [2, 1]
        labels = store.sql("SELECT count(*) FROM judge_labels WHERE status = 'labeled'").fetchone()[0]
    # Round 1's 20 and round 2's 20: the retry got round 2's kept selection back, which the attempt that died had
    # already bought, so it bought nothing new (without the kept selection: 60, a second batch for round 2).
    assert labels == 40


@pytest.mark.parametrize("stop", ["plateau", "budget"])
def test_a_retried_flow_run_that_had_stopped_buys_no_more_rounds(stop, actprm_home, prefect_harness, monkeypatch):
    """Attempt 1 stops after round 2 (no F1 gain over round 1 / the label cap reached) and dies closing the run;
    the retry must stop there too, not score the pool again for a third round (hours with a 7B model) and buy it
    or retrain on nothing new."""
    import dataclasses

    import actprm.tracking
    import flows.active_learning as loop
    from flows import prefect_tasks, scoring
    from tasks import pipeline

    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: f"{stop}-flow-run")
    monkeypatch.setattr(pipeline, "prefect_flow_run_id", lambda: f"{stop}-flow-run")
    real_evaluate, real_finish, real_score = prefect_tasks.evaluate_task, prefect_tasks.finish_task, scoring.score
    scored_rounds = []

    def flat_f1(settings, pool, model_dir, run_id):  # round 2 gains nothing over round 1: a plateau of 1
        return dataclasses.replace(real_evaluate(settings, pool, model_dir, run_id), f1=0.5)

    def score(settings, pool, model_dir, model_version, run_id, **kw):
        scored_rounds.append(model_version)
        return real_score(settings, pool, model_dir, model_version, run_id, **kw)

    def dies_closing(*args, **kwargs):
        raise RuntimeError("worker lost")

    if stop == "plateau":
        monkeypatch.setattr(prefect_tasks, "evaluate_task", flat_f1)
    monkeypatch.setattr(scoring, "score", score)
    monkeypatch.setattr(prefect_tasks, "finish_task", dies_closing)
    config = {"synth": {"n": 120}, "model": {"num_heads": 4}, "train": {"epochs": 1}}
    config |= {"loop": {"plateau_rounds": 1}} if stop == "plateau" else {"budget": {"max_labels": 30}}
    args = dict(pool="sample", rounds=4, labels_per_round=20, preset="tiny", config=config)
    with pytest.raises(RuntimeError, match="worker lost"):
        loop.active_learning(**args)
    assert len(scored_rounds) == 2  # rounds 1 and 2, then the stop
    monkeypatch.setattr(prefect_tasks, "finish_task", real_finish)
    summary = loop.active_learning(**args)
    assert len(scored_rounds) == 2, "the retry scored (and would have bought) a third round"
    assert summary["stopped_because"] == stop and [r["round"] for r in summary["rounds"]] == [1, 2]
