"""Bookkeeping shared by the flows: the built-in sample pool, MLflow runs, the loop's durable state, round records,
stopping rules, summaries.

Not a stage of its own: these plain functions make a flow run observable (MLflow runs tagged with the Prefect
flow-run id, markdown/table artifacts), continue a killed loop and set up the embedded defaults. Their Prefect
tasks are in flows/prefect_tasks.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from actprm.config import Settings
from actprm.judges import judge_identity
from actprm.runlog import ProgressArtifact, stage_logger
from actprm.store import Store
from actprm.tracking import configure_mlflow, flatten_params, prefect_flow_run_id

if TYPE_CHECKING:
    from tasks.evaluate import Evaluation
    from tasks.label import LabelSummary
    from tasks.register import Registration
    from tasks.score import ScoreSummary
    from tasks.train import TrainResult


def sample_pool(settings: Settings, pool: str) -> str | None:
    """The embedded default: the built-in sample pool's file, written on first use (None when the
    pool is already ingested). Any other unknown pool, or one whose ingest did not finish, is a clear error;
    the default pool is then ingested again (its file is the same, so nothing is added twice)."""
    with Store(settings.duckdb_path) as store:
        if store.pool_status(pool) == "registered":
            return None
        if pool != settings.default_pool:
            store.require_pool(pool)
    from actprm.synth import mix_tag, write_pool

    synth = settings.synth
    path = settings.home / "data" / f"{pool}-n{synth.n}-s{synth.seed}{mix_tag(synth.mix)}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pool(path, n=synth.n, seed=synth.seed, error_rate=synth.error_rate, mix=synth.mix)
    return str(path)


def open_run(settings: Settings, name: str, tags: dict[str, Any], parent: str | None = None) -> str:
    """Create an MLflow run (nested under `parent`) tagged `actprm.<tag>` and with the Prefect flow-run id; returns
    its id.

    Runs are created by id rather than kept active in the flow, so that each task logs into the right run wherever
    Prefect executes it. Every invocation opens runs of its own: a rerun that continues a loop (`open_loop`)
    first ends the killed invocation's runs FAILED, and finds what they did through the loop's durable state.
    """
    experiment_id = configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    client = MlflowClient(settings.tracking_uri)
    flow_run_id = prefect_flow_run_id()
    all_tags = {f"actprm.{k}": str(v) for k, v in tags.items()}
    all_tags["mlflow.runName"] = name
    if flow_run_id:
        all_tags["prefect.flow_run_id"] = flow_run_id
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, tags=all_tags, run_name=name)
    if parent is None:
        for key, value in flatten_params(settings.model_dump(mode="json", exclude={"judge": {"api_key"}})).items():
            client.log_param(run.info.run_id, key, value)
    return run.info.run_id


# -- the loop: what a rerun continues ------------------------------------------------------------------------
# What identifies "the same loop": the pool and the settings that decide which trajectories its rounds buy and what
# its models learn from them. Stopping rules (loop.rounds, loop.plateau_rounds), money caps (budget.*), how the judge
# is reached (url, concurrency, timeouts, retries, breaker), scoring batch and shard sizes, checkpoint spacing and
# the promotion margin do not: a rerun that changes only those continues the loop (e.g. more rounds, a new cap).
LOOP_SHAPING = {
    "model": None,  # every field
    "train": ("epochs", "batch_size", "grad_accum", "lr", "head_lr", "weight_decay", "warmup_ratio", "seed",
              "in_training_selection", "mixed_precision"),
    "uncertainty": ("strategy", "p_threshold", "std_threshold"),
    "loop": ("labels_per_round", "eval_fraction", "warm_start", "train_on"),
    "registry": ("model_name",),
}
# Shaping settings added after loops were first keyed: hashed only when set away from their default, so the key of a
# loop opened before them (at their default) stays the same and a rerun still continues it.
LATER_SHAPING = {"train": ("warmup_steps", "max_grad_norm")}


def loop_shaping(settings: Settings, pool: str) -> dict[str, Any]:
    """The pool and the settings of LOOP_SHAPING, with the judge as labels are cached under (model, prompt)."""
    judge_model, prompt_version = judge_identity(settings)
    shaping: dict[str, Any] = {"pool": pool, "judge": {"backend": settings.judge.backend, "model": judge_model,
                                                       "prompt_version": prompt_version}}
    for section, fields in LOOP_SHAPING.items():
        values = getattr(settings, section).model_dump(mode="json")
        shaping[section] = values if fields is None else {f: values[f] for f in fields}
    for section, fields in LATER_SHAPING.items():
        defaults = type(getattr(settings, section)).model_fields
        for f in fields:
            value = getattr(getattr(settings, section), f)
            if value != defaults[f].get_default(call_default_factory=True):
                shaping[section][f] = value
    return shaping


def loop_key(shaping: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _running_elsewhere(owner: str | None) -> int | None:
    """The pid of another live process on this host that owns a loop, None when there is none."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return int(pid)


def open_loop(settings: Settings, pool: str, fresh: bool = False) -> dict[str, Any]:
    """The loop this run works on: the pool's unfinished loop of the same settings (`loop_shaping`), continued, or
    a new one (always with `fresh`, which abandons the unfinished one). Returns {loop_id, resumed, start_model_dir,
    start_model_version, abandoned, failed_runs}.

    Whatever a killed or failed invocation of a continued (or abandoned) loop left RUNNING in MLflow ends FAILED
    here; an abandoned loop's training checkpoints are removed (a 7B model's optimizer state is tens of GB).
    """
    from actprm.errors import ActPRMError
    from tasks.train import drop_checkpoints, loop_train_dir

    shaping = loop_shaping(settings, pool)
    key = loop_key(shaping)
    abandoned: list[str] = []
    with Store(settings.duckdb_path) as store:
        unfinished = store.open_loops(pool)
        same = [loop for loop in unfinished if loop["loop_key"] == key]
        for loop in same:
            pid = _running_elsewhere(loop["owner"])
            if pid is not None:
                raise ActPRMError(f"loop {loop['loop_id']} on pool {pool!r} is being run by process {pid}; wait for "
                                  f"it to end, or stop it and rerun (it continues) or rerun with --fresh")
        if fresh:
            for loop in same:
                store.set_loop_status(loop["loop_id"], "abandoned")
                abandoned.append(loop["loop_id"])
            same = []
        if same:
            loop = same[0]
            store.claim_loop(loop["loop_id"], _owner())
        else:
            loop = {"loop_id": "loop-" + uuid.uuid4().hex[:12], "start_model_dir": None, "start_model_version": None}
            store.create_loop(loop["loop_id"], pool, key, json.dumps(shaping, sort_keys=True), _owner())
        others = [other["loop_id"] for other in unfinished if other["loop_key"] != key]
    if others:
        print(f"pool {pool!r} has unfinished loop(s) {', '.join(others)} under other settings: they stay as they are "
              f"(a rerun with their settings continues them)")
    for gone in abandoned:
        drop_checkpoints(loop_train_dir(settings, pool, gone))
    failed = fail_unfinished_runs(settings, [loop["loop_id"], *abandoned])
    resumed = bool(same)
    if resumed:
        print(f"continuing loop {loop['loop_id']} on pool {pool!r} ({failed} MLflow run(s) of the killed run ended "
              f"FAILED); pass --fresh to start over")
    return {"loop_id": loop["loop_id"], "resumed": resumed, "start_model_dir": loop["start_model_dir"],
            "start_model_version": loop["start_model_version"], "abandoned": abandoned, "failed_runs": failed}


def fail_unfinished_runs(settings: Settings, loop_ids: list[str]) -> int:
    """End FAILED every MLflow run of these loops still RUNNING: left by a killed or failed invocation (a loop has
    one invocation at a time, `open_loop`). Returns how many."""
    experiment_id = configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    client = MlflowClient(settings.tracking_uri)
    ended = 0
    for loop_id in loop_ids:
        for run in client.search_runs([experiment_id], filter_string=f"tags.`actprm.loop` = '{loop_id}' "
                                      "AND attributes.status = 'RUNNING'", max_results=10_000):
            client.set_terminated(run.info.run_id, "FAILED")
            ended += 1
    return ended


def loop_start(settings: Settings, loop: dict[str, Any]) -> tuple[str, str]:
    """(folder, model-version key) round 1 of the loop starts from: fixed the first time (the champion, else a fresh
    model), so a continued loop does not start from a champion its own killed round 1 registered."""
    from actprm.errors import ActPRMError
    from tasks.model_source import starting_model

    folder, version = loop["start_model_dir"], loop["start_model_version"]
    if folder is None:
        folder, version = starting_model(settings)
        with Store(settings.duckdb_path) as store:
            store.set_loop_start(loop["loop_id"], folder, version)
    elif not (Path(folder) / "prm_config.json").is_file():
        name, _, number = version.rpartition("/v")
        if not number.isdigit():
            raise ActPRMError(f"loop {loop['loop_id']} started from {folder}, which is gone; start over with --fresh")
        folder, _ = starting_model(settings, f"models:/{name}/{number}")
    return folder, version


def registered_round(settings: Settings, loop_id: str, pool: str, k: int) -> TrainResult | None:
    """Round k's model when an earlier invocation of the loop registered it (and died before recording the round),
    as train_round's result with the MLflow run that registered it; None when none did. Such a round is not
    trained or registered again: it is evaluated and gated again on the version it has."""
    from tasks.model_source import resolve_model_dir
    from tasks.train import MODEL_DIR, RESULT_FILE, TrainResult, round_dir

    experiment_id = configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    client = MlflowClient(settings.tracking_uri)
    name = settings.registry.model_name
    runs = client.search_runs([experiment_id], filter_string=f"tags.`actprm.loop` = '{loop_id}' AND "
                              f"tags.`actprm.round` = '{k}'", order_by=["attributes.start_time ASC"])
    for run in runs:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
        if not versions:
            continue
        version = min(int(v.version) for v in versions)
        out = round_dir(settings, pool, k, loop=loop_id)
        folder = out / MODEL_DIR
        if not (folder / "prm_config.json").is_file():
            folder, _ = resolve_model_dir(f"models:/{name}/{version}")
        result = json.loads((out / RESULT_FILE).read_text()) if (out / RESULT_FILE).is_file() else {}
        return TrainResult(str(folder), result.get("train_trajectories"), result.get("steps"),
                           mlflow_run_id=run.info.run_id)
    return None


def close_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(settings.tracking_uri).set_terminated(run_id, status)


def round_record(k: int, scored: ScoreSummary, labeled: LabelSummary, trained: TrainResult,
                 evaluation: Evaluation | None, registered: Registration | None) -> dict[str, Any]:
    """What the loop's history, its `rounds` rows and its summary keep of a round."""
    return {
        "round": k,
        "scored": scored.scored + scored.skipped_already_scored,
        "uncertain": scored.uncertain,
        # The round's selection as labeled by the judge, whenever bought: a continued loop finds what the killed
        # invocation bought for it in the label cache (selection leaves out what was labeled before it).
        "labels_bought": labeled.labeled + labeled.cached,
        "label_failed": labeled.failed,
        "judge_tokens": labeled.tokens,
        "judge_cost": labeled.cost,
        "train_trajectories": trained.train_trajectories,
        "f1": None if evaluation is None else evaluation.f1,
        "model_version": None if registered is None else registered.version,
        "promoted": None if registered is None else registered.decision == "promoted",
        "mlflow_run_id": trained.mlflow_run_id,
    }


def finished_rounds(settings: Settings, loop_id: str,
                         pool: str) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """The rounds earlier invocations of this loop finished, as `round_record`s, first round first, and the model
    the next round starts from: (folder, model-version key) of the version the last of them registered, None for a
    new loop.

    Only the leading run of rounds 1, 2, ... counts. The folder is the one that round trained into when this
    host still has it (so the next round is the one the first attempt started), else the registry's copy.
    """
    from tasks.model_source import model_version_key, resolve_model_dir
    from tasks.train import MODEL_DIR, round_dir

    with Store(settings.duckdb_path) as store:
        rows = sorted(store.rounds(loop_id, limit=1_000_000), key=lambda r: r["round"])
    finished = []
    for row in rows:
        if row["round"] != len(finished) + 1 or row["model_version"] is None:
            break
        finished.append({"round": row["round"], "scored": None, "uncertain": None,
                         "labels_bought": row["labels_bought"], "label_failed": None, "judge_tokens": None,
                         "judge_cost": None, "train_trajectories": row["train_trajectories"], "f1": row["f1"],
                         "model_version": int(row["model_version"]), "promoted": row["promoted"],
                         "mlflow_run_id": row["mlflow_run_id"], "stopped_because": row["stopped_because"]})
    if not finished:
        return [], None
    last = finished[-1]
    name = settings.registry.model_name
    folder = round_dir(settings, pool, last["round"], loop=loop_id) / MODEL_DIR
    if not (folder / "prm_config.json").is_file():
        configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
        folder, _ = resolve_model_dir(f"models:/{name}/{last['model_version']}")
    return finished, (str(folder), model_version_key(name, last["model_version"]))


def rounds_without_gain(history: list[dict[str, Any]]) -> int:
    """Rounds since the best F1 so far, for the plateau rule (a round without an F1 is no gain): derived from the
    history, so a retried flow run counts the rounds its earlier attempts finished."""
    best, without = float("-inf"), 0
    for record in history:
        if record["f1"] is not None and record["f1"] > best:
            best, without = record["f1"], 0
        else:
            without += 1
    return without


def plateaued(history: list[dict[str, Any]], plateau_rounds: int) -> bool:
    """The plateau rule: `plateau_rounds` rounds in a row without an F1 gain (none before the first round)."""
    without = rounds_without_gain(history)
    return bool(without) and without >= plateau_rounds


# Why the loop stops after a round that finished; a retried flow run stops where its earlier attempt had decided
# to (the judge's circuit breaker is not among them: a retry, later, should try the judge again).
FINAL_STOPS = ("budget", "plateau", "nothing_uncertain")


def stop_after_round(history: list[dict[str, Any]], labeled: LabelSummary, selected: list,
                     plateau_rounds: int) -> str | None:
    """Why the loop stops after the last round of `history` (None: it goes on)."""
    if labeled.stopped_because in ("budget", "circuit_open"):
        return labeled.stopped_because
    if plateaued(history, plateau_rounds):
        return "plateau"
    return None if selected else "nothing_uncertain"


def stopped_before(history: list[dict[str, Any]], plateau_rounds: int) -> str | None:
    """Why an earlier attempt of this flow run had stopped after its finished rounds, None when it had not: the
    reason it recorded with its last round, or the plateau rule on them (rounds recorded before reasons were)."""
    if not history:
        return None
    if history[-1].get("stopped_because") in FINAL_STOPS:
        return history[-1]["stopped_because"]
    return "plateau" if plateaued(history, plateau_rounds) else None


def record_round(settings: Settings, loop_id: str, parent: str, pool: str, record: dict, run_id: str,
                      total_rounds: int | None = None) -> None:
    with Store(settings.duckdb_path) as store:
        store.record_round(loop_id, record["round"], pool, labels_bought=record["labels_bought"],
                           train_trajectories=record["train_trajectories"], f1=record["f1"],
                           model_version=None if record["model_version"] is None else str(record["model_version"]),
                           promoted=record["promoted"], mlflow_run_id=run_id,
                           stopped_because=record.get("stopped_because"))
    client = MlflowClient(settings.tracking_uri)
    if record["f1"] is not None:
        client.log_metric(parent, "f1", record["f1"], step=record["round"])
    client.log_metric(parent, "labels_bought", record["labels_bought"], step=record["round"])
    if total_rounds:
        ProgressArtifact(f"rounds-{pool}", f"Active-learning rounds on {pool}").update(record["round"], total_rounds)


def finish(settings: Settings, loop_id: str | None, parent: str, pool: str, history: list[dict],
                stopped_because: str) -> dict:
    """Close the loop (None: a flow without one) and the flow's MLflow run, and post a markdown summary + table
    artifact to Prefect."""
    from tasks.champion import champion_version

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    champion = champion_version(settings.registry.model_name)
    with Store(settings.duckdb_path) as store:
        from actprm.judges.budget import BudgetLimits, budget_left

        left = budget_left(store, pool, BudgetLimits.from_settings(settings.budget))
        report = next((p["report"] for p in store.pools() if p["name"] == pool), None)
    summary = {
        "pool": pool,
        "loop": loop_id,
        "rounds": [{k: r[k] for k in ("round", "labels_bought", "f1", "model_version", "promoted", "uncertain",
                                      "train_trajectories")} for r in history],
        "champion": champion,
        "stopped_because": stopped_because,
        "budget_left": left,
        "mlflow_run_id": parent,
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow_ui": mlflow_ui_command(settings),
        "duckdb": str(settings.duckdb_path.resolve()),
        "data_docs": report,
    }
    client = MlflowClient(settings.tracking_uri)
    client.log_dict(parent, summary, "summary.json")
    client.set_terminated(parent, "FINISHED")
    stage_logger().info("active learning on %s stopped (%s) after %d rounds: %d labels bought, F1 by round %s, "
                        "champion v%s", pool, stopped_because, len(history),
                        sum(r["labels_bought"] or 0 for r in history), [r["f1"] for r in history], champion)
    summary["mlflow_run_url"] = mlflow_run_link(settings, parent)
    summary["summary"] = human_summary(summary)
    publish_artifacts(summary)
    # Last: a run killed before this line is continued by its rerun, which finds every round done and only finishes.
    if loop_id is not None:
        with Store(settings.duckdb_path) as store:
            store.set_loop_status(loop_id, "finished")
    return summary


def mlflow_ui_command(settings: Settings) -> str:
    uri = settings.tracking_uri
    if uri.startswith("http"):
        return f"open {uri}"
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"


def human_summary(s: dict) -> str:
    lines = [f"ActPRM active learning on pool {s['pool']!r}: {len(s['rounds'])} round(s), stopped: "
             f"{s['stopped_because']}"]
    for r in s["rounds"]:
        f1 = "-" if r["f1"] is None else f"{r['f1']:.3f}"
        lines.append(f"  round {r['round']}: uncertain {r.get('uncertain')}, labels bought {r['labels_bought']}, "
                     f"trained on {r['train_trajectories']}, F1 {f1}, model v{r['model_version']}"
                     f"{' (promoted)' if r['promoted'] else ''}")
    lines += [
        f"champion: {'v' + str(s['champion']) if s['champion'] else 'none'}",
        f"budget left: {json.dumps(s['budget_left'])}",
        "where to look:",
        f"  MLflow UI:  {s['mlflow_ui']}",
        f"  Data Docs:  {s['data_docs'] or '(no report for this pool)'}",
        f"  DuckDB:     {s['duckdb']}",
        "  status:     .venv/bin/actprm status",
    ]
    return "\n".join(lines)


def mlflow_run_link(settings: Settings, run_id: str) -> str | None:
    """A browsable link to an MLflow run when the store is a tracking server."""
    uri = settings.tracking_uri
    if not uri.startswith("http"):
        return None
    run = MlflowClient(uri).get_run(run_id)
    return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def publish_artifacts(summary: dict) -> None:
    """Markdown + table artifacts on the Prefect flow run (no-op outside a flow run)."""
    if prefect_flow_run_id() is None:
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    link = summary.get("mlflow_run_url")
    markdown = "```\n" + summary["summary"] + "\n```"
    markdown += f"\n\nMLflow run: [{summary['mlflow_run_id']}]({link})" if link else \
        f"\n\nMLflow run id: `{summary['mlflow_run_id']}` (store: `{summary['mlflow_tracking_uri']}`)"
    create_markdown_artifact(markdown=markdown, key="actprm-summary", description="ActPRM run summary")
    if summary["rounds"]:
        create_table_artifact(table=summary["rounds"], key="actprm-rounds", description="Rounds")
