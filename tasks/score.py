"""Score stage: run the ensemble PRM over a whole pool and store per-step mu/sigma and the ActPRM flags.

The pool's not-yet-scored trajectory ids are cut into shards (the unit of resume). A shard is
tokenized, sorted by token length and cut into batches of similar length (length bucketing: little
padding), scored under inference mode (fp32 on CPU, bf16 autocast on GPU; the heads stay fp32), and
committed to DuckDB in one transaction together with its `score_shards` row. A rerun scores only what
this model version has not scored, and kill -9 loses at most the shard in flight. Float32 heads do not make
GPU and CPU scores identical: the bf16 backbone states move a trained PRM's sigma by up to 0.009 at some steps
(bench/results/gpu.json), more than the 0.005 std threshold, so a trajectory near the rule's edge can be flagged
on one device and not the other (on the H200 run, 2 of the 128 a 50% budget buys differed).

With an `accelerate.Accelerator` of several processes, the main process reads each shard and
broadcasts it, every process scores a disjoint slice (rank::world), the rows are gathered, and only
the main process writes (DuckDB has one writer per file); other processes pass `store=None`.
"""

from __future__ import annotations

from collections.abc import Callable

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import torch
from tqdm import tqdm

from actprm.config import Settings
from actprm.errors import ActPRMError
from actprm.runlog import ProgressArtifact, stage_logger
from actprm.store import Store
from models import EnsemblePRM, StepBatcher, check_compatible
from models.inference import forward_batches, inference_max_length
from models.uncertainty import acquisition, get_strategy, predicted_first_error, step_stats, trajectory_uncertain

SCORE_SCHEMA = pa.schema([
    ("trajectory_id", pa.string()), ("model_version", pa.string()),
    ("mu", pa.list_(pa.float32())), ("sigma", pa.list_(pa.float32())),
    ("scored_steps", pa.int32()), ("truncated_steps", pa.int32()), ("predicted_first_error", pa.int32()),
    ("uncertain", pa.bool_()), ("acquisition", pa.float64()),
])


@dataclass
class ScoreSummary:
    pool: str
    model_version: str
    strategy: str
    scored: int = 0                  # trajectories scored by this run
    skipped_already_scored: int = 0  # already scored by this model version before the run
    # The next two describe the pool (or split) as scored by this model version after the run,
    # including earlier runs: what selection will see.
    uncertain: int = 0               # trajectories flagged uncertain by the ActPRM rule
    truncated: int = 0               # trajectories with steps cut by max_length (left unscored)
    uncertain_this_run: int = 0
    shards: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    trajectories_per_s: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def uncertain_fraction(self) -> float:
        total = self.scored + self.skipped_already_scored
        return self.uncertain / total if total else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"uncertain_fraction": self.uncertain_fraction}


def score_pool(store: Store | None, pool: str, model: EnsemblePRM, tokenizer, model_version: str, *,
               strategy: str = "actprm", p_threshold: float = 0.95, std_threshold: float = 0.005,
               batch_size: int = 32, shard_size: int = 2048, max_length: int = 512, split: str | None = None,
               progress: bool = True, max_shards: int | None = None, accelerator=None,
               on_shard: Callable[[int, int], None] | None = None) -> ScoreSummary:
    """Score every trajectory of `pool` this model version has not scored yet (see module doc).

    `max_shards` stops after that many shards (a partial, resumable run)."""
    get_strategy(strategy)  # unknown strategy -> ModelError before any work
    check_compatible(model, tokenizer)
    if batch_size < 1 or shard_size < 1:
        raise ActPRMError(f"batch_size and shard_size must be >= 1 (got {batch_size}, {shard_size})")
    distributed = accelerator is not None and accelerator.num_processes > 1
    is_main = accelerator is None or accelerator.is_main_process
    summary = ScoreSummary(pool, model_version, strategy)
    todo: list[str] = []
    if is_main:
        if store is None:
            raise ActPRMError("score_pool needs an open Store on the main process")
        store.require_pool(pool)
        todo = store.unscored_ids(pool, model_version, split)
        summary.skipped_already_scored = store.pool_size(pool, split) - len(todo)
    if distributed:
        from accelerate.utils import broadcast_object_list

        todo = broadcast_object_list([todo])[0]
    batcher = StepBatcher(tokenizer, max_length=max_length)
    if accelerator is not None:
        model.to(accelerator.device)
    model.eval()
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="traj", desc=f"score {pool}", file=sys.stderr,
               disable=not (progress and is_main), dynamic_ncols=True)
    try:
        for n, lo in enumerate(range(0, len(todo), shard_size)):
            if max_shards is not None and n >= max_shards:
                break
            trajectories = store.trajectories(todo[lo: lo + shard_size]) if is_main else None
            if distributed:
                from accelerate.utils import broadcast_object_list, gather_object

                trajectories = broadcast_object_list([trajectories])[0]
                mine = trajectories[accelerator.process_index:: accelerator.num_processes]
            else:
                mine = trajectories
            rows, tokens, padded = score_trajectories(
                model, batcher, mine, model_version, strategy=strategy, p_threshold=p_threshold,
                std_threshold=std_threshold, batch_size=batch_size, on_batch=bar.update)
            if distributed:
                rows = gather_object(rows)
                tokens, padded = _sum_across(accelerator, tokens, padded)
            if is_main:
                _write_shard(store, summary, rows, len(todo), on_shard)
            summary.tokens += tokens
            summary.padded_tokens += padded
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    if is_main:
        pool_stats = store.score_summary(pool, model_version, split)
        summary.uncertain, summary.truncated = pool_stats["uncertain"], pool_stats["truncated"]
    if summary.seconds > 0:
        summary.trajectories_per_s = summary.scored / summary.seconds
        summary.tokens_per_s = summary.tokens / summary.seconds
    return summary


def _write_shard(store: Store, summary: ScoreSummary, rows: list[dict], total: int,
                 on_shard: Callable[[int, int], None] | None) -> None:
    """Commit one shard's rows (with its score_shards row, one transaction) and count it in `summary`."""
    store.write_score_shard(summary.pool, summary.model_version, pa.Table.from_pylist(rows, schema=SCORE_SCHEMA))
    summary.shards += 1
    summary.scored += len(rows)
    summary.uncertain_this_run += sum(r["uncertain"] for r in rows)
    if on_shard is not None:
        on_shard(summary.scored, total)


def score_trajectories(model: EnsemblePRM, batcher: StepBatcher, trajectories: list[dict], model_version: str, *,
                       strategy: str = "actprm", p_threshold: float = 0.95, std_threshold: float = 0.005,
                       batch_size: int = 32, bucket: bool = True, on_batch=None) -> tuple[list[dict], int, int]:
    """Score trajectories ({id, question, steps}); returns (score rows in input order, real tokens, padded tokens).

    `bucket=False` keeps the input order (plain padding), for the benchmark's comparison."""
    encoded = [batcher.tokenize(t["question"], t["steps"]) for t in trajectories]
    rows: list[dict | None] = [None] * len(encoded)
    tokens = padded = 0
    for batch, scored in forward_batches(model, batcher, encoded, batch_size=batch_size, bucket=bucket):
        tokens += batch.num_tokens
        padded += batch.padded_tokens
        for i, p in scored:
            rows[i] = _score_row(trajectories[i]["id"], model_version, p, encoded[i].truncated_steps,
                                 strategy, p_threshold, std_threshold)
        if on_batch is not None:
            on_batch(len(scored))
    return rows, tokens, padded  # type: ignore[return-value]


def _score_row(trajectory_id: str, model_version: str, probs: torch.Tensor, truncated_steps: int,
               strategy: str, p_threshold: float, std_threshold: float) -> dict:
    mu, sigma = step_stats(probs)
    # Decide on the float32 values that are stored, so the exported mu/sigma reproduce the flag exactly.
    mu32, sigma32 = mu.float(), sigma.float()
    generator = None
    if strategy == "random":  # reproducible per (model version, trajectory), whatever the sharding
        seed = int(hashlib.sha256(f"{model_version}:{trajectory_id}".encode()).hexdigest()[:15], 16)
        generator = torch.Generator().manual_seed(seed)
    return {
        "trajectory_id": trajectory_id, "model_version": model_version,
        "mu": mu32.tolist(), "sigma": sigma32.tolist(),
        "scored_steps": int(probs.shape[1]), "truncated_steps": int(truncated_steps),
        "predicted_first_error": predicted_first_error(mu32.double()),
        "uncertain": trajectory_uncertain(mu32.double(), sigma32.double(), p_threshold, std_threshold,
                                          unscored_steps=truncated_steps),
        "acquisition": acquisition(strategy, probs, p_threshold=p_threshold, std_threshold=std_threshold,
                                   generator=generator),
    }


def _sum_across(accelerator, *values: int) -> tuple[int, ...]:
    t = torch.tensor(values, dtype=torch.long, device=accelerator.device)
    return tuple(int(v) for v in accelerator.reduce(t, reduction="sum").tolist())


def export_scores(store: Store, pool: str, model_version: str, path: str | Path) -> int:
    """Parquet, one row per scored trajectory: id, mu (list), sigma (list), uncertain, predicted_first_error,
    acquisition, scored_steps, truncated_steps, split, gold_first_error, model_version. Returns rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return store.export_scores_parquet(pool, model_version, path)


def log_scoring_to_mlflow(summary: ScoreSummary, mu_sigma_arrays, out_dir: str | Path, *,
                          run_id: str | None = None, tracking_uri: str | None = None) -> Path | None:
    """Log throughput, the uncertain fraction and a histogram PNG of mu and sigma (`mu_sigma_arrays` =
    (mu values, sigma values) over all scored steps) to MLflow run `run_id`, else to the active run;
    without either it does nothing and returns None. Returns the PNG path."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            return None
        run_id = active.info.run_id
    client = MlflowClient(tracking_uri)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {
        "score_trajectories_per_s": summary.trajectories_per_s, "score_tokens_per_s": summary.tokens_per_s,
        "score_scored": summary.scored, "score_uncertain": summary.uncertain,
        "score_uncertain_fraction": summary.uncertain_fraction, "score_truncated": summary.truncated,
    }
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    mu, sigma = mu_sigma_arrays
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(list(mu), bins=50, range=(0, 1))
    axes[0].set_title("step mu (mean over heads)")
    axes[1].hist(list(sigma), bins=50)
    axes[1].set_title("step sigma (unbiased std over heads)")
    axes[1].set_yscale("log")
    fig.suptitle(f"{summary.pool} / {summary.model_version}: {summary.uncertain_fraction:.1%} uncertain")
    fig.tight_layout()
    png = out / f"score_hist_{summary.pool}.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    client.log_artifact(run_id, str(png), artifact_path="scoring")
    return png


def score_stage(settings: Settings, pool: str, model_dir: str | Path, model_version: str,
                run_id: str | None = None, split: str | None = None) -> ScoreSummary:
    """Flow stage: load the saved PRM, score the pool with the configured uncertainty settings, log
    metrics and the mu/sigma histogram to MLflow run `run_id`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = EnsemblePRM.from_pretrained(model_dir, with_tokenizer=True, device=device)
    u = settings.uncertainty
    progress = ProgressArtifact(f"score-{pool}", f"Scoring pool {pool} with {model_version}")
    with Store(settings.duckdb_path) as store:
        summary = score_pool(store, pool, model, tokenizer, str(model_version), strategy=u.strategy,
                             p_threshold=u.p_threshold, std_threshold=u.std_threshold, batch_size=u.batch_size,
                             shard_size=u.shard_size, max_length=settings.model.max_length, split=split,
                             on_shard=progress.update)
        arrays = store.score_distributions(pool, str(model_version)) if run_id else None
    if run_id:
        log_scoring_to_mlflow(summary, arrays, settings.reports_dir / "scoring" / str(model_version),
                              run_id=run_id, tracking_uri=settings.tracking_uri)
    stage_logger().info("score %s with %s: %d trajectories scored now (%d already), %d uncertain (%.1f%%)", pool,
                        model_version, summary.scored, summary.skipped_already_scored, summary.uncertain,
                        100 * summary.uncertain_fraction)
    return summary


def score_pool_sharded(store: Store, pool: str, model_version: str, submit: Callable[[list[dict]], object], *,
                       shard_size: int, in_flight: int, strategy: str = "actprm", split: str | None = None,
                       on_shard: Callable[[int, int], None] | None = None) -> ScoreSummary:
    """Score the pool's unscored trajectories shard by shard somewhere else (`submit(trajectories)` returns a
    future whose `.result()` is the shard's rows, e.g. the `score-shard` task's `.submit` on a Dask task runner, flows/scoring.py), and
    write each shard here as it comes back: DuckDB has one writer process, this one. At most `in_flight`
    shards are out at once, so memory stays bounded on a big pool; resume works as in `score_pool`."""
    store.require_pool(pool)
    todo = store.unscored_ids(pool, model_version, split)
    summary = ScoreSummary(pool, model_version, strategy)
    summary.skipped_already_scored = store.pool_size(pool, split) - len(todo)
    start = time.perf_counter()
    pending: list = []
    bounds = iter(range(0, len(todo), shard_size))

    def write(future) -> None:
        _write_shard(store, summary, future.result(), len(todo), on_shard)

    for lo in bounds:
        pending.append(submit(store.trajectories(todo[lo: lo + shard_size])))
        if len(pending) >= in_flight:
            write(pending.pop(0))  # in order: a crash leaves the written shards a prefix of the plan
    for future in pending:
        write(future)
    summary.seconds = time.perf_counter() - start
    stats = store.score_summary(pool, model_version, split)
    summary.uncertain, summary.truncated = stats["uncertain"], stats["truncated"]
    if summary.seconds > 0:
        summary.trajectories_per_s = summary.scored / summary.seconds
    return summary


def sharded_score_stage(settings: Settings, pool: str, model_dir: str | Path, model_version: str,
                        submit_shard: Callable[..., object], run_id: str | None = None,
                        split: str | None = None) -> ScoreSummary:
    """Flow stage that sends each shard to `submit_shard(model_dir, trajectories, model_version, **options)`, a
    future of `score_shard`'s rows (flows/scoring.py passes its `score-shard` task's submit, which the flow's Dask
    task runner spreads over the workers): the same result and MLflow logging as `score_stage`, the model loaded
    once per worker process."""
    u = settings.uncertainty
    options = dict(strategy=u.strategy, p_threshold=u.p_threshold, std_threshold=u.std_threshold,
                   batch_size=u.batch_size, max_length=settings.model.max_length)
    progress = ProgressArtifact(f"score-{pool}", f"Scoring pool {pool} with {model_version} on {u.dask_address}")
    with Store(settings.duckdb_path) as store:
        summary = score_pool_sharded(
            store, pool, str(model_version),
            lambda shard: submit_shard(str(model_dir), shard, str(model_version), **options),
            shard_size=u.shard_size, in_flight=u.dask_shards_in_flight, strategy=u.strategy, split=split,
            on_shard=progress.update)
        arrays = store.score_distributions(pool, str(model_version)) if run_id else None
    if run_id:
        log_scoring_to_mlflow(summary, arrays, settings.reports_dir / "scoring" / str(model_version),
                              run_id=run_id, tracking_uri=settings.tracking_uri)
    return summary


def export_stage(settings: Settings, pool: str, model_version: str, path: str | Path) -> dict:
    """Flow stage: write the pool's scores under `model_version` to Parquet; returns {path, rows}."""
    with Store(settings.duckdb_path) as store:
        rows = export_scores(store, pool, str(model_version), path)
    return {"path": str(path), "rows": rows}


_LOADED: dict[str, tuple[EnsemblePRM, object]] = {}


def score_shard(model_dir: str, trajectories: list[dict], model_version: str, *, strategy: str = "actprm",
                     p_threshold: float = 0.95, std_threshold: float = 0.005, batch_size: int = 32,
                     max_length: int = 512) -> list[dict]:
    """Score one shard anywhere (e.g. a Dask worker); touches no DuckDB. The caller writes the rows with
    `store.write_score_shard(pool, version, pa.Table.from_pylist(rows, schema=SCORE_SCHEMA))`.
    The model is loaded once per worker process and reused for later shards."""
    if model_dir not in _LOADED:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _LOADED[model_dir] = EnsemblePRM.from_pretrained(model_dir, with_tokenizer=True, device=device)
    model, tokenizer = _LOADED[model_dir]
    rows, _, _ = score_trajectories(model, StepBatcher(tokenizer, max_length=max_length), trajectories,
                                    model_version, strategy=strategy, p_threshold=p_threshold,
                                    std_threshold=std_threshold, batch_size=batch_size)
    return rows


class TruncationError(ActPRMError):
    """Steps lay past the token budget and were left unscored."""


# -- scoring trajectories without a store: predict, rerank, evaluate, the served pyfunc ----------------------
def score_steps(model, tokenizer, trajectories: list[dict], *, batch_size: int = 32, max_length: int | None = None,
                progress: bool = False, desc: str = "predict") -> list[dict]:
    """Per trajectory ({question, steps}): step_scores (mean over heads of P(step correct)), step_std (the heads'
    unbiased std), uncertain (the ActPRM rule) and truncated_steps (steps past the budget, unscored)."""
    from tqdm import tqdm


    check_compatible(model, tokenizer)
    batcher = StepBatcher(tokenizer, max_length=inference_max_length(model, max_length))
    model.eval()
    with tqdm(total=len(trajectories), unit="traj", desc=desc, file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        rows, _, _ = score_trajectories(model, batcher, [{"id": str(i), "question": t["question"], "steps": t["steps"]}
                                                         for i, t in enumerate(trajectories)],
                                        "predict", batch_size=batch_size, on_batch=bar.update)
    return [{"step_scores": r["mu"], "step_std": r["sigma"], "uncertain": r["uncertain"],
             "truncated_steps": r["truncated_steps"]} for r in rows]


def truncation_report(scores: list[dict], max_length: int) -> dict:
    cut = [s["truncated_steps"] for s in scores]
    return {"truncated_steps": sum(cut), "truncated_trajectories": sum(1 for c in cut if c),
            "total_steps": sum(len(s["step_scores"]) for s in scores) + sum(cut), "max_length": max_length}


def check_truncation(report: dict, allow: bool, what: str) -> None:
    """Log any cut loudly; refuse it unless allowed."""
    if not report["truncated_steps"]:
        return
    message = (f"{report['truncated_steps']} of {report['total_steps']} steps ({report['truncated_trajectories']} "
               f"trajectories) lie past max_length={report['max_length']} tokens and were left unscored")
    stage_logger().warning("%s: %s", what, message)
    if not allow:
        raise TruncationError(f"{what}: {message}; pass --allow-truncation to accept that, or a larger --max-length")
