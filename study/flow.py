"""The active-learning efficiency study as a Prefect flow (issue 8; protocol in `study/protocol.py`):

    load pool (+ held-out split) [-> the earlier study's runs, with extend] -> time the host -> cache step
    states (one backbone pass) [-> with check_steps, the step check of earlier seeds that lack it] -> per seed
    not yet run: full data (and its step check), then every strategy x budget, then a checkpoint of the
    outputs -> time the host again -> summarize -> table, plot, JSON -> MLflow

This module only wires; the work is in `study.protocol`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from actprm.config import flow_settings
from actprm.store import Store
from study import host
from study import protocol as study, report as study_report, states as study_states


@task(name="study-load-pool", cache_policy=NO_CACHE)
def load_pool_task(db_path: str, pool: str, eval_fraction: float, seed: int) -> dict[str, list[dict]]:
    with Store(Path(db_path)) as store:
        return study.load_pool(store, pool, eval_fraction, seed)


@task(name="study-step-states", cache_policy=NO_CACHE)
def step_states_task(trajectories: list[dict], preset: str, cache_dir: str, batch_size: int,
                     max_length: int, backbone_path: str | None, threads: int | None, top_layers: int = 0,
                     device: str = "cpu"):
    return study_states.cached_step_states(trajectories, preset=preset, cache_dir=cache_dir, batch_size=batch_size,
                                           max_length=max_length, backbone_path=backbone_path, threads=threads,
                                           top_layers=top_layers, device=device)


@task(name="study-host", cache_policy=NO_CACHE)
def host_task(threads: int, seconds: float) -> dict[str, Any]:
    return host.host_facts(threads, seconds)


@task(name="study-host-speed", cache_policy=NO_CACHE)
def host_speed_task(threads: int, seconds: float) -> float:
    return host.gemm_gflops(threads, seconds)


@task(name="study-seed", cache_policy=NO_CACHE)
def seed_task(train, evaluation, seed: int, preset: study.StudyPreset, knobs: dict[str, Any],
              strategies: tuple[str, ...]) -> list[dict]:
    logger = get_run_logger()

    def progress(r: dict) -> None:
        logger.info("seed %d %-9s budget %.2f: F1 %.4f at 0.5, %.4f at a cross-fitted threshold; %d labels (%.1fs)",
                    r["seed"], r["strategy"], r["budget"], r["f1"], r["f1_tuned"], r["labels"], r["seconds"])

    return study.run_seed(train, evaluation, seed=seed, preset=preset, strategies=strategies, on_run=progress,
                          **knobs)


@task(name="study-step-check", cache_policy=NO_CACHE)
def step_check_task(train, evaluation, seed: int, preset: study.StudyPreset, knobs: dict[str, Any]) -> dict:
    row = study.step_check_run(train, evaluation, seed=seed, preset=preset, **knobs)
    get_run_logger().info("seed %d full data at %d head steps: F1 %.4f at 0.5, %.4f at a cross-fitted threshold "
                          "(%.1fs)", seed, row["steps"], row["f1"], row["f1_tuned"], row["seconds"])
    return row


@task(name="study-checkpoint", cache_policy=NO_CACHE)
def checkpoint_task(result: dict, output_dir: str) -> dict[str, str]:
    return study_report.write_outputs(result, output_dir)


@task(name="study-report", cache_policy=NO_CACHE)
def report_task(result: dict, output_dir: str, tracking_uri: str, experiment: str, artifact_root: str) -> dict:
    paths = study_report.write_outputs(result, output_dir)
    run_id = study_report.log_to_mlflow(result, paths, tracking_uri=tracking_uri, experiment=experiment,
                                 artifact_root=artifact_root)
    return {"paths": paths, "mlflow_run_id": run_id}


@flow(name="study", log_prints=True)
def study_flow(pool: str | None = None, study_preset: str = "quick", config: dict[str, Any] | None = None,
               seeds: list[int] | None = None, output_dir: str | None = None,
               head_threads: int | None = None, extend: bool = False,
               preset_overrides: dict[str, Any] | None = None, strategies: list[str] | None = None) -> dict[str, Any]:
    """ActPRM vs random, entropy, BALD and full data on a gold-labeled pool.

    Args:
        pool: An ingested pool with gold labels. None: the study preset's own synthetic pool
            (study.protocol.synthetic_pool, e.g. synth-study-3000-reading for full), created on first use.
        study_preset: quick (tiny model, seconds) or full (MiniLM, 13-37 min on 2 cores); see study.protocol.STUDY_PRESETS.
        config: Nested settings overrides; model.preset replaces the study preset's model when given.
        seeds: Override the preset's seeds.
        output_dir: Where al_study.json/.md/.png go (default: <home>/reports/study).
        head_threads: Torch threads for the heads' training (default: the preset's; 1 on a loaded machine).
        extend: Add seeds to the study already in output_dir (its al_study.json): seeds it has are not rerun,
            and the summary covers all of them. Refused when it was made under other settings.
        preset_overrides: Study preset fields to change, e.g. {"rounds": 16, "budgets": "0.5,1.0"}; the
            preset's name in the outputs records them.
        strategies: A subset of actprm, random, entropy, bald (default: all four), and the diagnostic
            "oracle" (buys what the heads get most wrong by the gold labels; only when named).
    """
    from flows import prefect_tasks
    from flows.ingest_pool import ingest_pool

    started = time.perf_counter()  # the wall time recorded in the outputs: pool creation and backbone pass included
    preset = study.customize(study.study_preset(study_preset), preset_overrides)
    chosen = study.strategy_names(strategies)
    chosen_model = ((config or {}).get("model") or {}).get("preset")
    own_pool = {}
    if pool is None:  # the preset's synthetic pool, whatever the config's synth section says
        pool, synth = study.synthetic_pool(preset)
        own_pool = {"default_pool": pool, "synth": synth}
    settings = flow_settings(config, model={"preset": chosen_model or preset.model_preset}, **own_pool)
    preset = dataclasses.replace(preset, model_preset=settings.model.preset,
                                 seeds=tuple(seeds) if seeds else preset.seeds,
                                 head_threads=head_threads or preset.head_threads)
    sample = prefect_tasks.sample_pool_task(settings, pool)
    if sample is not None:  # the default pool, created on first use (its size: synth.n)
        ingest_pool(paths=[sample], pool=pool, home=str(settings.home))
    data = load_pool_task(str(settings.duckdb_path), pool, settings.loop.eval_fraction, settings.train.seed)
    # Everything that changes a run's F1 beyond the preset; --extend refuses a study made under other values. (A
    # study written before a knob was recorded is compared on the knobs it has.)
    knobs = study.run_knobs(settings, pool)
    backbone = {"max_length": settings.model.max_length, "backbone_path": settings.model.backbone_path,
                "unread_steps_uncertain": True}  # recorded and compared, not run arguments
    split = study.split_fingerprint(data)
    out = output_dir or str(settings.reports_dir / "study")
    earlier = study_report.Earlier([], [], [])  # the invocations that made the runs this one extends
    if extend:  # checked before the backbone pass, so a mismatch fails in seconds
        earlier = study_report.previous_runs(Path(out) / "al_study.json", pool=pool, preset=preset,
                                             knobs={**knobs, **backbone},
                                             split=split, train_size=len(data["train"]),
                                             eval_size=len(data["eval"]), strategies=chosen)
    runs, spent = earlier.runs, earlier.wall_seconds
    done = {r["seed"] for r in runs}
    pending = [seed for seed in preset.seeds if seed not in done]
    this_host = {**host_task(preset.head_threads, preset.host_seconds), "seeds": pending}
    hosts = [*earlier.hosts, this_host]
    if kernels := study_report.other_kernels(hosts):
        get_run_logger().warning(
            "this study's seeds now span hosts with different CPU kernels (%s): float rounding follows the kernels, "
            "so each run reproduces bit for bit only on its own kind of host", ", ".join(kernels))
    everything = data["train"] + data["eval"]
    states, info = step_states_task(everything, preset.model_preset, str(settings.home / "study" / "cache"),
                                    preset.feature_batch_size, settings.model.max_length,
                                    settings.model.backbone_path, preset.feature_threads, preset.top_layers,
                                    preset.device)
    train, evaluation = study_states.pack_splits(data, states, info["top"])
    knobs = {**knobs, "hidden_size": info["hidden_size"], "separator_id": info["separator_id"]}
    model = study_states.model_facts(info, train, evaluation)
    facts = {"preset": preset, "pool": pool, "strategies": chosen, "train_size": len(train),
             "eval_size": len(evaluation), "model": model, "knobs": {**knobs, **backbone}, "split": split,
             "hosts": hosts}

    def wall() -> list[float]:  # the earlier invocations', then this one's so far
        return [*spent, time.perf_counter() - started]

    if preset.check_steps:  # seeds an earlier invocation ran without the step check get it now, before new ones
        checked = {r["seed"] for r in runs if r["strategy"] == study.STEP_CHECK}
        if unchecked := sorted(done - checked):
            this_host["step_check_seeds"] = unchecked  # they ran here, on this host's kernels
        for seed in unchecked:
            runs.append(step_check_task(train, evaluation, seed, preset, knobs))
    for i, seed in enumerate(pending):
        runs += seed_task(train, evaluation, seed, preset, knobs, chosen)
        if i < len(pending) - 1:  # the report below writes the last one
            # The outputs hold every finished seed, so a crash loses at most the seed in progress and a rerun
            # with extend=True goes on from there.
            checkpoint_task(study_report.study_result(runs, **facts, wall_seconds_per_invocation=wall()), out)
    this_host["after"] = host_speed_task(preset.head_threads, preset.host_seconds)
    result = study_report.study_result(runs, **facts, wall_seconds_per_invocation=wall())
    reported = report_task(result, out, settings.tracking_uri, settings.experiment, str(settings.artifact_root))
    summary = study_report.markdown_table(result) + f"\noutputs: {', '.join(reported['paths'].values())}"
    return {**result, "outputs": reported["paths"], "mlflow_run_id": reported["mlflow_run_id"], "summary": summary}
