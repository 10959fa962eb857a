"""The train stage (tasks/train.py) on the `tiny` preset with a few dozen trajectories.

The learnable set: a step saying "wrong x" is the first error, every other step says "fine", so a PRM that
learns anything at all learns to find the first error here.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
import torch
from pydantic import ValidationError

from actprm.errors import ActPRMError
from models import EnsemblePRM, StepBatcher, build_prm
from models.uncertainty import predicted_first_error, step_stats
from actprm.config import TrainConfig
from tasks.train import train_prm
from tasks.train_state import CHECKPOINT_DONE

# 24 trajectories / batch 8 = 3 optimizer steps per epoch, 9 in all; heads at lr (head_lr None).
RUN = dict(preset="tiny", epochs=3, batch_size=8, lr=1e-2, head_lr=None, num_heads=8, max_length=128, seed=0)


def cfg(**changes) -> TrainConfig:
    """The tests' run config, with `changes`."""
    return TrainConfig(**(RUN | changes))


def learnable_examples(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        num_steps = rng.randint(2, 4)
        fe = rng.choice([-1] + list(range(num_steps)))
        out.append({"question": f"q{i}",
                    "steps": ["wrong x" if j == fe else "fine" for j in range(num_steps)],
                    "first_error": fe})
    return out


def weights(model_dir) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in EnsemblePRM.from_pretrained(model_dir).state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return learnable_examples()


@pytest.fixture(scope="module")
def baseline(examples, tmp_path_factory):
    """One uninterrupted run with checkpoints every 2 steps; its per-step metrics and result."""
    steps: list[tuple[int, dict]] = []
    out = tmp_path_factory.mktemp("baseline")
    result = train_prm(examples, cfg(checkpoint_every=2), output_dir=out,
                       on_metrics=lambda s, m: steps.append((s, m)), progress=False)
    return result, steps


def test_loss_decreases_and_saved_model_finds_first_errors(examples, baseline):
    result, steps = baseline
    assert not result.skipped and result.steps == 9 and result.train_trajectories == 24
    assert [s for s, _ in steps] == list(range(1, 10))
    first, last = steps[0][1]["cls_loss"], result.metrics["cls_loss"]
    assert last < 0.5 * first, (first, last)
    for _, m in steps:
        assert {"cls_loss", "reg_loss", "trained_fraction", "lr"} <= m.keys()
        assert 0.0 <= m["trained_fraction"] <= 1.0
        assert m["kept_trajectories"] + m["confident_trajectories"] == 8
    # The saved model (reloaded from disk) finds the first error of the training trajectories.
    model, tokenizer = EnsemblePRM.from_pretrained(result.model_dir, with_tokenizer=True)
    batch = StepBatcher(tokenizer, max_length=128).encode([e["question"] for e in examples],
                                                          [e["steps"] for e in examples])
    predicted = [predicted_first_error(step_stats(p)[0]) for p in model.step_probabilities(batch)]
    hits = sum(p == e["first_error"] for p, e in zip(predicted, examples))
    assert hits >= 0.8 * len(examples), f"{hits}/{len(examples)}"
    assert model.config.reg_lambda == 0.5


def test_same_seed_gives_identical_weights(examples, baseline, tmp_path):
    result, _ = baseline
    again = train_prm(examples, cfg(), output_dir=tmp_path, progress=False)
    assert_same_weights(weights(result.model_dir), weights(again.model_dir))
    # ...and training did move them (so the equality above is not vacuous).
    fresh, _ = build_prm("tiny", num_heads=8, seed=0)
    assert not torch.equal(fresh.w1, weights(result.model_dir)["w1"])


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_does(examples, baseline, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_5(step, metrics):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_prm(examples, cfg(checkpoint_every=2), output_dir=tmp_path, on_metrics=crash_at_5, progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_2", "step_4"] and (tmp_path / "checkpoints/step_4" / CHECKPOINT_DONE).is_file()
    assert not (tmp_path / "model").exists()
    # A later checkpoint cut off mid-save (its completion marker never written) is neither resumed nor kept.
    (tmp_path / "checkpoints/step_6").mkdir()
    (tmp_path / "checkpoints/step_6/model.safetensors").write_bytes(b"partial")

    resumed_steps: list[int] = []
    result = train_prm(examples, cfg(checkpoint_every=2), output_dir=tmp_path,
                       on_metrics=lambda s, m: resumed_steps.append(s), progress=False)
    assert result.resumed_from_step == 4 and result.steps == 9
    assert resumed_steps == [5, 6, 7, 8, 9]
    assert_same_weights(weights(baseline[0].model_dir), weights(result.model_dir))
    # Only the latest checkpoints are kept.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_8", "step_9"]


def test_changed_data_does_not_resume_an_old_checkpoint(examples, tmp_path):
    first = train_prm(examples[:8], cfg(epochs=1), output_dir=tmp_path, progress=False)
    assert first.steps == 1
    second = train_prm(examples[8:16], cfg(epochs=1), output_dir=tmp_path, progress=False)
    assert second.resumed_from_step is None and second.steps == 1


def test_no_examples_skips_training(tmp_path):
    result = train_prm([], cfg(), output_dir=tmp_path, progress=False)
    assert result.skipped and "no labeled trajectories" in result.reason
    assert result.model_dir is None and not (tmp_path / "model").exists()


def test_everything_confident_leaves_the_model_untouched(examples, tmp_path):
    # p = 0.5 and an infinite std bound make every step confident: selection keeps nothing.
    model, tokenizer = build_prm("tiny", num_heads=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[dict] = []
    result = train_prm(examples, cfg(p_threshold=0.5, std_threshold=float("inf")), output_dir=tmp_path, model=model,
                       tokenizer=tokenizer, on_metrics=lambda s, m: seen.append(m), progress=False)
    assert result.skipped and "confident" in result.reason and result.model_dir is None
    assert len(seen) == 9 and all(m["trained_fraction"] == 0.0 for m in seen)
    assert all(0.0 <= m["pseudo_label_accuracy"] <= 1.0 for m in seen)
    assert all(torch.isfinite(torch.tensor(m["cls_loss"])) for m in seen)
    assert result.metrics["trained_fraction"] == 0.0
    assert_same_weights(before, model.state_dict())
    assert not (tmp_path / "model").exists()


def test_selection_off_keeps_every_trajectory(examples, tmp_path):
    seen: list[dict] = []
    result = train_prm(examples, cfg(in_training_selection=False, p_threshold=0.5, std_threshold=float("inf"),
                                     epochs=1), output_dir=tmp_path, on_metrics=lambda s, m: seen.append(m),
                       progress=False)
    assert not result.skipped and all(m["trained_fraction"] == 1.0 for m in seen)


def test_bf16_with_gradient_checkpointing_after_a_float32_run_in_the_same_process(examples, tmp_path):
    # accelerate allows one mixed-precision setting per process unless train_prm resets its state: a flow
    # that trains several rounds in one process must be able to change it.
    result = train_prm(examples[:16], cfg(mixed_precision="bf16", gradient_checkpointing=True, epochs=1),
                       output_dir=tmp_path, progress=False)
    assert not result.skipped and result.steps == 2 and torch.isfinite(torch.tensor(result.metrics["cls_loss"]))


def test_non_finite_loss_stops_with_a_clear_error(examples, tmp_path):
    model, tokenizer = build_prm("tiny", num_heads=8, seed=0)
    with torch.no_grad():
        model.w3[0, 0, 0] = float("inf")
    with pytest.raises(ActPRMError, match="not finite"):
        train_prm(examples, cfg(), output_dir=tmp_path, model=model, tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("setting", [{"lr": 0}, {"grad_accum": 0}, {"warmup_ratio": 1.5}, {"head_lr": -1e-3},
                                     {"p_threshold": 0.4}, {"mixed_precision": "fp8"}])
def test_a_setting_out_of_range_is_refused_in_one_line_before_anything_is_written(setting, tmp_path, capsys,
                                                                                   monkeypatch):
    from actprm.config import ConfigError, load_settings
    from tasks.train import main

    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    (name, value), = setting.items()
    section = TrainConfig.section_of(name)
    with pytest.raises(ConfigError, match=rf"^invalid setting {section}\.{name}={value!r}: [^\n]+$"):
        load_settings({section: setting})  # YAML, env or an `actprm` flag
    with pytest.raises(ValidationError, match=name):
        cfg(**setting)  # train_prm's callers in Python
    # `accelerate launch -m tasks.train --lr 0`: refused before the examples are even read
    flag = "--" + name.replace("_", "-")
    assert main(["--examples", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "run"), flag,
                 str(value)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: invalid setting {section}.{name}="), err
    assert not (tmp_path / "run").exists()


def test_bad_label_is_rejected(tmp_path):
    bad = [{"question": "q", "steps": ["a", "b"], "first_error": 2}]
    with pytest.raises(ActPRMError, match="first_error=2"):
        train_prm(bad, cfg(), output_dir=tmp_path, progress=False)


def _labeled_pool(db, labeled: list[dict], other_prompt: list[dict] = ()) -> None:
    """Registered pool `p` holding `labeled` with labels of the default judge and prompt (verifier, processbench-v2)
    and `other_prompt` with labels bought under another prompt family (a revision of the same family would count)."""
    from actprm.store import Store, trajectory_id

    with Store(db) as store:
        store.upsert_pool("p", source="[]", format="actprm", content_hash="h", status="registered")
        for i, ex in enumerate([*labeled, *other_prompt]):
            tid = trajectory_id(ex["question"], ex["steps"])
            store.sql("INSERT INTO trajectories VALUES (?, ?, ?, ?)", [tid, ex["question"], ex["steps"], len(ex["steps"])])
            store.sql("INSERT INTO pool_members (pool, trajectory_id, line_no) VALUES ('p', ?, ?)", [tid, i])
            prompt = "processbench-v2" if i < len(labeled) else "actprm-v1"
            store.sql("INSERT INTO judge_labels (trajectory_id, judge_model, prompt_version, pool, status, "
                      "first_error) VALUES (?, 'verifier:synth', ?, 'p', 'labeled', ?)", [tid, prompt, ex["first_error"]])


def test_train_stage_trains_on_the_pools_judge_labels_and_logs_into_the_flows_mlflow_run(examples, tmp_path):
    from mlflow import MlflowClient

    from actprm.config import Settings
    from tasks.train import train_round

    settings = Settings(home=tmp_path, model={"preset": "tiny", "num_heads": 8, "max_length": 128},
                        train={"epochs": 1, "batch_size": 4, "grad_accum": 2, "lr": 1e-2})
    # The settings' judge (verifier) and prompt bought 12 labels; 3 more came from another prompt family.
    _labeled_pool(settings.duckdb_path, examples[:12], examples[12:15])
    client = MlflowClient(settings.tracking_uri)
    experiment = client.create_experiment("train-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id  # the flows create runs by id, as here

    trained = train_round(settings, "p", round=1, mlflow_run_id=run_id)
    # The 12 labels of this judge and prompt (not the other prompt's 3) in micro-batches of 4, two per optimizer
    # step -> 2 steps (the last one short).
    assert trained.train_trajectories == 12 and trained.steps == 2 and not trained.skipped
    assert trained.mlflow_run_id == run_id and EnsemblePRM.from_pretrained(trained.model_dir) is not None
    assert [h.step for h in client.get_metric_history(run_id, "train/cls_loss")] == [1, 2]
    params = client.get_run(run_id).data.params
    assert params["train.grad_accum"] == "2" and params["train.trajectories"] == "12"


def test_train_stage_hands_the_configured_values_to_train_prm_unchanged(examples, tmp_path, monkeypatch):
    """YAML and env values reach train_prm as TrainConfig fields, and the round's warm start replaces
    model.init_from only when loop.warm_start is on."""
    import tasks.train
    from actprm.config import load_settings

    config = tmp_path / "actprm.yaml"
    config.write_text(f"home: {tmp_path}\nmodel:\n  preset: tiny\n  max_length: 96\n  init_from: /somewhere\n"
                      "train:\n  lr: 3.0e-5\n  head_lr: null\nuncertainty:\n  std_threshold: 0.01\n")
    monkeypatch.setenv("ACTPRM_CONFIG", str(config))
    monkeypatch.setenv("ACTPRM_TRAIN__GRAD_ACCUM", "4")
    settings = load_settings()
    _labeled_pool(settings.duckdb_path, examples[:4])
    seen = []
    monkeypatch.setattr(tasks.train, "train_prm", lambda examples, cfg, **kw: seen.append(cfg) or
                        tasks.train.TrainResult(None, len(examples), 0, skipped=True, reason="test"))
    tasks.train.train_round(settings, "p", round=1, init_from=tmp_path / "previous")
    tasks.train.train_round(settings.model_copy(update={"loop": settings.loop.model_copy(
        update={"warm_start": False})}), "p", round=2, init_from=tmp_path / "previous")
    warm, cold = seen
    assert (warm.preset, warm.max_length, warm.lr, warm.head_lr, warm.std_threshold, warm.grad_accum) == (
        "tiny", 96, 3e-5, None, 0.01, 4)
    assert warm == TrainConfig.from_settings(settings, init_from=str(tmp_path / "previous"))
    assert cold.init_from is None and cold.lr == 3e-5


def test_a_retried_flow_run_resumes_its_training_instead_of_starting_over(examples, tmp_path, monkeypatch):
    """Prefect keeps a flow run's id across its retries, while the flow opens a new MLflow run per attempt."""
    import actprm.tracking
    from actprm.config import Settings
    from tasks.train import train_round

    settings = Settings(home=tmp_path, model={"preset": "tiny", "num_heads": 8, "max_length": 128},
                        train={"epochs": 1, "batch_size": 4, "grad_accum": 1, "lr": 1e-2, "checkpoint_every": 1})
    _labeled_pool(settings.duckdb_path, examples[:8])
    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: "0b7e-flow-run")
    first = train_round(settings, "p", round=1)
    again = train_round(settings, "p", round=1)  # the retry: same flow run, new attempt
    assert first.steps == 2 and first.resumed_from_step is None
    assert again.resumed_from_step == 2 and again.model_dir == first.model_dir
    assert "flow-run-0b7e-flow-run" in first.model_dir
    # another flow run trains from scratch in a directory of its own
    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: "another-flow-run")
    other = train_round(settings, "p", round=1)
    assert other.resumed_from_step is None and other.model_dir != first.model_dir


def test_a_loops_round_resumes_whoever_reruns_it_and_its_checkpoints_go_once_registered(examples, tmp_path,
                                                                                         monkeypatch):
    """Checkpoints of an active-learning loop's round are keyed by (pool, loop, round), not by the Prefect flow run:
    every `actprm run` is a new flow run, and its rerun must still resume (issue 41)."""
    import actprm.tracking
    from actprm.config import Settings
    from tasks.train import drop_round_checkpoints, train_round

    settings = Settings(home=tmp_path, model={"preset": "tiny", "num_heads": 8, "max_length": 128},
                        train={"epochs": 1, "batch_size": 4, "grad_accum": 1, "lr": 1e-2, "checkpoint_every": 1})
    _labeled_pool(settings.duckdb_path, examples[:8])
    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: "killed-cli-run")
    first = train_round(settings, "p", round=1, loop="loop-a")
    monkeypatch.setattr(actprm.tracking, "prefect_flow_run_id", lambda: "rerun-cli-run")
    again = train_round(settings, "p", round=1, loop="loop-a")
    assert first.resumed_from_step is None and again.resumed_from_step == 2
    assert again.model_dir == first.model_dir and "/p/loop-a/round-1/" in first.model_dir
    assert train_round(settings, "p", round=1, loop="loop-b").resumed_from_step is None  # another loop
    assert drop_round_checkpoints(settings, "p", 1, "loop-a") == 1
    round_dir = Path(first.model_dir).parent
    assert not (round_dir / "checkpoints").exists() and (round_dir / "model" / "prm_config.json").is_file()


def test_store_training_examples_are_the_pools_judge_labels(tmp_path):
    from actprm.store import Store, trajectory_id

    trajs = [("q1", ["a", "b"]), ("q2", ["c"]), ("q3", ["d", "e", "f"]), ("q4", ["g"])]
    ids = [trajectory_id(q, s) for q, s in trajs]
    with Store(tmp_path / "x.duckdb") as store:
        for i, ((q, s), tid) in enumerate(zip(trajs, ids)):
            store.sql("INSERT INTO trajectories VALUES (?, ?, ?, ?)", [tid, q, s, len(s)])
            store.sql("INSERT INTO pool_members (pool, trajectory_id, line_no, split) VALUES ('p', ?, ?, ?)",
                      [tid, i, "eval" if i == 3 else "train"])
        label = ("INSERT INTO judge_labels (trajectory_id, judge_model, prompt_version, pool, status, first_error, "
                 "created_at) VALUES (?, ?, 'v1', ?, ?, ?, TIMESTAMP '2026-01-01' + to_hours(?))")
        store.sql(label, [ids[0], "m", "p", "labeled", 1, 0])
        store.sql(label, [ids[1], "m", "p", "failed", None, 0])  # failed: not a label
        store.sql(label, [ids[2], "m", "other", "labeled", -1, 0])  # bought through another pool: counts
        store.sql(label, [ids[2], "m2", "other", "labeled", 2, 1])  # newer label wins
        store.sql(label, [ids[3], "m", "p", "labeled", 0, 0])  # eval split: held out
        got = store.training_examples("p")
        assert [(e["question"], e["first_error"]) for e in got] == [("q1", 1), ("q3", 2)]
        assert got[1]["steps"] == ["d", "e", "f"] and got[0]["id"] == ids[0]
        assert [e["first_error"] for e in store.training_examples("p", judge_model="m")] == [1, -1]
        assert store.training_examples("unknown") == []


def test_heads_learn_at_head_lr_while_the_backbone_keeps_lr(examples, tmp_path):
    """The heads and the backbone are two AdamW groups: with lr 0-ish and head_lr 1e-2 the backbone stays
    where the seed put it and only the heads move."""
    fresh, _ = build_prm("tiny", num_heads=8, seed=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    result = train_prm(examples, cfg(lr=1e-12, head_lr=1e-2), output_dir=tmp_path, progress=False)
    after = weights(result.model_dir)
    moved = {k for k in before if k in after and not torch.allclose(before[k], after[k], atol=1e-6)}
    assert moved == {"w1", "b1", "w2", "b2", "w3", "b3"}, sorted(moved)
    with pytest.raises(ValidationError, match="head_lr"):
        cfg(head_lr=-1.0)


def test_without_dropout_selection_reads_the_training_forward_and_trains_exactly_as_with_a_scoring_pass(
        examples, tmp_path, monkeypatch):
    # Qwen2-style backbones have no dropout, BERT-style ones (MiniLM, tiny) do.
    assert not build_prm("tiny-decoder", num_heads=2)[0].has_dropout() and build_prm("tiny", num_heads=2)[0].has_dropout()
    # Thresholds at which the fresh ensemble is confident about some trajectories and not others.
    settings = cfg(preset="tiny-decoder", p_threshold=0.5, std_threshold=0.035, epochs=2)

    def run(out, force_scoring_pass: bool):
        if force_scoring_pass:
            monkeypatch.setattr(EnsemblePRM, "has_dropout", lambda self: True)
        forwards, metrics = [0], []
        model, tokenizer = build_prm("tiny-decoder", num_heads=8, seed=0)
        model.backbone.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
        result = train_prm(examples, settings, output_dir=out, model=model, tokenizer=tokenizer,
                           on_metrics=lambda s, m: metrics.append(m), progress=False)
        monkeypatch.undo()
        return result, forwards[0], metrics

    one, one_forwards, one_metrics = run(tmp_path / "one", force_scoring_pass=False)
    two, two_forwards, two_metrics = run(tmp_path / "two", force_scoring_pass=True)
    micro_batches = 2 * 3  # 2 epochs of 3 micro-batches
    assert (one_forwards, two_forwards) == (micro_batches, 2 * micro_batches)
    kept = [m["trained_fraction"] for m in one_metrics]
    assert any(0 < k < 1 for k in kept), kept  # selection left some trajectories out, not all
    assert kept == [m["trained_fraction"] for m in two_metrics]
    assert_same_weights(weights(one.model_dir), weights(two.model_dir))


def test_the_launch_entry_point_answers_bad_input_with_one_line(tmp_path, capsys):
    """`accelerate launch -m tasks.train` is run by hand: a typo gets a one-line error, not a traceback or a
    'skipped' success."""
    from actprm.store import Store
    from tasks.train import main

    good = json.dumps({"question": "q", "steps": ["a", "b"], "first_error": 1})
    cases = {"missing.jsonl": None, "not_json.jsonl": good + "\n{oops\n", "a_list.jsonl": "[1, 2]\n",
             "number_step.jsonl": json.dumps({"question": "q", "steps": ["a", 7], "first_error": -1}) + "\n"}
    expected = {"missing.jsonl": "missing.jsonl: No such file or directory", "not_json.jsonl": "line 2: not JSON",
                "a_list.jsonl": "line 1: expected a JSON object, got list",
                "number_step.jsonl": "training example 0 has a step that is not a string"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert main(["--examples", str(tmp_path / name), "--output-dir", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected[name] in err[0], (name, err)

    db = tmp_path / "actprm.duckdb"
    assert main(["--pool", "p", "--duckdb", str(db), "--output-dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --duckdb {db}: no such file" and not db.exists()
    Store(db).open().close()
    assert main(["--pool", "typo", "--duckdb", str(db), "--output-dir", str(tmp_path / "out")]) == 1
    assert "unknown pool 'typo'" in capsys.readouterr().err
