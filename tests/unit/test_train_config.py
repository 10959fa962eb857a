"""One source of training defaults (issue 37): Settings, the flags of `python -m tasks.train` and train_prm all
read TrainConfig, so a default written once is the default everywhere and a configured value arrives unchanged."""

from __future__ import annotations

import argparse
import json

import pytest

from actprm.config import ModelSettings, Settings, TrainConfig, TrainSettings, UncertaintySettings, load_settings


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch):
    for name in ("ACTPRM_CONFIG", "ACTPRM_TRAIN__EPOCHS", "ACTPRM_MODEL__PRESET"):
        monkeypatch.delenv(name, raising=False)


def _flags() -> dict[str, argparse.Action]:
    """The launch entry point's training flags, by destination."""
    import tasks.train

    parser = argparse.ArgumentParser()
    tasks.train._add_config_flags(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS}


def test_every_training_field_is_a_flag_with_its_default_and_help():
    flags = _flags()
    assert set(flags) == set(TrainConfig.model_fields)
    for name, info in TrainConfig.model_fields.items():
        action = flags[name]
        assert f"--{name.replace('_', '-')}" in action.option_strings
        assert info.description.replace("%", "%%") in action.help and f"(default: {info.default})" in action.help


def test_settings_and_train_config_share_each_default():
    """The same defaults from Settings' sections (what `actprm` trains with) and from TrainConfig (what train_prm
    and the flags take): no field is retyped with a default of its own."""
    from_settings = TrainConfig.from_settings(Settings())
    assert from_settings == TrainConfig()
    sections = {"train": TrainSettings, "model": ModelSettings, "uncertainty": UncertaintySettings}
    for name, info in TrainConfig.model_fields.items():
        origin = sections[TrainConfig.section_of(name)].model_fields[name]
        assert (info.default, info.description, info.annotation, info.metadata) == (
            origin.default, origin.description, origin.annotation, origin.metadata), name


def test_no_flag_given_means_the_settings_values(tmp_path):
    from tasks.train import _config_from_flags

    assert _config_from_flags({}, None) == TrainConfig.from_settings(load_settings())
    assert _config_from_flags({}, None).preset == "cpu" and _config_from_flags({}, None).head_lr == 3e-3


def test_yaml_env_and_flags_reach_train_prm_unchanged(tmp_path, monkeypatch):
    """`python -m tasks.train` reads the YAML and ACTPRM_* variables as `actprm` does, flags over them."""
    import tasks.train

    config = tmp_path / "actprm.yaml"
    config.write_text("train:\n  lr: 3.0e-5\n  head_lr: null\n  warmup_steps: 7\n  in_training_selection: false\n"
                      "model:\n  preset: tiny\n  max_length: 96\nuncertainty:\n  p_threshold: 0.9\n")
    monkeypatch.setenv("ACTPRM_CONFIG", str(config))  # restored after the test (load_settings sets it)
    monkeypatch.setenv("ACTPRM_TRAIN__EPOCHS", "2")
    examples = tmp_path / "labeled.jsonl"
    examples.write_text(json.dumps({"question": "q", "steps": ["a", "b"], "first_error": 1}) + "\n")
    seen = {}

    def fake_train_prm(examples, cfg, **kwargs):
        seen["cfg"] = cfg
        return tasks.train.TrainResult(None, len(examples), 0, skipped=True, reason="test")

    monkeypatch.setattr(tasks.train, "train_prm", fake_train_prm)
    argv = ["--examples", str(examples), "--output-dir", str(tmp_path / "out"), "--config", str(config)]
    assert tasks.train.main(argv + ["--seed", "3", "--max-grad-norm", "none"]) == 0
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.head_lr, cfg.warmup_steps, cfg.in_training_selection, cfg.preset, cfg.max_length,
            cfg.p_threshold, cfg.epochs, cfg.seed, cfg.max_grad_norm) == (3e-5, None, 7, False, "tiny", 96, 0.9, 2, 3,
                                                                          None)
    assert cfg == TrainConfig.from_settings(load_settings(), seed=3, max_grad_norm=None)
    # a flag beats the environment and the YAML
    assert tasks.train.main(argv + ["--epochs", "4", "--in-training-selection", "--lr", "1e-3"]) == 0
    assert (seen["cfg"].epochs, seen["cfg"].in_training_selection, seen["cfg"].lr) == (4, True, 1e-3)
    # the old spelling of the selection switch still works
    assert tasks.train.main(argv + ["--in-training-selection", "--no-selection"]) == 0
    assert seen["cfg"].in_training_selection is False


def test_a_presets_recipe_fills_only_what_nobody_set(monkeypatch, tmp_path):
    """The 7B preset's released recipe (PRESET_DEFAULTS) replaces generic defaults, never a value somebody gave,
    even one equal to the generic default (it used to be replaced: the two could not be told apart)."""
    generic = TrainSettings()
    qwen = {"model": {"preset": "qwen2.5-math-7b"}}
    assert load_settings(qwen).train.lr == 1e-5
    explicit = load_settings(qwen | {"train": {"lr": generic.lr, "epochs": generic.epochs}})
    assert (explicit.train.lr, explicit.train.epochs, explicit.train.batch_size) == (generic.lr, generic.epochs, 8)
    # ... from YAML and the environment too
    config = tmp_path / "qwen.yaml"
    config.write_text(f"model:\n  preset: qwen2.5-math-7b\n  max_length: 512\ntrain:\n  lr: {generic.lr}\n")
    monkeypatch.setenv("ACTPRM_CONFIG", str(config))
    monkeypatch.setenv("ACTPRM_TRAIN__EPOCHS", str(generic.epochs))
    from_file = load_settings()
    assert (from_file.train.lr, from_file.train.epochs, from_file.model.max_length) == (generic.lr, generic.epochs, 512)
    assert from_file.train.warmup_steps == 500 and from_file.train.mixed_precision == "bf16"  # not given: the recipe's
    # TrainConfig built in Python follows the same rule
    direct = TrainConfig(preset="qwen2.5-math-7b", lr=generic.lr)
    assert (direct.lr, direct.batch_size, direct.max_length) == (generic.lr, 8, 2048)
    assert TrainConfig.from_settings(from_file).lr == generic.lr


def test_the_launch_entry_point_does_not_import_prefect():
    """`accelerate launch -m tasks.train` starts one process per GPU: none of them needs Prefect (seconds to import,
    and a Prefect home), so tasks/train.py keeps its Prefect wrappers in flows/prefect_tasks.py."""
    import subprocess
    import sys

    code = "import sys, tasks.train; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
