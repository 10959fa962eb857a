"""study/scripts/portable.py's backbone export: MiniLM cut to the vocabulary a split uses, so it fits a device
call's carry, must still give that split exactly the states the whole model gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from actprm.errors import ActPRMError


def _portable():
    from study.scripts import portable

    return portable


def _split():
    def trajectory(i, steps, first_error):
        return {"id": f"t{i}", "question": f"What is {i} + {i}?", "steps": steps, "gold_first_error": first_error}

    return {"version": 1, "pool": "p", "split_sha256": "x", "knobs": {}, "max_length": 128,
            "train": [trajectory(1, ["1 + 1 = 2.", "So the answer is 2."], -1),
                      trajectory(2, ["2 + 2 = 5.", "So the answer is 5."], 0)],
            "eval": [trajectory(3, ["3 + 3 = 6.", "The answer is 6."], -1)]}


def test_the_trimmed_backbone_gives_the_split_the_states_of_the_whole_one(tmp_path):
    from models.presets import minilm_path

    portable, split = _portable(), _split()
    info = portable.export_backbone("cpu", minilm_path(), split, tmp_path / "backbone")
    assert info["of"] == 30522 and 10 < info["rows"] < 200
    assert info["mb"] < 0.55 * (Path(minilm_path()) / "model.safetensors").stat().st_size / 1e6
    assert not (tmp_path / "backbone" / "model.safetensors").exists()
    assert portable.check_backbone("cpu", minilm_path(), tmp_path / "backbone", split) == 0.0

    rebuilt = portable.rebuild_backbone(tmp_path / "backbone", tmp_path / "rebuilt")
    words = load_file(rebuilt / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert words.shape == (30522, 384) and int((words.abs().sum(1) > 0).sum()) == info["rows"]
    # a split with a word the export never saw would read a zero row: the check says so
    split["eval"][0]["steps"][0] = "photosynthesis"
    assert portable.check_backbone("cpu", minilm_path(), tmp_path / "backbone", split) > 0


def test_a_file_that_is_not_an_exported_split_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "split.json.gz"
    bad.write_text("not gzip")
    with pytest.raises(ActPRMError, match="is not a split written by"):
        _portable().read_split(bad)
