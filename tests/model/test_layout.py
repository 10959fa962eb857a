"""Step layout: the separator token, its embedding, truncation at step boundaries."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models import IGNORE_INDEX, STEP_SEPARATOR, StepBatcher, build_prm  # noqa: E402
from models.layout import ensure_separator  # noqa: E402
from models.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402


def test_separator_added_once_with_the_blank_line_embedding():
    model, tokenizer = build_prm("tiny", num_heads=1)
    base = build_tiny_tokenizer()
    assert STEP_SEPARATOR not in base.get_vocab()
    assert len(tokenizer) == len(base) + 1
    sep = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    blank = tokenizer.convert_tokens_to_ids("\n\n")
    emb = model.backbone.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer)
    assert torch.equal(emb[sep], emb[blank])
    assert ensure_separator(tokenizer, model.backbone) == sep  # idempotent
    assert len(tokenizer) == len(base) + 1 and model.backbone.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_separator_in_step_text_does_not_create_a_step():
    _, tokenizer = build_prm("tiny", num_heads=1)
    batch = StepBatcher(tokenizer).encode(["q"], [[f"a {STEP_SEPARATOR} b", "c"]])
    assert int((batch.input_ids == tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)).sum()) == 2


def test_truncation_cuts_at_step_boundaries():
    _, tokenizer = build_prm("tiny", num_heads=1)
    sep = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    steps = ["x" * 10] * 6  # each step: 10 tokens + separator
    batcher = StepBatcher(tokenizer, max_length=40)
    enc = batcher.tokenize("q?", steps, first_error=-1)
    # [CLS] + 2 question tokens + k * 11 + [SEP] <= 40  ->  k = 3
    assert (enc.scored_steps, enc.truncated_steps) == (3, 3)
    assert len(enc.input_ids) <= 40
    assert enc.input_ids.count(sep) == 3 and enc.input_ids[-2] == sep  # the cut falls right after a separator
    assert [x for x in enc.labels if x != IGNORE_INDEX] == [1, 1, 1]


def test_long_question_still_keeps_the_first_step():
    _, tokenizer = build_prm("tiny", num_heads=1)
    sep = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    batcher = StepBatcher(tokenizer, max_length=32)
    enc = batcher.tokenize("w" * 100 + "END", ["step one", "step two"], first_error=0)
    assert len(enc.input_ids) == 32 and enc.scored_steps == 1 and enc.truncated_steps == 1
    assert enc.input_ids.count(sep) == 1
    text = tokenizer.decode(enc.input_ids, skip_special_tokens=False)
    assert "END" in text and "step one" in text  # the question is cut from the left


def test_batch_is_right_padded_with_lengths():
    _, tokenizer = build_prm("tiny", num_heads=1)
    batch = StepBatcher(tokenizer).encode(["q", "a longer question"], [["1"], ["2", "3"]])
    assert batch.lengths == batch.attention_mask.sum(1).tolist()
    assert batch.attention_mask[0, : batch.lengths[0]].all() and not batch.attention_mask[0, batch.lengths[0]:].any()


def test_too_small_max_length_is_an_error():
    from models.errors import ModelError

    _, tokenizer = build_prm("tiny", num_heads=1)
    with pytest.raises(ModelError):
        StepBatcher(tokenizer, max_length=2)


def test_chat_template_layout_like_qwen_prm():
    """Tokenizers with a chat template (Qwen2.5-Math) get system + user question + assistant opener first."""
    _, tokenizer = build_prm("tiny-decoder", num_heads=1)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>\n{% endif %}")
    batch = StepBatcher(tokenizer).encode(["What is 1+1?"], [["1+1=2", "The answer is 2"]], [-1])
    text = tokenizer.decode(batch.input_ids[0])
    assert text.startswith("[CLS]<system>Please reason step by step")
    assert "<user>What is 1+1?\n<assistant>\n1+1=2<extra_0>The answer is 2<extra_0>" in text
    assert batch.labels[batch.labels != IGNORE_INDEX].tolist() == [1, 1]
