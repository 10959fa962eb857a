"""The paper's one-shot setting (Duan et al., 2025, Sec. 5): score a whole pool once with a trained PRM, keep
what the ActPRM rule flags as uncertain (the paper kept about 60% of 1M+ trajectories), buy its labels within
the budget and train a PRM on them. The released script trains that PRM without a second, in-training
selection, so that is the default here."""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from flows import prefect_tasks as pt
from flows.ingest_pool import ingest_pool
from flows.stages import run_round

# The share of its pool the paper's filter kept (Duan et al., 2025, Sec. 5: ~60% of the 1M+ trajectories).
PAPER_RETAINED_FRACTION = 0.6


@flow(name="one-shot-filter", log_prints=True)
def one_shot_filter(
    pool: str,
    model: str | None = None,
    keep_fraction: float | None = None,
    in_training_selection: bool = False,
    judge: str | None = None,
    preset: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Filter a pool by uncertainty once, label what is kept, train a PRM on those labels.

    Args:
        pool: Name of an ingested pool ("sample" is created from the built-in generator if missing).
        model: Scoring PRM (a models:/ URI or folder); default the champion, else a fresh preset model.
        keep_fraction: Optional cap on the share of the pool kept (most uncertain first); default none: every
            trajectory the rule flags is kept.
        in_training_selection: Also drop confident trajectories from each training batch (off, as released).
        judge: Judge backend: verifier, oracle, openai or vllm.
        preset: Model preset used when no trained model exists yet.
        config: Any other settings, as nested overrides.
    """
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    settings = flow_settings(config, model={"preset": preset}, judge={"backend": judge},
                             train={"in_training_selection": in_training_selection})
    sample = pt.sample_pool_task(settings, pool)
    if sample is not None:
        ingest_pool(paths=[sample], pool=pool, home=str(settings.home))
    pt.eval_split_task(settings, pool)
    parent = pt.open_run_task(settings, "one_shot_filter",
                              {"pool": pool, "keep_fraction": keep_fraction,
                               "in_training_selection": settings.train.in_training_selection})
    model_dir, model_version = pt.starting_model_task(settings, model)

    def keep(scored) -> int:  # the cap is a share of the pool, whose size scoring counts
        pool_size = scored.scored + scored.skipped_already_scored
        return pool_size if keep_fraction is None else int(keep_fraction * pool_size)

    # One round, in the flow's own MLflow run: what the ActPRM rule flags is kept (up to the cap), labeled, and the
    # PRM trains on exactly that.
    done = run_round(settings, pool, 1, model_dir, model_version, parent, budget=keep, strategy="actprm",
                     selection_key=parent, train_on_selection=True)
    ids, record, pool_size = done.selected, done.record, done.record["scored"]
    if done.evaluation is not None:
        pt.record_round_task(settings, parent, parent, pool, record, parent)  # one round, keyed by its run
    summary = pt.finish_task(settings, None, parent, pool, [record], done.labeled.stopped_because)
    retained = len(ids) / max(1, pool_size)
    summary.update({
        "scoring_model": model_version, "scored": pool_size, "uncertain": done.scored.uncertain,
        "retained": len(ids), "retained_fraction": retained, "paper_retained_fraction": PAPER_RETAINED_FRACTION,
        "cap": None if keep_fraction is None else done.budget, "in_training_selection": settings.train.in_training_selection,
        "summary": (f"one-shot filter on {pool}: kept {len(ids)} of {pool_size} trajectories "
                    f"({retained:.0%}; the paper kept ~{PAPER_RETAINED_FRACTION:.0%}), "
                    f"bought {record['labels_bought']} labels, trained on {record['train_trajectories']}"),
    })
    return summary
