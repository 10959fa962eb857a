"""The Prefect task wrappers of stages whose modules stay free of Prefect (importing it costs seconds, and the
CLI, benchmarks and tests call these stages directly): one line each, with its name and cache policy."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evaluate import evaluate_request, evaluate_round
from tasks.label import label_round
from tasks.register import register_round, starting_model
from tasks.train import drop_round_checkpoints, train_round

# No Prefect retries on label: the judge client retries requests itself, and a rerun is free through the cache.
label_stage = task(name="label", cache_policy=NO_CACHE, log_prints=True)(label_round)
evaluate_stage = task(name="evaluate", cache_policy=NO_CACHE)(evaluate_round)
evaluate_request_stage = task(name="evaluate-request", cache_policy=NO_CACHE)(evaluate_request)
starting_model_stage = task(name="starting-model", cache_policy=NO_CACHE)(starting_model)
register_stage = task(name="register", cache_policy=NO_CACHE)(register_round)
# No retries on train: a rerun resumes from the round's latest checkpoint anyway.
train_stage = task(name="train", cache_policy=NO_CACHE, tags=["duckdb"])(train_round)
drop_round_checkpoints_task = task(name="drop-checkpoints", cache_policy=NO_CACHE)(drop_round_checkpoints)
