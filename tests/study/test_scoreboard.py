"""study/scripts/scoreboard.py: one row per study, with the gaps paired by seed as the study defines them."""

import dataclasses
import json
from pathlib import Path

import pytest

from study.protocol import STEP_CHECK, STUDY_PRESETS
from study.report import study_result
from study.scripts import scoreboard

RESULTS = Path(__file__).resolve().parents[2] / "study" / "results"

# seed -> F1 (at 0.5, cross-fitted) of each run; the two seeds differ, so a gap has a standard error
F1 = {
    "full": {0: (0.60, 0.62), 1: (0.50, 0.52)},
    STEP_CHECK: {0: (0.605, 0.64), 1: (0.50, 0.53)},
    "actprm": {0: (0.59, 0.60), 1: (0.46, 0.50)},
    "random": {0: (0.55, 0.61), 1: (0.47, 0.49)},
    "oracle": {0: (0.61, 0.62), 1: (0.51, 0.52)},
}


def _study(tmp_path, name: str, strategies=("actprm", "random"), **preset_fields) -> dict:
    preset = dataclasses.replace(STUDY_PRESETS["full"], budgets=(0.5, 1.0), **preset_fields)
    runs = [{"strategy": "untrained", "budget": 0.0, "seed": s, "labels": 0, "f1": 0.1, "f1_tuned": 0.1}
            for s in (0, 1)]
    for strategy, by_seed in F1.items():
        if strategy not in ("full", STEP_CHECK, *strategies):
            continue
        budget = 1.0 if strategy in ("full", STEP_CHECK) else 0.5
        runs += [{"strategy": strategy, "budget": budget, "seed": s, "labels": 50 if budget < 1 else 100,
                  "steps": 400, "f1": f1, "f1_tuned": tuned, "error_share": 0.5}
                 for s, (f1, tuned) in by_seed.items()]
    saved = study_result(runs, preset=preset, pool="synth-test", strategies=strategies, train_size=100,
                         eval_size=20, model={}, knobs={}, split="x")
    folder = tmp_path / name
    folder.mkdir()
    (folder / "al_study.json").write_text(json.dumps(saved))
    return saved


def test_a_row_pairs_each_strategy_with_full_data_and_random_seed_by_seed(tmp_path):
    _study(tmp_path, "longer", steps_per_round=50)
    [row] = scoreboard.scoreboard(tmp_path)
    assert row["study"] == "longer" and row["pool"] == "synth-test" and row["seeds"] == 2
    assert row["protocol"] == "steps_per_round=50"  # budgets, seeds and check_steps are not the protocol
    assert row["actprm_minus_full"]["mean"] == pytest.approx(-0.025)        # (-0.01 - 0.04) / 2
    assert row["actprm_minus_full"]["se"] == pytest.approx(0.015)
    assert row["actprm_minus_random_tuned"]["mean"] == pytest.approx(0.0)   # (-0.01 + 0.01) / 2
    assert row["steps_2x_gain"]["mean"] == pytest.approx(0.0025)
    assert row["full_steps"] == 400
    assert row["targets"] == {"actprm_within_0.5pt_at_or_below_0.5": False, "actprm_beats_random_at_0.5_by_3pt": False}


def test_the_verdicts_count_only_studies_whose_full_data_the_step_check_found_converged(tmp_path):
    _study(tmp_path, "checked")
    rows = scoreboard.scoreboard(tmp_path)
    at_half, tuned = scoreboard.converged_verdicts(rows)
    # at 0.5 twice the steps add +0.25 pt: converged; cross-fitted +1.5 pt: not
    assert at_half.startswith("at threshold 0.5: 1 of the 1 studies") and "-2.5 pt" in at_half
    assert tuned.startswith("cross-fitted: 0 of the 1 studies")


def test_main_writes_the_table_and_refuses_an_empty_folder(tmp_path, capsys):
    _study(tmp_path, "one")
    assert scoreboard.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "al_study_scoreboard.md").read_text()
    assert "| `one` | synth-test (100) |" in md and "-2.5 ± 1.5 / -2.0 ± 0.0" in md
    assert json.loads((tmp_path / "al_study_scoreboard.json").read_text())[0]["study"] == "one"
    # A diagnostic study without ActPRM has no cells to fill: named below the table instead of a row of dashes.
    _study(tmp_path, "two", strategies=("oracle",))
    assert scoreboard.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "al_study_scoreboard.md").read_text()
    assert "| `two` |" not in md and "Not in the table (they ran no ActPRM): `two` (oracle)." in md
    assert [r["study"] for r in json.loads((tmp_path / "al_study_scoreboard.json").read_text())] == ["one", "two"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scoreboard.main(["--results", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"no al_study.json under {empty}"


def test_every_committed_study_has_a_row():
    results = RESULTS
    rows = scoreboard.scoreboard(results)
    assert rows, f"no committed study under {results}"
    assert len(rows) == len(list(results.glob("*/al_study.json"))) + (results / "al_study.json").exists()
    assert all(r["full"] is not None and r["seeds"] >= 1 for r in rows)


def test_findings_quote_the_scoreboard_of_the_committed_studies():
    """study/FINDINGS.md and study/results/al_study_scoreboard.md say what the committed studies say, not a
    retyped copy: rerun `python study/scripts/scoreboard.py` after adding a study."""
    table = scoreboard.markdown(scoreboard.scoreboard(RESULTS))
    findings = (RESULTS.parent / "FINDINGS.md").read_text()
    assert scoreboard.findings_block(table) in findings
    assert (RESULTS / "al_study_scoreboard.md").read_text() == table


def test_main_fills_the_findings_block_and_keeps_the_rest(tmp_path):
    _study(tmp_path, "one")
    findings = tmp_path / "FINDINGS.md"
    findings.write_text(f"# Findings\n\nbefore\n\n{scoreboard.BEGIN}\nold table\n{scoreboard.END}\n\nafter\n")
    assert scoreboard.main(["--results", str(tmp_path), "--findings", str(findings)]) == 0
    text = findings.read_text()
    assert text.startswith("# Findings\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    assert "## Issue 8's Target in every study" in text and "| `one` | synth-test (100) |" in text
    # run again: the block is replaced, not appended
    assert scoreboard.main(["--results", str(tmp_path), "--findings", str(findings)]) == 0
    assert findings.read_text() == text


def test_a_findings_file_without_the_block_is_refused_before_anything_is_written(tmp_path):
    _study(tmp_path, "one")
    findings = tmp_path / "FINDINGS.md"
    findings.write_text("# Findings\n")
    with pytest.raises(SystemExit, match="no .* block to fill"):
        scoreboard.main(["--results", str(tmp_path), "--findings", str(findings)])
    assert findings.read_text() == "# Findings\n" and not (tmp_path / "al_study_scoreboard.md").exists()
