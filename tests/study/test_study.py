"""The active-learning efficiency study (study/protocol.py, study/flow.py) on a tiny ingested synthetic pool."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math

import pytest
import torch

from actprm.errors import ActPRMError
from study import protocol as study, report as study_report, states as study_states

POOL = "study-tiny"


@pytest.fixture(scope="module")
def pool_db(tmp_path_factory):
    """A real DuckDB file holding a 90-trajectory synthetic pool with gold labels, ingested the normal way."""
    from actprm.synth import write_pool
    from tasks.ingest import ingest

    root = tmp_path_factory.mktemp("study")
    write_pool(root / "pool.jsonl", n=90, seed=7)
    db = root / "home" / "actprm.duckdb"
    ingest(db, [str(root / "pool.jsonl")], POOL, emit=False, reports_dir=root / "reports")
    return db


@pytest.fixture(scope="module")
def packed(pool_db):
    """The pool's train/eval splits with cached tiny-backbone separator states."""
    from actprm.store import Store

    with Store(pool_db) as store:
        data = study.load_pool(store, POOL, eval_fraction=0.25, seed=0)
    states, info = study_states.cached_step_states(data["train"] + data["eval"], preset="tiny", cache_dir=None,
                                                   threads=1)
    n = len(data["train"])
    return study_states.pack(data["train"], states[:n]), study_states.pack(data["eval"], states[n:]), info


def _knobs(info):
    return {"hidden_size": info["hidden_size"], "separator_id": info["separator_id"], "subset": POOL}


def test_budget_rounds_half_up():
    assert study.budget_labels(0.5, 5) == 3  # Python's round() would give 2
    assert study.budget_labels(0.1, 54) == 5
    assert study.budget_labels(0.75, 54) == 41  # 40.5 -> 41
    assert study.budget_labels(1.0, 54) == 54


def test_unknown_study_preset_is_a_user_error():
    with pytest.raises(ActPRMError, match="unknown study preset 'huge'"):
        study.study_preset("huge")


def test_every_strategy_spends_exactly_its_budget(packed):
    train, evaluation, info = packed
    preset = study.study_preset("quick")
    for budget in (0.1, 0.3):
        for strategy in study.STRATEGY_NAMES:
            seen = {}
            run = study.run_budget(train, evaluation, strategy=strategy, budget=budget, seed=1, preset=preset,
                                   inspect=lambda model, bought: seen.update(model=model, bought=bought),
                                   **_knobs(info))
            # What study/scripts/kinds.py reads: each trajectory bought once, and the heads that were evaluated.
            assert len(seen["bought"]) == len(set(seen["bought"])) == run["labels"]
            assert study.evaluate_heads(seen["model"], evaluation, "p")["f1"] == run["f1"]
            want = study.budget_labels(budget, len(train))
            if strategy == "actprm":  # never more; fewer only when too few trajectories are uncertain
                assert run["labels"] <= min(want, run["uncertain_seen"])
            else:
                assert run["labels"] == want, (strategy, budget)
            assert 0.0 <= run["f1"] <= 1.0


def test_actprm_never_buys_a_confident_trajectory():
    confident = torch.full((8, 3), 0.99)                       # every head sure every step is right
    unsure = torch.tensor([[0.9, 0.6, 0.2]] * 4 + [[0.99, 0.3, 0.8]] * 4)
    probs = [confident, unsure, confident, unsure]
    gen = torch.Generator().manual_seed(0)
    picked, eligible = study.select_from_batch("actprm", probs, 3, p_threshold=0.95, std_threshold=0.005,
                                               generator=gen)
    assert sorted(picked) == [1, 3] and eligible == 2           # quota 3, but only 2 are uncertain
    picked, eligible = study.select_from_batch("entropy", probs, 3, p_threshold=0.95, std_threshold=0.005,
                                               generator=gen)
    assert len(picked) == 3 and eligible == 4
    # Cut at max_length, a trajectory whose read steps all look right is uncertain, as the pipeline's scoring says.
    picked, eligible = study.select_from_batch("actprm", probs, 3, p_threshold=0.95, std_threshold=0.005,
                                               generator=gen, unread=[0, 0, 5, 0])
    assert sorted(picked) == [1, 2, 3] and eligible == 3


def test_oracle_buys_what_the_heads_get_most_wrong_by_the_gold_labels(packed):
    from models import IGNORE_INDEX

    # Gold: steps 0-1 correct, step 2 the first error, step 3 past it (not trained on, so not scored).
    gold = torch.tensor([[1, 1, 0, IGNORE_INDEX]] * 3)
    right = torch.tensor([[0.9, 0.9, 0.1, 0.9]] * 4)
    wrong_at_error = torch.tensor([[0.9, 0.9, 0.9, 0.9]] * 4)   # misses the first error
    wrong_after = torch.tensor([[0.9, 0.9, 0.1, 0.0]] * 4)      # differs only past the first error
    scores = study.oracle_scores([right, wrong_at_error, wrong_after], gold)
    assert scores[1] > scores[0] == pytest.approx(scores[2]) and scores[0] == pytest.approx(-math.log(0.9))
    # In a study run it spends exactly its budget, like every strategy.
    train, evaluation, info = packed
    row = study.run_budget(train, evaluation, strategy="oracle", budget=0.5, seed=0,
                           preset=study.study_preset("quick"), **_knobs(info))
    assert row["labels"] == study.budget_labels(0.5, len(train)) and 0.0 <= row["f1"] <= 1.0
    # What it chose, it chose for the heads' mistakes: more of it misjudged than of what random chose.
    rand = study.run_budget(train, evaluation, strategy="random", budget=0.5, seed=0,
                            preset=study.study_preset("quick"), **_knobs(info))
    assert row["misjudged_share"] > rand["misjudged_share"]


def test_oracle_mix_blends_the_oracles_order_with_actprms_by_rank():
    assert study.mixed_ranks([3.0, 1.0, 2.0], [10.0, 30.0, 20.0], 1.0) == pytest.approx([1.0, 0.0, 0.5])
    assert study.mixed_ranks([3.0, 1.0, 2.0], [10.0, 30.0, 20.0], 0.0) == pytest.approx([0.0, 1.0, 0.5])
    assert study.mixed_ranks([3.0, 1.0, 2.0], [10.0, 30.0, 20.0], 0.75) == pytest.approx([0.75, 0.25, 0.5])
    gold = torch.tensor([[1, 0]] * 3)
    # 0 misses the error and is sure (the oracle's first pick), 1 is right but unsure (ActPRM's), 2 is right and sure.
    probs = [torch.tensor([[0.99, 0.99], [0.98, 0.98]]), torch.tensor([[0.9, 0.2], [0.5, 0.4]]),
             torch.tensor([[0.99, 0.01], [0.98, 0.02]])]
    kw = {"p_threshold": 0.95, "std_threshold": 0.005, "generator": torch.Generator().manual_seed(0), "gold": gold}
    assert study.select_from_batch("oracle", probs, 1, **kw)[0] == [0]
    assert study.select_from_batch("oracle", probs, 1, oracle_mix=0.25, **kw)[0] == [1]
    with pytest.raises(ActPRMError, match="oracle_mix"):
        study.customize(study.study_preset("quick"), {"oracle_mix": "1.5"})


def test_a_rerun_takes_the_recorded_knobs_a_run_takes_and_not_those_kept_for_comparison():
    recorded = {"reg_lambda": 0.5, "p_threshold": 0.95, "subset": "p", "hidden_size": 32, "separator_id": 3,
                "max_length": 512, "backbone_path": None, "unread_steps_uncertain": True}
    assert study.run_arguments(recorded) == {"reg_lambda": 0.5, "p_threshold": 0.95, "subset": "p",
                                             "hidden_size": 32, "separator_id": 3}


def test_power_selection_draws_among_the_uncertain_and_leaves_random_as_it_was():
    torch.manual_seed(0)
    probs = [torch.rand(8, 3) for _ in range(40)] + [torch.full((8, 3), 0.99)] * 10  # the last 10 are confident
    kw = {"p_threshold": 0.95, "std_threshold": 0.005}
    top, eligible = study.select_from_batch("actprm", probs, 10, generator=torch.Generator().manual_seed(1), **kw)
    drawn = [study.select_from_batch("actprm", probs, 10, generator=torch.Generator().manual_seed(k),
                                     selection="power", **kw) for k in range(5)]
    # The same quota from the same uncertain set (never a confident one), but not always the top of it.
    assert all(len(p) == 10 and e == eligible == 40 and max(p) < 40 for p, e in drawn)
    assert any(set(p) != set(top) for p, _ in drawn)
    # Random selection draws exactly as under "top", so its runs stay comparable with earlier studies.
    assert study.select_from_batch("random", probs, 10, generator=torch.Generator().manual_seed(1), **kw) == \
        study.select_from_batch("random", probs, 10, generator=torch.Generator().manual_seed(1), selection="power",
                                **kw)
    assert study.customize(study.study_preset("quick"), {"selection": "Power"}).selection == "power"
    with pytest.raises(ActPRMError, match="'selection' takes top or power, got 'greedy'"):
        study.customize(study.study_preset("quick"), {"selection": "greedy"})


def test_paired_gap_cancels_the_spread_strategies_share_within_a_seed():
    # Seeds move both strategies together by up to 0.2 F1; ActPRM is always exactly 0.01 ahead.
    runs = [{"strategy": s, "budget": 0.5, "seed": k, "f1": base + (0.01 if s == "actprm" else 0.0)}
            for k, base in enumerate([0.1, 0.3, 0.2]) for s in ("actprm", "random")]
    runs.append({"strategy": "actprm", "budget": 0.5, "seed": 9, "f1": 0.9})  # no random run to pair with
    gap = study_report.paired_gap(runs, "actprm", "random", [0.5, 0.2])
    assert set(gap) == {"0.5"}
    assert gap["0.5"]["mean"] == pytest.approx(0.01) and gap["0.5"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert (gap["0.5"]["seeds_ahead"], gap["0.5"]["seeds"]) == (3, 3)


def test_summary_scores_each_f1_on_its_own_and_judges_targets_on_each():
    # At 0.5 ActPRM trails random by 10 points at half the labels; at the cross-fitted threshold it is
    # 4 points ahead and within 0.5 points of full data: the two summaries must not mix.
    preset = study.StudyPreset("t", budgets=(0.5, 1.0), seeds=(0, 1), model_preset="tiny", num_heads=2, rounds=1,
                               steps_per_round=1, batch_size=1, lr=0.1, synth_n=10)
    def row(strategy, budget, seed, f1, f1_tuned):
        return {"strategy": strategy, "budget": budget, "seed": seed, "labels": int(budget * 10), "f1": f1,
                "f1_tuned": f1_tuned, "error_share": 0.5}
    runs = []
    for seed in (0, 1):
        runs += [row("untrained", 0.0, seed, 0.1, 0.2), row("full", 1.0, seed, 0.6, 0.7),
                 row("actprm", 0.5, seed, 0.3, 0.7), row("random", 0.5, seed, 0.4, 0.66)]
    out = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    assert (out["full_data_f1"], out["full_data_f1_tuned"]) == (pytest.approx(0.6), pytest.approx(0.7))
    assert out["strategies"]["actprm"]["0.5"]["f1_tuned_mean"] == pytest.approx(0.7)
    assert out["actprm_minus_random_at_0.5"] == pytest.approx(-0.1)
    assert out["actprm_minus_random_at_0.5_tuned"] == pytest.approx(0.04)
    assert out["smallest_budget_within_0.5pt"] == {"actprm": 1.0, "random": 1.0}
    assert out["smallest_budget_within_0.5pt_tuned"] == {"actprm": 0.5, "random": 1.0}
    assert out["targets"] == {"actprm_within_0.5pt_at_or_below_0.5": False, "actprm_beats_random_at_0.5_by_3pt": False}
    assert out["targets_tuned"] == {"actprm_within_0.5pt_at_or_below_0.5": True, "actprm_beats_random_at_0.5_by_3pt": True}
    assert out["actprm_minus_random_tuned"]["0.5"]["seeds_ahead"] == 2
    text = study_report.markdown_table(out)
    assert "F1 at the cross-fitted threshold" in text and "+4.00 ± 0.00 (2/2)" in text
    assert "warning" not in out and "warning_tuned" not in out

    # The untrained ensemble already ranks as well at the tuned threshold as full data: that F1 learned nothing,
    # so its targets are not met however the strategies compare, while the F1 at 0.5 keeps its verdict.
    for r in runs:
        if r["strategy"] == "untrained":
            r["f1_tuned"] = 0.69
    out = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    assert "warning" not in out and "learned (almost) nothing" in out["warning_tuned"]
    assert out["targets_tuned"] == {"actprm_within_0.5pt_at_or_below_0.5": False, "actprm_beats_random_at_0.5_by_3pt": False}
    assert "**Warning:**" in study_report.markdown_table(out).split("F1 at the cross-fitted threshold")[1]


def test_the_report_shows_where_each_strategys_scores_fall_against_the_threshold():
    # ActPRM's labels move its scores so that 0.5 finds more first errors (0.35 vs 0.3) and the tuned threshold
    # drops: the table must show that next to the F1, full data's at 100%, and a study saved before these
    # fields existed must still render, without the section.
    preset = study.StudyPreset("t", budgets=(0.5, 1.0), seeds=(0, 1), model_preset="tiny", num_heads=2, rounds=1,
                               steps_per_round=1, batch_size=1, lr=0.1, synth_n=10)
    def row(strategy, budget, seed, acc_error, threshold):
        return {"strategy": strategy, "budget": budget, "seed": seed, "labels": int(budget * 10), "f1": 0.5,
                "f1_tuned": 0.5, "error_share": 0.5, "acc_error": acc_error, "acc_correct": 0.9,
                "threshold_tuned": threshold}
    runs = []
    for seed in (0, 1):
        runs += [row("full", 1.0, seed, 0.2, 0.8), row("actprm", 0.5, seed, 0.3 + 0.1 * seed, 0.6),
                 row("random", 0.5, seed, 0.3, 0.75)]
    out = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    assert out["strategies"]["actprm"]["0.5"]["acc_error_mean"] == pytest.approx(0.35)
    assert out["strategies"]["random"]["1.0"]["threshold_tuned_mean"] == pytest.approx(0.8)
    text = study_report.markdown_table(out)
    assert "| actprm | 0.35 / 0.90 · 0.60 | 0.20 / 0.90 · 0.80 |" in text
    assert "| random | 0.30 / 0.90 · 0.75 | 0.20 / 0.90 · 0.80 |" in text

    for r in runs:
        del r["acc_error"], r["acc_correct"], r["threshold_tuned"]
    old = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    assert "acc_error_mean" not in old["strategies"]["actprm"]["0.5"]
    assert "Where the 0.5 threshold falls" not in study_report.markdown_table(old)


def test_study_is_deterministic_under_a_seed(packed):
    train, evaluation, info = packed
    preset = study.study_preset("quick")
    first = study.run_seed(train, evaluation, seed=3, preset=preset, **_knobs(info))
    again = study.run_seed(train, evaluation, seed=3, preset=preset, **_knobs(info))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in again]


def test_quick_study_flow_end_to_end(pool_db, tmp_path, monkeypatch, prefect_harness):
    from mlflow.tracking import MlflowClient

    from actprm.store import Store
    from study.flow import study_flow

    home = pool_db.parent
    monkeypatch.setenv("ACTPRM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    result = study_flow(pool=POOL, study_preset="quick", config={"model": {"preset": "tiny"}}, seeds=[0, 1],
                        output_dir=str(out))

    with Store(pool_db, read_only=True) as store:
        splits = store.split_counts(POOL)
    assert splits["eval"] > 0 and result["train_size"] == splits["train"] and result["eval_size"] == splits["eval"]

    saved = json.loads((out / "al_study.json").read_text())
    assert set(saved) >= {"full_data_f1", "strategies", "preset", "pool", "seeds"}
    assert saved["preset"] == "quick" and saved["pool"] == POOL and saved["seeds"] == [0, 1]
    assert set(saved["strategies"]) == {"actprm", "random", "entropy", "bald"}
    for strategy, row in saved["strategies"].items():
        assert set(row) == {"0.2", "0.5", "1.0"}
        for budget, cell in row.items():
            assert 0.0 <= cell["f1_mean"] <= 1.0 and cell["f1_std"] >= 0.0
            assert 0.0 <= cell["f1_tuned_mean"] <= 1.0 and cell["f1_tuned_std"] >= 0.0
            want = study.budget_labels(float(budget), saved["train_size"])
            assert cell["labels"] <= want if strategy == "actprm" else cell["labels"] == want
        assert row["1.0"]["f1_mean"] == pytest.approx(saved["full_data_f1"])
    # Full data is trained once per seed, not once per strategy.
    assert sum(r["strategy"] == "full" for r in result["runs"]) == 2
    assert sum(r["strategy"] == "untrained" and r["labels"] == 0 for r in result["runs"]) == 2
    assert len(result["runs"]) == 2 * (2 + 2 * 4)
    assert math.isfinite(saved["actprm_minus_random_at_0.5"])
    gap = saved["actprm_minus_random"]["0.5"]
    assert gap["seeds"] == 2 and gap["mean"] == pytest.approx(saved["actprm_minus_random_at_0.5"])
    # what each strategy spent its labels on: a share of erroneous trajectories, known for every run that bought
    assert all(0.0 <= row[b]["error_share"] <= 1.0 for row in saved["strategies"].values() for b in ("0.2", "0.5"))

    assert "| actprm |" in (out / "al_study.md").read_text()
    assert (out / "al_study.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["full_data_f1"] == pytest.approx(saved["full_data_f1"])
    assert run.data.metrics["full_data_f1_tuned"] == pytest.approx(saved["full_data_f1_tuned"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "study")}
    assert artifacts == {"study/al_study.json", "study/al_study.md", "study/al_study.png"}


def test_a_study_without_a_pool_runs_on_its_presets_synthetic_pool(tmp_path, monkeypatch, prefect_harness):
    """`actprm study` with no --pool measures the pool study/scripts/run.py does, not the config's sample pool."""
    from actprm.store import Store
    from study.flow import study_flow

    home = tmp_path / "home"
    monkeypatch.setenv("ACTPRM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    preset = study.study_preset("quick")
    # The config's synth section describes the default sample pool; the study's own pool ignores it.
    config = {"model": {"preset": "tiny"}, "synth": {"n": 40, "mix": "reading"}}
    result = study_flow(study_preset="quick", config=config, output_dir=str(tmp_path / "out"),
                        preset_overrides={"budgets": "0.5,1.0"}, strategies=["random"])

    name, synth = study.synthetic_pool(preset)
    assert result["pool"] == name == f"synth-study-{preset.synth_n}" and synth["mix"] == preset.synth_mix
    assert result["train_size"] + result["eval_size"] == preset.synth_n
    with Store(home / "actprm.duckdb", read_only=True) as store:
        assert store.pool_exists(name) and not store.pool_exists("sample")
    assert study.synthetic_pool(study.study_preset("full"))[0] == "synth-study-3000-reading"


def test_a_study_that_crashed_goes_on_from_its_last_finished_seed(pool_db, tmp_path, monkeypatch, prefect_harness):
    from study.flow import study_flow

    monkeypatch.setenv("ACTPRM_HOME", str(pool_db.parent))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    config = {"model": {"preset": "tiny"}}
    # A variant of the quick preset on two strategies: what a user checking one change runs.
    variant = {"preset_overrides": {"budgets": "0.5,1.0", "rounds": 2}, "strategies": ["random", "actprm"]}
    real_run_seed = study.run_seed

    def crash_in_seed_1(*args, seed, **kwargs):
        if seed == 1:
            raise RuntimeError("worker lost")
        return real_run_seed(*args, seed=seed, **kwargs)

    monkeypatch.setattr(study, "run_seed", crash_in_seed_1)
    with pytest.raises(RuntimeError, match="worker lost"):
        study_flow(pool=POOL, study_preset="quick", config=config, seeds=[0, 1], output_dir=str(out), **variant)
    monkeypatch.setattr(study, "run_seed", real_run_seed)
    # The outputs hold the seed that finished: a consistent 1-seed study, not nothing and not a torn file.
    first = json.loads((out / "al_study.json").read_text())
    assert first["seeds"] == [0] and {r["seed"] for r in first["runs"]} == {0}
    assert "seeds [0]" in (out / "al_study.md").read_text() and not list(out.glob(".*partial*"))
    # The checkpoint counts the crashed invocation's time, so the study's total does not lose it.
    assert len(first["wall_seconds_per_invocation"]) == 1 and first["wall_seconds"] > 0
    # ... and the host it ran on, which it never timed again.
    [crashed_host] = first["host_gemm_gflops_per_invocation"]
    assert crashed_host["seeds"] == [0, 1] and crashed_host["before"] > 0 and crashed_host["after"] is None
    assert crashed_host["cpu_capability"] == first["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # Say the crashed invocation ran on a host with other kernels: its runs reproduce bit for bit only there.
    first["host_gemm_gflops_per_invocation"][0]["cpu_capability"] = "OTHER-KERNELS"
    (out / "al_study.json").write_text(json.dumps(first))

    extended = study_flow(pool=POOL, study_preset="quick", config=config, seeds=[0, 1], output_dir=str(out),
                          extend=True, **variant)

    saved = json.loads((out / "al_study.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["study_preset"]["seeds"] == [0, 1]
    spent = saved["wall_seconds_per_invocation"]
    assert spent[0] == first["wall_seconds"] and len(spent) == 2 and saved["wall_seconds"] == pytest.approx(sum(spent))
    assert saved["preset"] == "quick (budgets=(0.5, 1.0), rounds=2)" and set(saved["strategies"]) == {"actprm", "random"}
    assert {(r["strategy"], r["budget"]) for r in first["runs"]} == {
        ("untrained", 0.0), ("full", 1.0), ("actprm", 0.5), ("random", 0.5)}
    # Seed 0's runs are the earlier invocation's, timings included: it was not trained again.
    assert [r for r in saved["runs"] if r["seed"] == 0] == first["runs"]
    assert sum(r["seed"] == 1 for r in saved["runs"]) == len(first["runs"])
    assert saved["actprm_minus_random"]["0.5"]["seeds"] == 2
    # Each invocation's host, with the seeds it ran: the study says its seeds span two kinds of host.
    hosts = saved["host_gemm_gflops_per_invocation"]
    assert [h["seeds"] for h in hosts] == [[0, 1], [1]] and hosts[1]["after"] > 0
    here = torch.backends.cpu.get_cpu_capability()
    assert saved["cpu_capability"] == here and saved["cpu_capabilities"] == sorted(["OTHER-KERNELS", here])
    table = (out / "al_study.md").read_text()
    assert "## Wall time and host" in table and "different CPU kernels (" in table
    # The summary is the one a single invocation over both seeds computes from the same runs.
    preset = dataclasses.replace(study.customize(study.study_preset("quick"), variant["preset_overrides"]),
                                 seeds=(0, 1))
    again = study_report.summarize(saved["runs"], preset=preset, pool=POOL, seeds=[0, 1],
                                   train_size=saved["train_size"], eval_size=saved["eval_size"],
                                   strategies=("actprm", "random"))
    assert json.loads(json.dumps(again)) == {k: v for k, v in saved.items() if k in again}
    assert extended["mlflow_run_id"] and extended["seeds"] == [0, 1]

    # Other uncertainty knobs would change what ActPRM buys: extending under them is refused, before any work.
    with pytest.raises(ActPRMError, match="cannot extend .*p_threshold was 0.95, this run has 0.9"):
        study_flow(pool=POOL, study_preset="quick", config={**config, "uncertainty": {"p_threshold": 0.9}},
                   seeds=[2], output_dir=str(out), extend=True, **variant)
    with pytest.raises(ActPRMError, match="cannot extend .*study preset rounds was 2, this run has 3"):
        study_flow(pool=POOL, study_preset="quick", config=config, seeds=[2], output_dir=str(out), extend=True,
                   preset_overrides={"budgets": "0.5,1.0"}, strategies=["actprm", "random"])
    assert json.loads((out / "al_study.json").read_text()) == saved


def _earlier(tmp_path, **changes):
    preset = study.study_preset("quick")
    earlier = {"pool": "p", "train_size": 10, "eval_size": 4, "split_sha256": "abc",
               "study_preset": json.loads(json.dumps(dataclasses.asdict(preset))),
               "knobs": {"p_threshold": 0.95, "subset": "p"}, "runs": [{"seed": 0, "strategy": "full"}],
               "strategies": {s: {} for s in study.STRATEGY_NAMES}, "numerics_version": study.NUMERICS_VERSION}
    path = tmp_path / "al_study.json"
    path.write_text(json.dumps({**earlier, **changes}))
    return path, preset


@pytest.mark.parametrize("changes, message", [
    ({"pool": "q"}, "it was made on pool 'q', not 'p'"),
    ({"split_sha256": "def"}, "pool 'p' was split into other train/eval trajectories"),
    ({"eval_size": 5}, "pool 'p' was split into other train/eval trajectories"),
    ({"knobs": {"p_threshold": 0.9}}, "p_threshold was 0.9, this run has 0.95"),
    ({"strategies": {"actprm": {}, "random": {}}}, "it compares actprm, random, this run actprm, random, entropy, bald"),
    ({"numerics_version": 1}, "made by version 1 of the study.s training arithmetic"),
])
def test_extend_refuses_a_study_made_under_other_settings(tmp_path, changes, message):
    path, preset = _earlier(tmp_path, **changes)
    with pytest.raises(ActPRMError, match=message):
        study_report.previous_runs(path, pool="p", preset=preset, knobs={"p_threshold": 0.95, "subset": "p"},
                                   split="abc", train_size=10, eval_size=4)


def test_extend_accepts_other_threads_and_seeds_but_not_another_preset(tmp_path):
    path, preset = _earlier(tmp_path)
    faster = dataclasses.replace(preset, seeds=(5, 6), head_threads=2)
    earlier = study_report.previous_runs(path, pool="p", preset=faster, knobs={"p_threshold": 0.95},
                                         split="abc", train_size=10, eval_size=4)
    assert earlier.runs == [{"seed": 0, "strategy": "full"}] and earlier.wall_seconds == [] and earlier.hosts == []
    # A study written before the flow timed each invocation carries one total: it stays counted.
    path.write_text(json.dumps({**json.loads(path.read_text()), "wall_seconds": 61.5}))
    assert study_report.previous_runs(path, pool="p", preset=faster, knobs={}, split="abc", train_size=10,
                                      eval_size=4).wall_seconds == [61.5]
    with pytest.raises(ActPRMError, match="study preset steps_per_round was 15, this run has 30"):
        study_report.previous_runs(path, pool="p", preset=dataclasses.replace(preset, steps_per_round=30), knobs={},
                                   split="abc", train_size=10, eval_size=4)
    with pytest.raises(ActPRMError, match="no such study"):
        study_report.previous_runs(tmp_path / "none.json", pool="p", preset=preset, knobs={}, split="abc",
                                   train_size=10, eval_size=4)


def test_a_host_entry_written_before_entries_named_their_kernels_takes_the_studys(tmp_path):
    """study/scripts/run.py used to record the kernels once per study, beside a one-entry host list."""
    path, preset = _earlier(tmp_path, cpu_capability="AVX2",
                            host_gemm_gflops_per_invocation=[{"before": 90.0, "after": 88.5, "threads": 2}])
    earlier = study_report.previous_runs(path, pool="p", preset=preset, knobs={}, split="abc", train_size=10,
                                         eval_size=4)
    assert earlier.hosts == [{"before": 90.0, "after": 88.5, "threads": 2, "cpu_capability": "AVX2"}]
    assert study_report.other_kernels(earlier.hosts) == []
    assert study_report.other_kernels([*earlier.hosts, {"cpu_capability": "AVX512"}]) == ["AVX2", "AVX512"]


def test_cli_seeds_are_distinct_integers():
    from study.protocol import parse_seeds

    assert parse_seeds("3, 4,5") == [3, 4, 5] and parse_seeds(None) is None
    for bad in ("a,b", "1,1", ","):
        with pytest.raises(ActPRMError, match="--seeds takes"):
            parse_seeds(bad)


def test_a_preset_variant_is_named_for_what_it_changes_and_bad_fields_are_refused():
    full = study.study_preset("full")
    variant = study.customize(full, {"rounds": "32", "budgets": "0.5,1.0", "lr_decay": "false", "lr": "1e-3",
                                     "steps_per_round": str(full.steps_per_round)})
    assert (variant.rounds, variant.budgets, variant.lr_decay, variant.lr) == (32, (0.5, 1.0), False, 1e-3)
    # The name lists what changed: steps_per_round was set to the value the preset already has.
    assert variant.name == "full (budgets=(0.5, 1.0), lr=0.001, lr_decay=False, rounds=32)"
    assert variant.steps_per_round == full.steps_per_round and study.customize(full, {}) is full
    assert study.customize(full, {"rounds": str(full.rounds)}) is full
    for bad, message in [({"name": "x"}, "cannot set study preset field 'name'"),
                         ({"rounds": "many"}, "'rounds' takes a positive number, got 'many'"),
                         ({"steps_per_round": "0"}, "'steps_per_round' takes a positive number"),
                         ({"budgets": "0.5,1.5"}, "'budgets' takes comma-separated budget fractions in \\(0, 1\\]"),
                         ({"replay_new_share": "1.5"}, "'replay_new_share' takes a share in \\[0, 1\\]"),
                         ({"epochs": "-1"}, "'epochs' takes a number of passes over the labels, 0 \\(fixed"),
                         ({"epochs": "nan"}, "'epochs' takes a number of passes")]:
        with pytest.raises(ActPRMError, match=message):
            study.customize(full, bad)


def test_a_subset_of_a_packed_pool_keeps_each_trajectory_with_its_states_and_labels(packed):
    train, _, _ = packed
    part = train.take([3, 0])
    assert part.ids == [train.ids[3], train.ids[0]] and part.first_errors == [train.first_errors[3], train.first_errors[0]]
    assert torch.equal(part.states[0], train.states[3]) and torch.equal(part.labels[1], train.labels[0])
    assert part.steps.tolist() == [int(train.steps[3]), int(train.steps[0])]


def test_replay_minibatch_draws_its_share_from_the_labels_just_bought():
    labeled, new = torch.arange(100), torch.arange(90, 100)  # positions 90-99 were bought this round

    def gen():
        return torch.Generator().manual_seed(3)

    # Share 0 is uniform replay, drawn exactly as the study drew before the share existed.
    uniform = study.replay_minibatch(labeled, new, 16, 0.0, gen())
    assert torch.equal(uniform, labeled[torch.randperm(100, generator=gen())[:16]])
    half = study.replay_minibatch(labeled, new, 16, 0.5, gen())
    assert len(half) == 16 and int((half >= 90).sum()) >= 8 and set(half.tolist()) <= set(range(100))
    # Fewer new labels than the share asks for: every one of them, the rest from all labels.
    few = study.replay_minibatch(labeled, new[:3], 16, 0.5, gen())
    assert len(few) == 16 and {90, 91, 92} <= set(few.tolist())
    # A round that bought nothing trains on the replay alone.
    assert len(study.replay_minibatch(labeled, new[:0], 16, 0.5, gen())) == 16
    assert study.customize(study.study_preset("quick"), {"replay_new_share": "0.25"}).replay_new_share == 0.25


def test_strategy_subsets_keep_the_canonical_order():
    assert study.strategy_names(None) == study.STRATEGY_NAMES
    assert study.strategy_names("random, actprm") == ("actprm", "random")
    assert study.strategy_names("oracle,random") == ("random", "oracle")  # a diagnostic runs only when named
    assert "oracle" not in study.strategy_names(None)
    with pytest.raises(ActPRMError, match="unknown study strategy 'greedy'"):
        study.strategy_names(["actprm", "greedy"])


def test_final_retrain_scores_fresh_heads_trained_on_exactly_the_labels_bought(packed):
    train, evaluation, info = packed
    preset = study.study_preset("quick")
    retrain = study.customize(preset, {"final_retrain": "true"})
    assert retrain.name == "quick (final_retrain=True)" and not preset.final_retrain
    seen = {}
    online = study.run_budget(train, evaluation, strategy="actprm", budget=0.5, seed=2, preset=preset,
                              inspect=lambda model, bought: seen.update(bought=bought), **_knobs(info))
    row = study.run_budget(train, evaluation, strategy="actprm", budget=0.5, seed=2, preset=retrain, **_knobs(info))
    # Buying is untouched: the same labels, and the buying heads' F1 is kept beside the retrained one.
    assert row["labels"] == online["labels"] == len(seen["bought"]) > 0
    assert (row["f1_online"], row["f1_tuned_online"]) == (online["f1"], online["f1_tuned"])
    # The score is full data's protocol run on the bought trajectories alone.
    alone = study.run_budget(train.take(seen["bought"]), evaluation, strategy="full", budget=1.0, seed=2,
                             preset=preset, **_knobs(info))
    assert (row["f1"], row["f1_tuned"]) == (alone["f1"], alone["f1_tuned"])
    # Full data is already that protocol: it is neither retrained nor changed.
    full = [study.run_budget(train, evaluation, strategy="full", budget=1.0, seed=2, preset=p, **_knobs(info))
            for p in (preset, retrain)]
    assert "f1_online" not in full[1] and full[0]["f1"] == full[1]["f1"]
    # The report says what scored each run and still shows the buying heads' F1.
    runs = study.run_seed(train, evaluation, seed=2, preset=retrain, strategies=("actprm", "random"), **_knobs(info))
    result = study_report.summarize(runs, preset=retrain, pool=POOL, seeds=[2], train_size=len(train),
                                    eval_size=len(evaluation), strategies=("actprm", "random"))
    assert result["strategies"]["actprm"]["0.5"]["f1_online_mean"] == next(
        r["f1_online"] for r in runs if r["strategy"] == "actprm" and r["budget"] == 0.5)
    table = study_report.markdown_table(result)
    assert "fresh heads trained on the labels it bought" in table and "| actprm, online |" in table


def test_extend_takes_a_preset_field_added_since_as_its_default(tmp_path):
    path, preset = _earlier(tmp_path)
    saved = json.loads(path.read_text())
    for added in ("replay_new_share", "final_retrain", "selection"):  # fields a study written before them lacks
        del saved["study_preset"][added]
    path.write_text(json.dumps(saved))
    earlier = study_report.previous_runs(path, pool="p", preset=preset, knobs={}, split="abc", train_size=10,
                                         eval_size=4)
    assert earlier.runs == [{"seed": 0, "strategy": "full"}]
    with pytest.raises(ActPRMError, match="study preset final_retrain was False, this run has True"):
        study_report.previous_runs(path, pool="p", preset=dataclasses.replace(preset, final_retrain=True), knobs={},
                                   split="abc", train_size=10, eval_size=4)


def test_training_skips_the_unlabeled_steps_and_keeps_the_loss_and_its_gradient(packed):
    train, _, info = packed
    idx = torch.arange(len(train))

    def fresh():
        return study_states.heads_model(info["hidden_size"], info["separator_id"], num_heads=4, seed=0,
                                        reg_lambda=0.5, learning_probability=1.0)

    model = fresh()
    _, rows, loss = study_states.forward_pool(model, train, idx, with_labels=True)
    loss.backward()
    # The same loss over every scored step, those after the first error (IGNORE_INDEX) included.
    full = fresh()
    width = int(train.steps.max())
    scored = torch.arange(width).unsqueeze(0) < train.steps.unsqueeze(1)
    cls, reg = full.step_loss(full.head_logits(train.states[:, :width][scored]), train.labels[:, :width][scored],
                              scored.nonzero(as_tuple=True)[0])
    (cls + reg).backward()
    assert len(rows) < int(scored.sum())  # the pool has steps after a first error, and they were skipped
    assert torch.allclose(loss, cls + reg, rtol=1e-6, atol=0)
    for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
        assert torch.allclose(getattr(model, name).grad, getattr(full, name).grad, rtol=1e-4, atol=1e-8), name


@pytest.fixture(scope="module")
def token_packed(pool_db):
    """The same splits as `packed`, as the token states entering the tiny backbone's top layer."""
    from actprm.store import Store

    with Store(pool_db) as store:
        data = study.load_pool(store, POOL, eval_fraction=0.25, seed=0)
    states, info = study_states.cached_step_states(data["train"] + data["eval"], preset="tiny", cache_dir=None,
                                                   threads=1, top_layers=1)
    train, evaluation = study_states.pack_splits(data, states, info["top"])
    return train, evaluation, info


def test_the_top_layer_run_on_its_cached_input_reads_the_same_steps_as_the_frozen_backbone(packed, token_packed):
    steps, _, info = packed
    tokens, _, token_info = token_packed
    assert token_info["top_layers"] == 1 and (token_info["hidden_size"], token_info["separator_id"]) == (
        info["hidden_size"], info["separator_id"])
    # The same trajectories, the same scored steps and labels, whichever way the states were cached.
    assert tokens.ids == steps.ids and torch.equal(tokens.steps, steps.steps)
    assert torch.equal(tokens.labels, steps.labels[:, :tokens.labels.shape[1]]) and torch.equal(tokens.unread,
                                                                                                steps.unread)
    # Before any training the pretrained layer on the cached tokens gives the step states the backbone gave.
    model = study_states.heads_model(info["hidden_size"], info["separator_id"], num_heads=4, seed=0, reg_lambda=0.5,
                                     learning_probability=1.0, top=tokens.top)
    frozen = study_states.heads_model(info["hidden_size"], info["separator_id"], num_heads=4, seed=0,
                                      reg_lambda=0.5, learning_probability=1.0)
    idx = torch.arange(len(tokens))
    assert len(idx) > 2 * study_states.TOKEN_GROUP  # the layer runs on several groups of similar length
    probabilities = study_states.step_probabilities
    for a, b in zip(probabilities(model, tokens, idx), probabilities(frozen, steps, idx)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    # And the training loss over the labeled steps is the same loss.
    shuffled = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
    _, rows, loss = study_states.forward_pool(model, tokens, shuffled, with_labels=True)
    _, frozen_rows, frozen_loss = study_states.forward_pool(frozen, steps, shuffled, with_labels=True)
    assert torch.equal(rows, frozen_rows) and torch.allclose(loss, frozen_loss, rtol=1e-5)


def test_a_run_with_top_layers_trains_them_and_reproduces_under_its_seed(token_packed):
    train, evaluation, info = token_packed
    preset = study.customize(study.study_preset("quick"), {"top_layers": "1", "top_layers_lr": "1e-3"})
    assert preset.name == "quick (top_layers=1, top_layers_lr=0.001)"
    seen = {}
    row = study.run_budget(train, evaluation, strategy="actprm", budget=0.5, seed=1, preset=preset,
                           inspect=lambda model, bought: seen.update(model=model), **_knobs(info))
    assert 0 < row["labels"] <= study.budget_labels(0.5, len(train))
    trained = dict(seen["model"].backbone.named_parameters())
    pretrained = dict(train.top.named_parameters())
    assert trained.keys() == pretrained.keys()
    assert all(p.requires_grad for p in trained.values())
    assert any(not torch.equal(trained[k], pretrained[k]) for k in trained)  # the layer learned
    assert all(not p.requires_grad for p in pretrained.values())  # and the pool's pretrained copy is untouched
    again = study.run_budget(train, evaluation, strategy="actprm", budget=0.5, seed=1, preset=preset, **_knobs(info))
    assert {k: again[k] for k in ("labels", "f1", "f1_tuned")} == {k: row[k] for k in ("labels", "f1", "f1_tuned")}


def test_top_layers_beyond_the_backbone_or_below_zero_are_refused_in_one_line(pool_db):
    assert study.customize(study.study_preset("full"), {"top_layers": "0"}) is study.study_preset("full")
    with pytest.raises(ActPRMError, match="'top_layers' takes a whole number of layers, 0 or more, got '-1'"):
        study.customize(study.study_preset("full"), {"top_layers": "-1"})
    with pytest.raises(ActPRMError, match="top_layers is 3, but the 'tiny' backbone has 2 layers"):
        study_states.cached_step_states([], preset="tiny", cache_dir=None, top_layers=3)


def test_a_study_with_top_layers_caches_their_input_once_and_a_rerun_reproduces_it(pool_db, tmp_path, monkeypatch,
                                                                                   prefect_harness):
    from study.flow import study_flow

    home = pool_db.parent
    monkeypatch.setenv("ACTPRM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(out):
        return study_flow(pool=POOL, study_preset="quick", config={"model": {"preset": "tiny"}}, seeds=[0],
                          output_dir=str(tmp_path / out), strategies=["actprm"],
                          preset_overrides={"top_layers": "1", "budgets": "0.5,1.0"})

    first, second = run("a"), run("b")
    saved = json.loads((tmp_path / "a" / "al_study.json").read_text())
    assert saved["study_preset"]["top_layers"] == 1 and "top_layers=1" in saved["preset"]
    assert len(list((home / "study" / "cache").glob("token-states-*.pt"))) == 1
    assert (first["model"]["cached"], second["model"]["cached"]) == (False, True)
    assert [(r["strategy"], r["f1"], r["labels"]) for r in first["runs"]] == [
        (r["strategy"], r["f1"], r["labels"]) for r in second["runs"]]


def test_a_tie_with_full_data_that_more_head_steps_would_break_is_not_the_target_met():
    # ActPRM's half ties full data and leads random by 4 points, but full data gains 2 points at twice the steps
    # (seed 0: +1, seed 1: +3): the tie is with an under-trained reference, so only the lead over random stands.
    preset = study.StudyPreset("t", budgets=(0.5, 1.0), seeds=(0, 1), model_preset="tiny", num_heads=2, rounds=1,
                               steps_per_round=4, batch_size=1, lr=0.1, synth_n=10, check_steps=True)
    def row(strategy, budget, seed, f1, steps=4):
        return {"strategy": strategy, "budget": budget, "seed": seed, "labels": int(budget * 10), "f1": f1,
                "f1_tuned": f1, "error_share": 0.5, "steps": steps}
    runs = []
    for seed, gain in ((0, 0.01), (1, 0.03)):
        runs += [row("full", 1.0, seed, 0.6), row(study.STEP_CHECK, 1.0, seed, 0.6 + gain, steps=8),
                 row("actprm", 0.5, seed, 0.6), row("random", 0.5, seed, 0.56)]
    out = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    check = out["step_check"]
    assert check["gain"] == pytest.approx(0.02) and check["se"] == pytest.approx(0.01)
    assert check["full_data_f1_2x_steps"] == pytest.approx(0.62) and (check["steps"], check["steps_2x"]) == (4, 8)
    assert (check["seeds_ahead"], check["seeds"]) == (2, 2)
    # The check is a reference, not a strategy: full data and the table are the study's own steps.
    assert out["full_data_f1"] == pytest.approx(0.6) and set(out["strategies"]) == {"actprm", "random"}
    assert out["smallest_budget_within_0.5pt"]["actprm"] == 0.5
    assert out["targets"] == {"actprm_within_0.5pt_at_or_below_0.5": False, "actprm_beats_random_at_0.5_by_3pt": True}
    assert "+2.00 ± 1.00 F1 points with twice the head steps (4 → 8; 2/2 seeds)" in out["warning_steps"]
    text = study_report.markdown_table(out)
    assert text.count("**Warning:** full data gains +2.00") == 2  # under both F1s
    assert "at twice the head steps (4 → 8): 0.6200, +2.00 ± 1.00 points paired by seed (2/2 seeds ahead)" in text

    # Within the tolerance (+0.3 points), the steps suffice: no warning, and the tie counts.
    for r in runs:
        if r["strategy"] == study.STEP_CHECK:
            r["f1"] = r["f1_tuned"] = 0.603
    out = study_report.summarize(runs, preset=preset, pool="p", seeds=[0, 1], train_size=10, eval_size=4,
                                 strategies=("actprm", "random"))
    assert "warning_steps" not in out and out["targets"]["actprm_within_0.5pt_at_or_below_0.5"]
    # A study that never ran the check says nothing about it.
    plain = study_report.summarize([r for r in runs if r["strategy"] != study.STEP_CHECK], preset=preset, pool="p",
                                   seeds=[0, 1], train_size=10, eval_size=4, strategies=("actprm", "random"))
    assert "step_check" not in plain and "twice the head steps" not in study_report.markdown_table(plain)


def test_the_step_check_trains_full_data_on_twice_the_steps_under_the_same_seed(packed):
    train, evaluation, info = packed
    preset = study.customize(study.study_preset("quick"), {"check_steps": "true", "budgets": "0.5,1.0"})
    runs = study.run_seed(train, evaluation, seed=1, preset=preset, strategies=("random",), **_knobs(info))
    assert [r["strategy"] for r in runs] == ["untrained", "full", study.STEP_CHECK, "random"]
    full, check = runs[1], runs[2]
    assert full["steps"] == preset.rounds * preset.steps_per_round and check["steps"] == 2 * full["steps"]
    assert check["labels"] == full["labels"] == len(train)
    # It is exactly full data's run with the steps doubled, nothing else changed.
    longer = dataclasses.replace(preset, steps_per_round=2 * preset.steps_per_round, check_steps=False)
    again = study.run_budget(train, evaluation, strategy="full", budget=1.0, seed=1, preset=longer, **_knobs(info))
    assert (check["f1"], check["f1_tuned"]) == (again["f1"], again["f1_tuned"])
    # ... and the study's other runs do not depend on whether it ran.
    plain = study.run_seed(train, evaluation, seed=1, preset=dataclasses.replace(preset, check_steps=False),
                           strategies=("random",), **_knobs(info))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(plain) == strip([r for r in runs if r["strategy"] != study.STEP_CHECK])


def test_with_epochs_the_head_steps_follow_the_labels_a_budget_allows():
    fixed = study.StudyPreset("t", budgets=(0.5, 1.0), seeds=(0,), model_preset="tiny", num_heads=2, rounds=2,
                              steps_per_round=5, batch_size=4, lr=0.1, synth_n=10)
    assert study.round_steps(fixed, 0.5, [5, 5]) == [5, 5] == study.round_steps(fixed, 1.0, [5, 5])
    epochs = dataclasses.replace(fixed, epochs=2.0)
    # Full data: 2 passes over 5 then 10 labels at 4 a step: ceil(2.5) = 3 steps, then ceil(5) = 5 in all.
    assert study.round_steps(epochs, 1.0, [5, 5]) == [3, 2]
    # Half: its quota is 3 then 5 labels (half up), so ceil(1.5) = 2 steps, then ceil(2.5) = 3 in all.
    assert study.round_steps(epochs, 0.5, [5, 5]) == [2, 1]
    # A pool twice as large takes twice the steps.
    assert sum(study.round_steps(epochs, 1.0, [10, 10])) == 10
    # 1.1 * 90 / 3 is 33.00000000000001 in floats: 33 steps, not 34 for the rounding error.
    assert sum(study.round_steps(dataclasses.replace(epochs, epochs=1.1, batch_size=3), 1.0, [45, 45])) == 33


def test_with_epochs_a_run_takes_passes_over_its_budget_and_the_step_check_doubles_them(packed):
    train, evaluation, info = packed
    preset = study.customize(study.study_preset("quick"), {"epochs": "3", "check_steps": "true", "budgets": "0.5,1.0"})
    assert "epochs=3.0" in preset.name
    runs = {r["strategy"]: r for r in study.run_seed(train, evaluation, seed=0, preset=preset,
                                                     strategies=("random",), **_knobs(info))}
    n, size = len(train), preset.batch_size
    assert runs["full"]["steps"] == math.ceil(3 * n / size)
    assert runs[study.STEP_CHECK]["steps"] == math.ceil(6 * n / size)
    assert runs["random"]["steps"] == math.ceil(3 * study.budget_labels(0.5, n) / size) < runs["full"]["steps"]
    assert runs["random"]["labels"] == study.budget_labels(0.5, n)


def test_extending_a_study_with_the_step_check_checks_its_seeds_without_rerunning_them(pool_db, tmp_path,
                                                                                      monkeypatch, prefect_harness):
    from study.flow import study_flow

    monkeypatch.setenv("ACTPRM_HOME", str(pool_db.parent))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    kwargs = {"pool": POOL, "study_preset": "quick", "config": {"model": {"preset": "tiny"}}, "output_dir": str(out),
              "strategies": ["random"]}
    study_flow(seeds=[0], preset_overrides={"budgets": "0.5,1.0"}, **kwargs)
    first = json.loads((out / "al_study.json").read_text())
    assert "step_check" not in first

    study_flow(seeds=[0, 1], preset_overrides={"budgets": "0.5,1.0", "check_steps": "true"}, extend=True, **kwargs)
    saved = json.loads((out / "al_study.json").read_text())
    # Seed 0 keeps its runs and gains the check; seed 1 is new and runs it with the rest.
    assert [r for r in saved["runs"] if r["seed"] == 0 and r["strategy"] != study.STEP_CHECK] == first["runs"]
    assert sorted(r["seed"] for r in saved["runs"] if r["strategy"] == study.STEP_CHECK) == [0, 1]
    assert saved["step_check"]["seeds"] == 2 == saved["step_check_tuned"]["seeds"]
    assert [h.get("step_check_seeds") for h in saved["host_gemm_gflops_per_invocation"]] == [None, [0]]
    assert "at twice the head steps (" in (out / "al_study.md").read_text()


def _portable():
    from study.scripts import portable

    return portable


def test_the_study_on_an_exported_split_makes_the_runs_the_flow_makes(pool_db, tmp_path, monkeypatch,
                                                                     prefect_harness):
    """study/scripts/portable.py (for a GPU box without Prefect, DuckDB or MLflow) is the same study."""
    from study.flow import study_flow

    portable = _portable()
    monkeypatch.setenv("ACTPRM_HOME", str(pool_db.parent))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    flow = study_flow(pool=POOL, study_preset="quick", config={"model": {"preset": "tiny"}}, seeds=[1],
                      output_dir=str(tmp_path / "flow"), strategies=["actprm", "random"])

    split = portable.export_split(str(pool_db.parent), POOL, tmp_path / "split.json.gz")
    assert portable.read_split(tmp_path / "split.json.gz") == split
    assert (len(split["train"]), len(split["eval"])) == (flow["train_size"], flow["eval_size"])
    preset = dataclasses.replace(study.study_preset("quick"), model_preset="tiny", seeds=(1,))
    out = portable.run_study(split, backbone=None, preset=preset, strategies=("actprm", "random"),
                             output=tmp_path / "portable", log=lambda _: None)

    def runs(result):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in result["runs"]]

    saved = json.loads((tmp_path / "portable" / "al_study.json").read_text())
    assert runs(saved) == runs(flow) and len(runs(saved)) == 2 + 2 * 2
    assert saved["split_sha256"] == flow["split_sha256"] and out["runs"] == len(saved["runs"])
    # every finished run is on disk as it finishes, for a machine taken back mid-seed
    lines = (tmp_path / "portable" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line)["strategy"] for line in lines] == [r["strategy"] for r in saved["runs"]]


def test_the_signals_check_reruns_a_study_from_its_exported_split(pool_db, tmp_path, capsys):
    """study/scripts/signals.py on a GPU box: the split portable.py exported stands in for the DuckDB home,
    the rerun reproduces the study's F1, and a split the study did not run on is refused."""
    from study.scripts import signals

    portable = _portable()
    split = portable.export_split(str(pool_db.parent), POOL, tmp_path / "split.json.gz")
    preset = dataclasses.replace(study.study_preset("quick"), model_preset="tiny", seeds=(0,), budgets=(0.5, 1.0))
    portable.run_study(split, backbone=None, preset=preset, strategies=("random",), output=tmp_path / "study",
                       log=lambda _: None)
    args = ["--study", str(tmp_path / "study" / "al_study.json"), "--split", str(tmp_path / "split.json.gz")]
    assert signals.main(args + ["--output", str(tmp_path / "signals")]) == 0
    assert "warning" not in capsys.readouterr().err  # the rerun gave the F1 the study recorded
    out = json.loads((tmp_path / "signals.json").read_text())
    unbought = len(split["train"]) - study.budget_labels(0.5, len(split["train"]))
    assert out["seeds"] == [0] and out["per_seed"][0]["trajectories"] == unbought
    assert set(out["average"]["signals"]) == {"oracle", "learned", *study.STRATEGY_NAMES}
    assert out["learned_features"] == "ensemble statistics and step states"  # a frozen backbone's pool
    assert out["average"]["signals"]["oracle"]["oracle_top_half_shared"] == 1.0
    assert "| actprm |" in (tmp_path / "signals.md").read_text()
    other = dict(split, split_sha256="0" * 64)
    with gzip.open(tmp_path / "other.json.gz", "wt") as f:
        json.dump(other, f)
    assert signals.main(["--study", args[1], "--split", str(tmp_path / "other.json.gz")]) == 1
    assert capsys.readouterr().err.strip().endswith("is not the split the study in " + args[1] + " ran on")


def test_studies_of_other_seeds_merge_into_the_study_of_all_of_them_and_a_seed_twice_is_refused(pool_db, tmp_path):
    portable = _portable()
    split = portable.export_split(str(pool_db.parent), POOL, tmp_path / "split.json.gz")
    preset = dataclasses.replace(study.study_preset("quick"), model_preset="tiny", budgets=(0.5, 1.0))
    for seeds in ((0,), (1,), (0, 1)):
        portable.run_study(split, backbone=None, preset=dataclasses.replace(preset, seeds=seeds),
                           strategies=("actprm", "random"), output=tmp_path / str(seeds), log=lambda _: None)
    parts = [tmp_path / str(s) / "al_study.json" for s in ((0,), (1,))]
    portable.merge_studies(parts, tmp_path / "merged")
    merged, whole = (json.loads((tmp_path / d / "al_study.json").read_text()) for d in ("merged", str((0, 1))))
    for key in ("full_data_f1", "strategies", "actprm_minus_random", "seeds", "targets"):
        assert merged[key] == whole[key], key
    assert [h["seeds"] for h in merged["host_gemm_gflops_per_invocation"]] == [[0], [1]]
    with pytest.raises(ActPRMError, match="seed 0 is in an earlier study too"):
        portable.merge_studies([parts[0], tmp_path / str((0, 1)) / "al_study.json"], tmp_path / "twice")
    other = tmp_path / "other"
    portable.run_study(split, backbone=None, preset=dataclasses.replace(preset, seeds=(2,), lr=1e-3),
                       strategies=("actprm", "random"), output=other, log=lambda _: None)
    with pytest.raises(ActPRMError, match="study preset lr was"):
        portable.merge_studies([parts[0], other / "al_study.json"], tmp_path / "mixed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_a_study_device_torch_cannot_see_is_refused_in_one_line():
    preset = study.study_preset("quick")
    assert study.customize(preset, {"device": "CPU"}) is preset
    for bad in ("cuda", "cuda:1", "gpu", "cuda:x"):
        with pytest.raises(ActPRMError, match="study preset field 'device' takes cpu, or cuda"):
            study.customize(preset, {"device": bad})
