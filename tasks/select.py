"""Select: which trajectories are worth paying the judge for this round.

ActPRM (Duan et al., 2025, Sec. 3): only trajectories the ensemble is uncertain about (aleatoric
or epistemic, per the rule in `models.uncertainty`) are sent to the judge; when the round's budget
is smaller than the uncertain set, the acquisition score ranks them. Baseline strategies (random,
entropy, BALD) rank every unlabeled trajectory by their own score instead, as in the paper's
comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from actprm.judges import judge_identity
from actprm.runlog import stage_logger
from actprm.store import Store


@dataclass
class Selection:
    pool: str
    model_version: str
    strategy: str
    budget: int
    selected: list[str]
    uncertain_available: int

    def as_dict(self) -> dict:
        d = asdict(self)
        d["selected"] = len(self.selected)
        return d


def select_for_labeling(store: Store, pool: str, model_version: str, budget: int, *, strategy: str,
                        judge_model: str, prompt_version: str) -> Selection:
    """Up to `budget` not-yet-labeled train trajectories, best first, for this judge and prompt."""
    only_uncertain = strategy == "actprm"
    ranked = store.rank_for_labeling(pool, model_version, only_uncertain=only_uncertain,
                                     labeled_by=(judge_model, prompt_version))
    return Selection(pool=pool, model_version=model_version, strategy=strategy, budget=budget,
                     selected=ranked[: max(budget, 0)], uncertain_available=len(ranked))


def prepare_eval_split(store: Store, pool: str, fraction: float, seed: int) -> dict[str, int]:
    """Hold out part of a gold-labeled pool for evaluation (once; idempotent afterwards)."""
    counts = store.split_counts(pool)
    if "eval" not in counts and fraction > 0 and store.has_gold_labels(pool):
        from actprm.formats import FORMATS

        # Views of one source record carry its id with their own suffix (PRMBench: ':original', ':modified').
        suffixes = tuple({v.id_suffix for name in FORMATS.names() for v in FORMATS.get(name).views})
        store.assign_eval_split(pool, fraction, seed, view_suffixes=suffixes)
        counts = store.split_counts(pool)
    return counts


def select_stage(settings, pool: str, model_version: str, budget: int, strategy: str, *, run_id: str | None = None,
                 round: int | None = None) -> list[str]:
    """The round's selection, leaving out what the configured judge and prompt labeled before. With `run_id` (the
    loop's) and `round` it is kept, and a retry of the round gets it back: selecting anew would skip what the first
    attempt already bought and buy a second batch."""
    judge_model, prompt_version = judge_identity(settings)
    keyed = run_id is not None and round is not None
    with Store(settings.duckdb_path) as store:
        kept = store.round_selection(run_id, round) if keyed else None
        if kept is not None:
            stage_logger().info("select %s: %d trajectories, the selection an earlier attempt of round %s kept",
                                pool, len(kept), round)
            return kept
        selected = select_for_labeling(store, pool, model_version, budget, strategy=strategy,
                                       judge_model=judge_model, prompt_version=prompt_version).selected
        if keyed:
            store.keep_round_selection(run_id, round, selected)
        stage_logger().info("select %s: %d trajectories for the judge (round budget %d, strategy %s)", pool,
                            len(selected), budget, strategy)
        return selected


def eval_split_stage(settings, pool: str) -> dict[str, int]:
    """Hold out `loop.eval_fraction` of the pool for evaluation, once (seeded by `train.seed`); the split's counts."""
    with Store(settings.duckdb_path) as store:
        return prepare_eval_split(store, pool, settings.loop.eval_fraction, settings.train.seed)
