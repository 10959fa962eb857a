"""Every Prefect task the flows run, one line each: the plain function it wraps (in `tasks/`), its name, retries and
cache policy. The stages stay free of Prefect (importing it costs seconds; the CLI, benchmarks and tests call them
directly); the flows call these. A wrapper is named after its task: `score` -> `score_task`.

No retries anywhere: every stage resumes where a killed attempt stopped (scoring per shard, labeling through the
label cache and the kept selection, training from its checkpoints), so a rerun of the flow is the retry; the judge
client retries its own requests. NO_CACHE: results are durable in DuckDB and MLflow, not in Prefect's cache.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import evaluate, label, model_source, pipeline, plots, register, score, select, train

# -- the stages, in the order of a round (Duan et al., 2025, Alg. 1) ----------------------------------------------
# select and prepare-eval-split keep Prefect's default cache policy, as they always had.
eval_split_task = task(name="prepare-eval-split", tags=["duckdb"])(select.eval_split_stage)
starting_model_task = task(name="starting-model", cache_policy=NO_CACHE)(model_source.starting_model)
score_task = task(name="score", cache_policy=NO_CACHE, tags=["duckdb"])(score.score_stage)
score_shard_task = task(name="score-shard", cache_policy=NO_CACHE)(score.score_shard)  # no DuckDB: Dask workers
export_scores_task = task(name="export-scores", cache_policy=NO_CACHE, tags=["duckdb"])(score.export_stage)
select_task = task(name="select", tags=["duckdb"])(select.select_stage)
label_task = task(name="label", cache_policy=NO_CACHE, log_prints=True)(label.label_round)
train_task = task(name="train", cache_policy=NO_CACHE, tags=["duckdb"])(train.train_round)
evaluate_task = task(name="evaluate", cache_policy=NO_CACHE)(evaluate.evaluate_round)
register_task = task(name="register", cache_policy=NO_CACHE)(register.register_round)
drop_checkpoints_task = task(name="drop-checkpoints", cache_policy=NO_CACHE)(train.drop_round_checkpoints)
evaluate_request_task = task(name="evaluate-request", cache_policy=NO_CACHE)(evaluate.evaluate_request)

# -- bookkeeping (tasks/pipeline.py) --------------------------------------------------------------------------------
sample_pool_task = task(name="sample-pool", cache_policy=NO_CACHE)(pipeline.sample_pool)
open_run_task = task(name="open-mlflow-run", cache_policy=NO_CACHE)(pipeline.open_run)
close_run_task = task(name="close-mlflow-run", cache_policy=NO_CACHE)(pipeline.close_run)
open_loop_task = task(name="open-loop", cache_policy=NO_CACHE)(pipeline.open_loop)
loop_start_task = task(name="loop-start", cache_policy=NO_CACHE)(pipeline.loop_start)
finished_rounds_task = task(name="finished-rounds", cache_policy=NO_CACHE)(pipeline.finished_rounds)
registered_round_task = task(name="registered-round", cache_policy=NO_CACHE)(pipeline.registered_round)
record_round_task = task(name="record-round", cache_policy=NO_CACHE)(pipeline.record_round)
finish_task = task(name="finish", cache_policy=NO_CACHE)(pipeline.finish)
run_plots_task = task(name="run-plots", cache_policy=NO_CACHE)(plots.run_plots)
