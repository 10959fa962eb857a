"""`actprm`: the command line. Each subcommand is a thin call into the flows the deployments run.

With `--json` a subcommand prints exactly one JSON object on stdout; everything else (Prefect
logs, progress bars) goes to stderr. Errors exit 1 with a one-line message (a traceback only
with `--debug`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from actprm import local_prefect
from actprm.config import ConfigError, Settings, load_settings, runtime_environment

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ActPRM: active learning for process reward models (Duan et al., 2025).",
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file (else $ACTPRM_CONFIG).")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Model preset: tiny, cpu, qwen2.5-math-7b.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Input format (auto-detected).")]
PoolOpt = Annotated[Optional[str], typer.Option("--pool", help="Pool name (default: the built-in sample pool).")]


def prepare(config: Path | None, overrides: dict[str, Any] | None = None, flow: str | None = None) -> Settings:
    """Settings for this invocation, with the offline/no-analytics environment applied. `flow`: the module of
    the flow the command runs; it is imported while a temporary Prefect API starts (when none is configured)."""
    settings = load_settings(overrides, config_file=config)
    for key, value in runtime_environment(settings).items():
        os.environ.setdefault(key, value)
    # Keep ephemeral Prefect's state in the work dir, next to the DuckDB file and MLflow store.
    os.environ.setdefault("PREFECT_HOME", str((settings.home / "prefect").resolve()))
    settings.home.mkdir(parents=True, exist_ok=True)
    if flow:
        local_prefect.start()  # before Prefect is imported: it reads PREFECT_API_URL then
    if not _state["debug"]:
        _quiet_tracebacks()  # after the environment is set: importing Prefect reads it
    if flow:
        local_prefect.ready(preload=flow)
    return settings


_state = {"debug": False}


def _quiet_tracebacks() -> None:
    """Without --debug users see no tracebacks, including those Prefect logs for failed runs.

    Prefect installs its log handlers lazily (at the first flow run), so handler filters would
    come too late; a record factory sees every record whatever handler prints it.
    """
    base = logging.getLogRecordFactory()
    if getattr(base, "_actprm_quiet", False):
        return

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        record.exc_info = None
        record.exc_text = None
        if isinstance(record.msg, str) and "Traceback (most recent call last)" in record.msg:
            record.msg = record.msg.split("\nTraceback (most recent call last)")[0]
        return record

    factory._actprm_quiet = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def command(fn):
    """Shared behaviour of every subcommand: stdout discipline, JSON output, one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args, json_out: bool = False, debug: bool = False, **kwargs):
        real_stdout = sys.stdout
        _state["debug"] = debug
        try:
            # Anything a library prints goes to stderr so that stdout carries only our result.
            with contextlib.redirect_stdout(sys.stderr):
                result = fn(*args, **kwargs)
        except (KeyboardInterrupt, typer.Exit):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI boundary turns every error into one line
            if debug:
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            if json_out:
                print(json.dumps({"error": message, "type": type(exc).__name__}), file=real_stdout)
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(1) from None
        if json_out:
            print(json.dumps(_strict_json(result), default=str, allow_nan=False), file=real_stdout)
        else:
            _print_human(result, real_stdout)
        return result

    return wrapper


def _strict_json(value: Any) -> Any:
    """NaN/inf become null: strict JSON parsers reject the bare NaN that json.dumps writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _print_human(result: Any, out) -> None:
    if isinstance(result, dict) and "summary" in result and isinstance(result["summary"], str):
        print(result["summary"], file=out)
        return
    print(json.dumps(result, indent=2, default=str), file=out)


# ---------------------------------------------------------------------------------------------
@app.command()
def synth(
    path: Annotated[Path, typer.Argument(help="Output file: .jsonl, .jsonl.gz, .jsonl.zst or .parquet")],
    n: Annotated[int, typer.Option("--n", help="Number of trajectories.")] = 2000,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    error_rate: Annotated[float, typer.Option(help="Share with an injected first error.")] = 0.5,
    mix: Annotated[str, typer.Option("--mix", help="Error-kind mix: uniform, or reading (70% errors of reading).")] = "uniform",
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Write a synthetic pool of arithmetic word-problem trajectories (deterministic by seed)."""

    @command
    def _run():
        prepare(config)
        from actprm.synth import write_pool

        return write_pool(path, n=n, seed=seed, error_rate=error_rate, progress=not json_out, mix=mix)

    _run(json_out=json_out, debug=debug)


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, globs or directories (JSONL, .gz, .zst, Parquet).")],
    pool: Annotated[str, typer.Option("--pool", help="Name of the new pool.")],
    format: FormatOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Ingest a data pool into DuckDB, validate it and write its data-quality report."""

    @command
    def _run():
        from actprm.names import check_pool_name

        check_pool_name(pool)  # before any server starts or file is written
        settings = prepare(config)
        if not local_prefect.api_configured():
            # No Prefect server to report to: a temporary one would cost seconds to start and die with this
            # command, taking the flow's records with it. The same stages run as plain functions.
            from tasks.ingest import ingest as ingest_pool_now
            from tasks.ingest import ingest_settings

            return ingest_pool_now(settings.duckdb_path, paths, pool, format, emit=False,
                                   **ingest_settings(settings)).as_dict()
        from flows.ingest_pool import ingest_pool

        return ingest_pool(paths=paths, pool=pool, format=format)

    _run(json_out=json_out, debug=debug)


@app.command()
def score(
    pool: PoolOpt = None,
    preset: PresetOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model dir or models:/ URI (default: champion, else a fresh preset model).")] = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Acquisition strategy.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write per-trajectory scores to this Parquet file.")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Score a pool's uncertainty with the ensemble PRM (resumable)."""

    @command
    def _run():
        overrides = {"model": {"preset": preset}, "uncertainty": {"strategy": strategy}}
        settings = prepare(config, overrides, flow="flows.stages")
        from flows.stages import score_flow

        return score_flow(pool=pool or settings.default_pool, model=model,
                          export=str(export) if export else None, config=overrides)

    _run(json_out=json_out, debug=debug)


@app.command()
def label(
    pool: PoolOpt = None,
    judge: Annotated[Optional[str], typer.Option("--judge", help="openai | vllm | oracle | verifier")] = None,
    select: Annotated[str, typer.Option("--select", help="uncertain | random | all")] = "uncertain",
    judge_url: Annotated[Optional[str], typer.Option("--judge-url")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency")] = None,
    max_labels: Annotated[Optional[int], typer.Option("--max-labels", help="Cap on labels bought.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Cap on judge tokens.")] = None,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="Cap on money spent.")] = None,
    deadline: Annotated[Optional[float], typer.Option(
        "--deadline", help="Stop labeling after this many seconds (judge.run_deadline_s).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Buy step labels from a judge for a pool's trajectories, within the budget.

    Exits non-zero when it stops for the judge's health (circuit breaker open, every request failed, the
    deadline passed), keeping every label bought."""

    @command
    def _run():
        overrides = {
            "judge": {"backend": judge, "url": judge_url, "model": judge_model, "concurrency": concurrency,
                      "run_deadline_s": deadline},
            "budget": {"max_labels": max_labels, "max_tokens": max_tokens, "max_cost": max_cost},
        }
        settings = prepare(config, overrides, flow="flows.stages")
        from flows.stages import label_flow

        return label_flow(pool=pool or settings.default_pool, select=select, config=overrides)

    _run(json_out=json_out, debug=debug)


@app.command()
def train(
    pool: PoolOpt = None,
    preset: PresetOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Train the PRM on the judge labels of a pool, evaluate, register and run the promotion gate."""

    @command
    def _run():
        overrides = {"model": {"preset": preset}, "train": {"epochs": epochs}}
        settings = prepare(config, overrides, flow="flows.stages")
        from flows.stages import train_flow

        return train_flow(pool=pool or settings.default_pool, config=overrides)

    _run(json_out=json_out, debug=debug)


@app.command()
def evaluate(
    model: Annotated[Optional[str], typer.Option("--model", help="models:/actprm-prm@champion, a version URI or a model dir.")] = None,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="JSONL of {id, step_scores} from any PRM.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="ProcessBench or PRMBench: a file, or a folder of the split's files as shipped.")] = None,
    benchmark: Annotated[Optional[str], typer.Option(
        "--benchmark", help="processbench or prmbench: refuse --data that is not this benchmark (default: detect).")] = None,
    dev_data: Annotated[Optional[Path], typer.Option(
        "--dev-data", help="ProcessBench JSONL to tune the step threshold on (default: 0.5).")] = None,
    pool: Annotated[Optional[str], typer.Option(
        "--pool", help="Evaluate on this ingested pool's held-out eval split (instead of --data).")] = None,
    max_length: Annotated[Optional[int], typer.Option(
        "--max-length", help="Token budget per trajectory (default: the backbone's whole context).")] = None,
    allow_truncation: Annotated[bool, typer.Option(
        "--allow-truncation", help="Report the metric even when steps past --max-length were left unscored.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Evaluate a registered model or a predictions file (ProcessBench F1 / PRMBench PRMScore)."""

    @command
    def _run():
        prepare(config, flow="flows.evaluate_champion")  # exports ACTPRM_CONFIG and the offline environment; the flow loads its settings from them
        from flows.evaluate_champion import evaluate_champion

        return evaluate_champion(
            model=model, predictions=str(predictions) if predictions else None,
            data=str(data) if data else None, pool=pool, dev_data=str(dev_data) if dev_data else None,
            benchmark=benchmark, allow_truncation=allow_truncation, max_length=max_length,
        )

    _run(json_out=json_out, debug=debug)


@app.command()
def promote(
    version: Annotated[Optional[int], typer.Option("--version", help="Make this registered version the champion.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Give the champion alias back to the previous champion.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Move the `champion` alias by hand (or roll it back)."""

    @command
    def _run():
        settings = prepare(config)
        if (version is None) == (not rollback):
            raise ConfigError("give exactly one of --version N or --rollback")
        from actprm.tracking import configure_mlflow
        from tasks.champion import promote as promote_version

        configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
        return promote_version(settings.registry.model_name, version=version, rollback=rollback)

    _run(json_out=json_out, debug=debug)


@app.command()
def run(
    pool: PoolOpt = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Maximum active-learning rounds.")] = None,
    labels_per_round: Annotated[Optional[int], typer.Option("--labels-per-round")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge")] = None,
    preset: PresetOpt = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new loop even if the pool has an unfinished one of these settings (which a rerun otherwise continues).")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Run the whole active-learning loop (creating the built-in sample pool on first use). A rerun with the same
    pool and settings continues the loop a killed run left unfinished (docs/OPERATIONS.md)."""

    @command
    def _run():
        overrides = {
            "model": {"preset": preset}, "judge": {"backend": judge},
            "loop": {"rounds": rounds, "labels_per_round": labels_per_round},
            "uncertainty": {"strategy": strategy},
        }
        settings = prepare(config, overrides, flow="flows.active_learning")
        from flows.active_learning import active_learning
        from tasks.label import loop_judge_down

        summary = active_learning(pool=pool or settings.default_pool, config=overrides, fresh=fresh)
        if (judge_failed := loop_judge_down(summary)) is not None:  # "judge down" is not "done" for a script
            raise judge_failed
        return summary

    _run(json_out=json_out, debug=debug)


@app.command("one-shot")
def one_shot(
    pool: PoolOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Scoring PRM: model dir or models:/ URI (default: champion, else a fresh preset model).")] = None,
    keep_fraction: Annotated[Optional[float], typer.Option("--keep-fraction", help="Cap on the share of the pool kept, most uncertain first (default: no cap, keep all the rule flags).")] = None,
    in_training_selection: Annotated[bool, typer.Option("--in-training-selection", help="Also drop confident trajectories while training (the released script does not).")] = False,
    judge: Annotated[Optional[str], typer.Option("--judge")] = None,
    preset: PresetOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """The paper's one-shot filter: score a pool once, keep the uncertain, label them, train on them."""

    @command
    def _run():
        if keep_fraction is not None and not 0 < keep_fraction <= 1:
            raise ConfigError(f"--keep-fraction must be in (0, 1], got {keep_fraction}")
        overrides = {"model": {"preset": preset}, "judge": {"backend": judge}}
        settings = prepare(config, overrides)
        from flows.one_shot_filter import one_shot_filter

        return one_shot_filter(pool=pool or settings.default_pool, model=model, keep_fraction=keep_fraction,
                               in_training_selection=in_training_selection, config=overrides)

    _run(json_out=json_out, debug=debug)


# The name the README and the study's docs use for the same command.
app.command("one-shot-filter", hidden=True)(one_shot)


@app.command()
def status(
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Pools, rounds, budget left and the champion model."""

    @command
    def _run():
        settings = prepare(config)
        from tasks.status import pipeline_status

        return pipeline_status(settings)

    _run(json_out=json_out, debug=debug)


@app.command("repair-ledger")
def repair_ledger(
    price_per_1k_tokens: Annotated[float, typer.Option("--price-per-1k-tokens", help="Price to re-charge the broken rows' tokens at.")],
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Re-price budget ledger rows whose cost is NaN or infinite (left by an unchecked price) from their tokens."""

    @command
    def _run():
        settings = prepare(config, {"budget": {"price_per_1k_tokens": price_per_1k_tokens}})
        from actprm.store import Store

        with Store(settings.duckdb_path) as store:
            repaired = store.ledger_reprice_nonfinite(settings.budget.price_per_1k_tokens)
            spent = store.budget_spent(None)
        return {"repaired_rows": repaired, "spent": spent}

    _run(json_out=json_out, debug=debug)


@app.command()
def study(
    pool: Annotated[Optional[str], typer.Option("--pool", help="A pool with gold labels (default: the study preset's synthetic pool, created on first use).")] = None,
    preset: PresetOpt = None,
    study_preset: Annotated[str, typer.Option("--study-preset", help="quick (minutes) or full (30 min on 2 cores).")] = "quick",
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated seeds (default: the study preset's).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Where al_study.json/.md/.png go (default: <home>/reports/study).")] = None,
    extend: Annotated[bool, typer.Option("--extend", help="Add --seeds to the study already in --output; seeds it has are not rerun.")] = False,
    strategies: Annotated[Optional[str], typer.Option("--strategies", help="Comma-separated subset of actprm,random,entropy,bald (default: all four); oracle, a diagnostic that buys by the gold labels, only when named.")] = None,
    fields: Annotated[Optional[list[str]], typer.Option("--set", metavar="FIELD=VALUE", help="Change a study preset field for a variant, e.g. --set final_retrain=true --set budgets=0.2,0.5,1.0 (repeatable; the outputs name the variant).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """The active-learning efficiency study: ActPRM vs random, entropy, BALD and full data."""

    @command
    def _run():
        overrides = {"model": {"preset": preset}}
        from study import protocol as study_tasks

        # Bad variants are refused before any server starts or pool is made.
        changes, chosen = study_tasks.parse_fields(fields), study_tasks.strategy_names(strategies)
        study_tasks.customize(study_tasks.study_preset(study_preset), changes)
        prepare(config, overrides, flow="study.flow")
        from study.flow import study_flow

        # No --pool: the study preset's own synthetic pool, the one study/scripts/run.py measures.
        return study_flow(pool=pool, study_preset=study_preset, config=overrides,
                          seeds=study_tasks.parse_seeds(seeds), output_dir=str(output) if output else None,
                          extend=extend, preset_overrides=changes, strategies=list(chosen))

    _run(json_out=json_out, debug=debug)


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="A model folder (ActPRM, an export, Qwen2.5-Math-PRM, released ActPRM), a models:/ URI, or an "
                    "alias of the registered model (e.g. champion). Default: the champion.")]


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be empty or absent unless --overwrite).")],
    model: ModelOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Export a PRM as a self-contained Hugging Face folder (AutoModel + trust_remote_code), with a model card."""

    @command
    def _run():
        settings = prepare(config)
        from actprm.tracking import configure_mlflow
        from tasks.export import export_model

        configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
        return export_model(model, out, model_name=settings.registry.model_name, overwrite=overwrite)

    _run(json_out=json_out, debug=debug)


DataArg = Annotated[list[str], typer.Option("--data", help="Input files, globs or folders in any supported format "
                                                              "(JSONL, .gz, .zst, Parquet); repeatable.")]
MaxLengthOpt = Annotated[Optional[int], typer.Option(
    "--max-length", help="Token budget per trajectory (default: the backbone's whole context).")]
AllowTruncationOpt = Annotated[bool, typer.Option(
    "--allow-truncation", help="Succeed even when steps past --max-length are left unscored (they are counted).")]


def _scoring_settings(config: Path | None) -> dict:
    """What `predict` and `rerank` take from the settings (the registry, batch size, input limits), with MLflow set
    up so that `models:/` URIs resolve."""
    settings = prepare(config)
    from actprm.tracking import configure_mlflow
    from tasks.ingest import IngestLimits

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    return {"model_name": settings.registry.model_name, "batch_size": settings.uncertainty.batch_size,
            "limits": IngestLimits.from_settings(settings)}


@app.command()
def predict(
    data: DataArg,
    output: Annotated[Path, typer.Option("--output", help="JSONL to write, one line per trajectory.")],
    model: ModelOpt = None,
    format: FormatOpt = None,
    max_length: MaxLengthOpt = None,
    allow_truncation: AllowTruncationOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Score every step of every trajectory in a file: per-step mean and std over the heads, the ActPRM flag."""

    @command
    def _run():
        from tasks.predict import predict as run_predict

        return run_predict(model, data, output, format=format, max_length=max_length, allow_truncation=allow_truncation,
                           progress=not json_out, **_scoring_settings(config))

    _run(json_out=json_out, debug=debug)


@app.command()
def rerank(
    data: DataArg,
    output: Annotated[Path, typer.Option("--output", help="JSONL to write, one line per group.")],
    model: ModelOpt = None,
    aggregate: Annotated[str, typer.Option(
        "--aggregate", help="Step scores -> candidate score: min (Math-Shepherd, default), prod (Lightman et al.), "
                            "last, mean.")] = "min",
    group_key: Annotated[str, typer.Option(
        "--group-key", help="Record field naming a candidate's group (default `group`; records without it group "
                            "by question).")] = "group",
    format: FormatOpt = None,
    max_length: MaxLengthOpt = None,
    allow_truncation: AllowTruncationOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    config: ConfigOpt = None,
):
    """Best-of-N: per question (or group), every candidate's aggregate step score and the chosen candidate."""

    @command
    def _run():
        from tasks.predict import rerank as run_rerank

        return run_rerank(model, data, output, how=aggregate, group_key=group_key, format=format, max_length=max_length,
                          allow_truncation=allow_truncation, progress=not json_out, **_scoring_settings(config))

    _run(json_out=json_out, debug=debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
