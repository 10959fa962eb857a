"""MLflow registry: promotion gate, manual promote, rollback and loading the champion.

Runs against a real MLflow SQLite store in tmp_path; global MLflow state is restored afterwards.
"""

from __future__ import annotations

import functools
import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from actprm.errors import ActPRMError
from actprm.tracking import configure_mlflow, flatten_params, log_params, start_run
from tasks.champion import champion_history, champion_version, f1_tag, promote, promotion_gate
from tasks.model_source import load_champion
from tasks.register import log_model

@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    # One SQLite store per module: creating one runs MLflow's migrations (~10 s on a busy CPU).
    # Each test registers its own model name, so tests stay independent.
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    prev = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with pytest.MonkeyPatch.context() as mp:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI; registering the variables with
        # monkeypatch first makes teardown restore them.
        for var, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "HF_HUB_OFFLINE": "1",
                           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}.items():
            mp.setenv(var, value)
        configure_mlflow(uri, "test", root / "mlartifacts")
        yield uri, root
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(prev[0])
        mlflow.set_registry_uri(prev[1])
        mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def client(store_uri):
    uri, _ = store_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def name(request):
    return f"prm-{request.node.name.removeprefix('test_')[:40]}"


@pytest.fixture
def model_dir(tmp_path):
    # The gate and aliases never open the model: a folder is enough to register a version.
    d = tmp_path / "saved"
    d.mkdir()
    (d / "prm_config.json").write_text("{}")
    return d


def _versions(client, model_dir, n, name):
    return [log_model(model_dir, name=name, client=client) for _ in range(n)]


def test_experiment_artifacts_live_under_the_given_root(store_uri):
    _, root = store_uri
    exp = mlflow.get_experiment_by_name("test")
    assert exp.artifact_location == (root / "mlartifacts" / "test").as_uri()


def test_every_new_version_is_the_challenger(client, name, model_dir):
    v1, v2 = _versions(client, model_dir, 2, name)
    assert (v1, v2) == (1, 2)
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    assert champion_version(name, client) is None


def test_gate_promotes_first_then_only_better_by_min_delta(client, name, model_dir):
    v1, v2, v3, v4 = _versions(client, model_dir, 4, name)
    first = promotion_gate(client, name, v1, 0.60, eval_set="pool:eval:abc")
    assert first["decision"] == "promoted" and first["reason"] == "no champion yet"
    assert champion_version(name, client) == v1

    worse = promotion_gate(client, name, v2, 0.55, eval_set="pool:eval:abc")
    assert worse["decision"] == "rejected" and worse["champion_f1"] == pytest.approx(0.60)
    assert champion_version(name, client) == v1

    small_gain = promotion_gate(client, name, v3, 0.62, min_delta=0.05, eval_set="pool:eval:abc")
    assert small_gain["decision"] == "rejected"
    assert champion_version(name, client) == v1

    better = promotion_gate(client, name, v4, 0.66, min_delta=0.05, eval_set="pool:eval:abc")
    assert better["decision"] == "promoted" and better["champion_version"] == v1
    assert champion_version(name, client) == v4
    assert champion_history(client, name) == [v1]
    assert int(client.get_model_version_by_alias(name, "previous-champion").version) == v1

    tags = client.get_model_version(name, str(v3)).tags
    assert tags["actprm.gate.decision"] == "rejected"
    assert float(tags["actprm.eval_f1"]) == pytest.approx(0.62)
    assert float(tags["actprm.gate.champion_f1"]) == pytest.approx(0.60)
    assert float(tags["actprm.gate.min_delta"]) == pytest.approx(0.05)
    assert tags["actprm.eval_set"] == "pool:eval:abc"
    assert client.get_model_version(name, str(v4)).tags["actprm.gate.decision"] == "promoted"


def test_gate_refuses_f1s_from_different_eval_sets_unless_it_can_reevaluate(client, name, model_dir):
    v1, v2 = _versions(client, model_dir, 2, name)
    promotion_gate(client, name, v1, 0.9, eval_set="poolA:eval:111")
    with pytest.raises(ActPRMError, match="poolA:eval:111"):
        promotion_gate(client, name, v2, 0.5, eval_set="poolB:eval:222")
    assert champion_version(name, client) == v1

    # Re-scored on poolB the champion only reaches 0.4, so the challenger's 0.5 wins.
    out = promotion_gate(client, name, v2, 0.5, eval_set="poolB:eval:222", reevaluate=lambda v: 0.4)
    assert out["decision"] == "promoted" and out["champion_f1"] == pytest.approx(0.4)
    # The re-score is kept beside v1's own measurement, which stays what v1 was registered with.
    tags = client.get_model_version(name, str(v1)).tags
    assert (tags["actprm.eval_set"], float(tags["actprm.eval_f1"])) == ("poolA:eval:111", pytest.approx(0.9))
    assert float(tags[f1_tag("poolB:eval:222")]) == pytest.approx(0.4)


def test_a_tie_never_promotes(client, name, model_dir):
    """Six versions in a row used to be promoted at F1 0.000 >= 0.000: each tie replaced the champion serving."""
    v1, v2, v3, v4 = _versions(client, model_dir, 4, name)
    assert promotion_gate(client, name, v1, 0.0, eval_set="s")["decision"] == "promoted"  # no champion yet
    tie = promotion_gate(client, name, v2, 0.0, min_delta=0.0, eval_set="s")
    assert tie["decision"] == "rejected" and champion_version(name, client) == v1
    # Exactly min_delta better is a tie too, float rounding included (0.65 - 0.60 > 0.05 in floats).
    promote(name, version=v2, client=client)
    client.set_model_version_tag(name, str(v2), "actprm.eval_f1", "0.6")
    assert promotion_gate(client, name, v3, 0.65, min_delta=0.05, eval_set="s")["decision"] == "rejected"
    assert promotion_gate(client, name, v4, 0.6501, min_delta=0.05, eval_set="s")["decision"] == "promoted"
    assert champion_version(name, client) == v4


def test_two_pools_loops_keep_each_pools_champion_and_measurement(client, name, model_dir):
    """One `champion` used to span all pools: pool B's loop re-scored pool A's champion on B's eval set, overwrote
    its `actprm.eval_set`, and could demote it. Now each pool has its champion (alias `champion-<pool>`), and
    `champion` moves only within the pool that holds it."""
    a1, a2, a3 = (log_model(model_dir, name=name, client=client, tags={"actprm.pool": "pool-a"}) for _ in range(3))
    b1, b2 = (log_model(model_dir, name=name, client=client, tags={"actprm.pool": "pool-b"}) for _ in range(2))
    rescored = []

    def reevaluate(version: int) -> float:
        rescored.append(version)
        return 0.1

    gate = functools.partial(promotion_gate, client, name, reevaluate=reevaluate)
    assert gate(a1, 0.70, eval_set="pool-a:eval:1", scope="pool-a")["champion"] == a1
    out = gate(b1, 0.30, eval_set="pool-b:eval:2", scope="pool-b")
    assert out["decision"] == "promoted" and out["champion"] == a1  # pool B's champion; pool A's still serves
    assert client.get_model_version(name, str(b1)).tags["actprm.gate.overall"] == "kept"
    assert gate(b2, 0.80, eval_set="pool-b:eval:2", scope="pool-b")["champion"] == a1
    assert gate(a2, 0.60, eval_set="pool-a:eval:1", scope="pool-a")["decision"] == "rejected"
    assert gate(a3, 0.75, eval_set="pool-a:eval:1", scope="pool-a")["champion"] == a3

    def alias(a: str) -> int:
        return int(client.get_model_version_by_alias(name, a).version)

    assert (alias("champion-pool-a"), alias("champion-pool-b"), alias("champion")) == (a3, b2, a3)
    assert rescored == [], "no champion was re-scored on another pool's set"
    for version, eval_set, f1 in ((a1, "pool-a:eval:1", 0.70), (b1, "pool-b:eval:2", 0.30), (b2, "pool-b:eval:2", 0.80)):
        tags = client.get_model_version(name, str(version)).tags
        assert (tags["actprm.eval_set"], float(tags["actprm.eval_f1"])) == (eval_set, pytest.approx(f1))
    # Rollback is still one command: the overall champion returns to a1.
    assert promote(name, rollback=True, client=client)["champion"] == a1


def test_a_rollback_made_while_the_gate_rescored_the_champion_is_not_undone(client, name, model_dir):
    """Re-scoring the champion takes minutes; an operator rolls back v3 -> v2 meanwhile. The gate must compare the
    challenger with v2, the champion once it is done, and keep the rolled-back v3 out of the history."""
    v1, v2, v3, v5 = _versions(client, model_dir, 4, name)
    for v in (v1, v2, v3):
        promote(name, version=v, client=client)
    assert champion_history(client, name) == [v1, v2]
    rescored = []

    def rescore_while_someone_rolls_back(champion: int) -> float:
        rescored.append(champion)
        if len(rescored) == 1:
            promote(name, rollback=True, client=client)  # v3 -> v2, history [v1]
        return {v2: 0.40, v3: 0.70}[champion]

    out = promotion_gate(client, name, v5, 0.5, eval_set="new-pool:eval:1", reevaluate=rescore_while_someone_rolls_back)
    assert rescored == [v3, v2] and out["champion_version"] == v2 and out["champion_f1"] == pytest.approx(0.40)
    assert out["decision"] == "promoted" and champion_version(name, client) == v5
    assert champion_history(client, name) == [v1, v2]  # not [v1, v3]: the rollback stands

    # Someone who keeps moving the alias gets a clear error, not a promotion decided against a stale champion.
    v6 = _versions(client, model_dir, 1, name)[0]

    def never_settles(champion: int) -> float:
        promote(name, version=v1 if champion != v1 else v2, client=client)
        return 0.1

    with pytest.raises(ActPRMError, match=f"changed 3 times while the gate compared v{v6}"):
        promotion_gate(client, name, v6, 0.9, eval_set="other-pool:eval:2", reevaluate=never_settles)


def test_manual_promote_and_rollback_walk_the_history(client, name, model_dir):
    v1, v2, v3 = _versions(client, model_dir, 3, name)
    promotion_gate(client, name, v1, 0.5, eval_set="s")
    assert promote(name, version=v3, client=client) == {"champion": v3, "previous": v1, "action": "promote"}
    promote(name, version=v2, client=client)
    assert champion_history(client, name) == [v1, v3]

    assert promote(name, rollback=True, client=client)["champion"] == v3
    assert promote(name, rollback=True, client=client)["champion"] == v1
    assert champion_version(name, client) == v1
    with pytest.raises(ActPRMError, match="no previous champion"):
        promote(name, rollback=True, client=client)
    assert champion_version(name, client) == v1  # a failed rollback changes nothing


def test_status_reads_the_champion_mlflow_holds_without_importing_it(store_uri, client, name, model_dir, tmp_path):
    from actprm.config import Settings
    from tasks.status import _champion

    uri, _ = store_uri
    settings = Settings(home=tmp_path, mlflow_tracking_uri=uri, registry={"model_name": name})
    assert _champion(settings) is None  # no such model yet
    v1, v2 = _versions(client, model_dir, 2, name)
    assert _champion(settings) is None  # versions, but no champion
    promotion_gate(client, name, v1, 0.5, eval_set="s")
    assert _champion(settings) == champion_version(name, client) == v1
    promote(name, version=v2, client=client)
    assert _champion(settings) == champion_version(name, client) == v2
    promote(name, rollback=True, client=client)
    assert _champion(settings) == v1


def test_promote_unknown_version_names_the_known_ones(client, name, model_dir):
    _versions(client, model_dir, 2, name)
    with pytest.raises(ActPRMError, match=r"no version 7 \(versions: 1, 2\)"):
        promote(name, version=7, client=client)
    with pytest.raises(ActPRMError, match="no registered model"):
        promote("nope", version=1, client=client)


def test_run_params_are_flat_strings_without_secrets(client):
    with start_run("params", {"stage": "test"}) as run:
        logged = log_params({"judge": {"api_key": "sk-secret", "model": "m"}, "note": "x" * 7000})
    params = client.get_run(run.info.run_id).data.params
    assert params["judge.model"] == "m" and params["judge.api_key"] == "***"
    assert len(params["note"]) == 6000 and logged == params
    assert client.get_run(run.info.run_id).data.tags["stage"] == "test"
    assert flatten_params({"a": {"b": 1}}) == {"a.b": "1"}


def test_runs_started_in_a_flow_run_carry_its_id(client, monkeypatch):
    # Prefect exposes the flow-run id to flow code (and to workers' subprocesses via this variable).
    import prefect.runtime.flow_run  # noqa: F401 - inside a flow run Prefect is always imported

    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b4c9a57-flow-run")
    with start_run("in-flow") as run:
        pass
    assert client.get_run(run.info.run_id).data.tags["prefect.flow_run_id"] == "0b4c9a57-flow-run"


def test_champion_round_trip_loads_offline_with_same_scores(client, name, tmp_path):
    models = pytest.importorskip("models")
    from tasks.evaluate import predict_step_scores

    model, tokenizer = models.build_prm("tiny", num_heads=3, seed=0)
    saved = model.save_pretrained(tmp_path / "tiny", tokenizer)
    questions, steps = ["What is 2+3?"], [["2+3 = 5.", "So the answer is 5."]]
    expected = predict_step_scores(model, tokenizer, questions, steps)

    with start_run("round-trip"):
        version = log_model(saved, name=name, client=client)
    promotion_gate(client, name, version, 0.5, eval_set="s")

    loaded, loaded_tok, loaded_version = load_champion(name, client=client)
    assert loaded_version == version
    assert predict_step_scores(loaded, loaded_tok, questions, steps)[0] == pytest.approx(expected[0], abs=1e-6)

    # The pyfunc flavor serves the same scores through the documented schema.
    import pandas as pd

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = pyfunc.predict(pd.DataFrame({"question": questions, "steps": steps}))
    assert list(out["step_scores"][0]) == pytest.approx(expected[0], abs=1e-6)
    # The schema says steps is a list: a string is refused, naming the column.
    with pytest.raises(mlflow.exceptions.MlflowException, match="steps"):
        pyfunc.predict(pd.DataFrame({"question": questions, "steps": [json.dumps(steps[0])]}))


def test_load_champion_without_one_is_a_clear_error(client, name, model_dir):
    _versions(client, model_dir, 1, name)
    with pytest.raises(ActPRMError, match="no 'champion' yet"):
        load_champion(name, client=client)


@pytest.mark.slow
def test_loop_stages_evaluate_register_and_restart_from_champion(store_uri, client, tmp_path):
    """The flow's view: fresh model -> evaluate on the held-out split -> register + gate -> the next
    round starts from the champion; `actprm evaluate` then scores the champion on a pool and a file."""
    pytest.importorskip("models")
    from actprm.config import Settings
    from actprm.store import Store
    from actprm.testing.pools import synth_pool
    from actprm.metrics import processbench_metrics
    from tasks.evaluate import evaluate_on_store, evaluate_request, evaluate_round
    from tasks.model_source import load_model, starting_model
    from tasks.register import register_round

    uri, _ = store_uri
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=uri, experiment="test",
                        model={"preset": "tiny", "num_heads": 3, "max_length": 256},
                        registry={"model_name": "prm-stages"})
    with Store(settings.duckdb_path) as store:
        synth_pool(store, "toy", 40, seed=1, eval_every=4)

    model_dir, key = starting_model(settings)
    assert key == "init:tiny:h3:s0" and starting_model(settings) == (model_dir, key)  # built once

    with start_run("round-1") as run:
        evaluation = evaluate_round(settings, "toy", model_dir, run.info.run_id)
    assert evaluation.result["n"] == 10 and evaluation.result["subsets"]["toy"]["n"] == 10
    assert sum(k["n"] for k in evaluation.result["error_kinds"].values()) == 10
    assert client.get_run(run.info.run_id).data.metrics["eval_f1"] == pytest.approx(evaluation.f1)
    # and F1 at a threshold cross-fitted on the split's two folds, which the gate does not use
    assert client.get_run(run.info.run_id).data.metrics["eval_f1_tuned"] == pytest.approx(evaluation.result["f1_tuned"])

    # The same numbers from the pure metric on the model's step scores and the gold labels.
    model, tokenizer, _ = load_model(model_dir)
    with Store(settings.duckdb_path) as store:
        again = evaluate_on_store(store, "toy", model, tokenizer, max_length=256)
        gold = store.trajectories(store.pool_trajectory_ids("toy", "eval"))
    assert again["f1"] == pytest.approx(evaluation.f1) and again["eval_set"] == evaluation.eval_set
    from tasks.evaluate import predict_step_scores

    scores = predict_step_scores(model, tokenizer, [t["question"] for t in gold], [t["steps"] for t in gold],
                                 max_length=256)
    records = [{"id": t["id"], "label": t["gold_first_error"], "subset": "toy"} for t in gold]
    assert processbench_metrics(records, dict(zip([t["id"] for t in gold], scores)))["f1"] == pytest.approx(
        evaluation.f1)
    from actprm.metrics import processbench_crossfit

    assert processbench_crossfit(records, dict(zip([t["id"] for t in gold], scores)))["f1"] == pytest.approx(
        evaluation.result["f1_tuned"])

    registered = register_round(settings, model_dir, evaluation, run.info.run_id)
    assert registered.decision == "promoted" and registered.model_version_key == "prm-stages/v1"
    champion_dir, champion_key = starting_model(settings)
    assert champion_key == "prm-stages/v1" and champion_dir != model_dir

    on_pool = evaluate_request(settings, pool="toy")
    assert on_pool["model_version"] == 1 and on_pool["f1"] == pytest.approx(evaluation.f1)

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"id": t["id"], "problem": t["question"], "steps": t["steps"],
                                        "label": t["gold_first_error"]}) + "\n" for t in gold))
    on_file = evaluate_request(settings, data=str(data))
    assert on_file["benchmark"] == "processbench" and on_file["f1"] == pytest.approx(evaluation.f1)


def test_a_rerun_ends_the_killed_runs_of_its_loop_failed_and_opens_its_own(store_uri, client, tmp_path):
    """Every invocation opens runs of its own; those a killed invocation of the loop left RUNNING end FAILED when a
    rerun continues the loop, and another loop's running runs are left alone."""
    import tasks.pipeline as pipeline
    from actprm.config import Settings

    uri, _ = store_uri
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=uri, experiment="test")

    def invocation(loop):
        parent = pipeline.open_run(settings, "active_learning", {"pool": "p", "loop": loop})
        return parent, pipeline.open_run(settings, "round-1", {"pool": "p", "round": 1, "loop": loop},
                                         parent=parent)

    killed, other = invocation("loop-a"), invocation("loop-b")
    assert pipeline.fail_unfinished_runs(settings, ["loop-a"]) == 2
    assert [client.get_run(r).info.status for r in killed] == ["FAILED", "FAILED"]
    assert [client.get_run(r).info.status for r in other] == ["RUNNING", "RUNNING"]
    rerun = invocation("loop-a")
    assert set(rerun).isdisjoint(killed) and client.get_run(rerun[1]).data.tags["mlflow.parentRunId"] == rerun[0]


def test_a_retried_round_gates_the_version_it_already_registered(store_uri, client, model_dir, tmp_path):
    from actprm.config import Settings
    from tasks.evaluate import Evaluation
    from tasks.register import register_round

    uri, _ = store_uri
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=uri, experiment="test",
                        registry={"model_name": "prm-retried-round"})
    with start_run("round-1") as run:
        pass
    first = register_round(settings, str(model_dir), Evaluation(f1=0.4), run.info.run_id)
    again = register_round(settings, str(model_dir), Evaluation(f1=0.4), run.info.run_id)
    assert first.model_version_key == again.model_version_key == "prm-retried-round/v1"
    assert len(client.search_model_versions("name='prm-retried-round'")) == 1
    assert champion_version("prm-retried-round", client) == 1
    with start_run("round-2") as run:
        pass
    assert register_round(settings, str(model_dir), Evaluation(f1=0.5), run.info.run_id).model_version_key == \
        "prm-retried-round/v2"  # another round's run registers its own version
