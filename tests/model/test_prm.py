"""The ensemble PRM on the tiny presets: loss, anchor, bootstrap mask, save/load."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.errors import ModelError  # noqa: E402
from models import IGNORE_INDEX, EnsemblePRM, StepBatcher, build_prm, check_compatible  # noqa: E402
from models.prm import HEAD_PARAMS  # noqa: E402

QUESTIONS = ["What is 2 + 3 * 4?", "Compute 10 - 7."]
STEPS = [["3 * 4 = 12", "2 + 12 = 15", "The answer is 14"], ["10 - 7 = 4", "so 4", "The answer is 4"]]
FIRST_ERRORS = [2, 0]


@pytest.fixture(scope="module")
def tiny():
    return build_prm("tiny", num_heads=3, seed=0)


def _hand_logits(model, batch):
    """The heads' logits computed head by head with plain linear layers, at separators found by hand."""
    hidden = model.backbone(**batch.model_inputs()).last_hidden_state
    out = []
    for e in range(model.config.num_heads):
        per_head = []
        for b in range(len(batch)):
            for t in range(batch.input_ids.shape[1]):
                if batch.input_ids[b, t] == model.separator_id and batch.attention_mask[b, t]:
                    h = hidden[b, t]
                    z = torch.relu(h @ model.w1[e] + model.b1[e, 0])
                    z = torch.relu(z @ model.w2[e] + model.b2[e, 0])
                    per_head.append((z @ model.w3[e] + model.b3[e, 0])[0])
        out.append(torch.stack(per_head))
    return torch.stack(out)


def test_loss_is_bce_on_labeled_separators_only(tiny):
    model, tokenizer = tiny
    model.eval()
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    out = model(**batch.model_inputs(), labels=batch.labels)
    hand = _hand_logits(model, batch)
    assert torch.allclose(out.logits, hand, atol=1e-5)  # one batched op == E separate heads
    # Labeled steps: trajectory 0 -> steps 0, 1 correct, step 2 wrong; trajectory 1 -> step 0 wrong,
    # steps 1-2 after the first error carry no label.
    targets = {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}  # column index among separators -> label
    terms = []
    for e in range(3):
        for col, y in targets.items():
            p = 1 / (1 + math.exp(-hand[e, col].item()))
            terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert out.cls_loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert out.reg_loss.item() == 0.0  # heads sit on their anchor at init
    assert out.loss.item() == pytest.approx(out.cls_loss.item(), rel=1e-6)


def test_labels_only_at_separators_and_none_after_first_error(tiny):
    _, tokenizer = tiny
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    sep_id = tokenizer.convert_tokens_to_ids("<extra_0>")
    labeled = batch.labels != IGNORE_INDEX
    assert bool((batch.input_ids[labeled] == sep_id).all())
    assert (batch.input_ids == sep_id).sum(1).tolist() == [3, 3]  # one separator per step
    assert batch.labels[0][labeled[0]].tolist() == [1, 1, 0]
    assert batch.labels[1][labeled[1]].tolist() == [0]
    all_correct = StepBatcher(tokenizer).encode(QUESTIONS[:1], STEPS[:1], [-1])
    assert all_correct.labels[all_correct.labels != IGNORE_INDEX].tolist() == [1, 1, 1]
    assert StepBatcher(tokenizer).encode(QUESTIONS, STEPS).labels is None


def test_anchor_regularization_grows_with_distance_and_scales_with_lambda():
    model, _ = build_prm("tiny", num_heads=2, reg_lambda=0.5)
    assert model.anchor_distance().item() == 0.0
    total = sum(getattr(model, n).numel() for n in HEAD_PARAMS)
    with torch.no_grad():
        model.w2.add_(0.1)
    expected = 0.1**2 * model.w2.numel() / total
    assert model.anchor_distance().item() == pytest.approx(expected, rel=1e-4)
    double, tokenizer = build_prm("tiny", num_heads=2, reg_lambda=1.0)
    with torch.no_grad():
        double.w2.add_(0.1)
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    half_out = model(**batch.model_inputs(), labels=batch.labels)
    double_out = double(**batch.model_inputs(), labels=batch.labels)
    assert half_out.reg_loss.item() == pytest.approx(0.5 * expected, rel=1e-4)
    assert double_out.reg_loss.item() == pytest.approx(2 * half_out.reg_loss.item(), rel=1e-5)
    # The anchor is a frozen buffer, saved with the model, not a parameter the optimizer moves.
    names = {n for n, _ in model.named_parameters()}
    assert "anchor_w1" not in names and "anchor_w1" in model.state_dict()


def test_learning_probability_zero_gives_heads_no_classification_gradient():
    model, tokenizer = build_prm("tiny", num_heads=4, learning_probability=0.0)
    model.train()
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    out = model(**batch.model_inputs(), labels=batch.labels)
    out.loss.backward()
    assert out.cls_loss.item() == 0.0
    for p in model.head_parameters():
        assert p.grad is None or bool((p.grad == 0).all())


def test_bootstrap_mask_switches_heads_per_trajectory():
    model, tokenizer = build_prm("tiny", num_heads=3)
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])  # head 1 sees nothing, head 2 only trajectory 1
    model(**batch.model_inputs(), labels=batch.labels, bootstrap_mask=mask).loss.backward()
    g = model.w3.grad
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0
    assert g[1].abs().sum() == 0


def test_bootstrap_mask_fraction_and_seeding():
    model, _ = build_prm("tiny", num_heads=32, learning_probability=0.3, seed=5)
    mask = model.sample_bootstrap_mask(2000, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (32, 2000)
    assert abs(mask.mean().item() - 0.3) < 0.01
    again = model.sample_bootstrap_mask(2000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)


@pytest.mark.parametrize("preset", ["tiny", "tiny-decoder"])
def test_save_load_round_trip_is_bit_exact(tmp_path, preset):
    model, tokenizer = build_prm(preset, num_heads=4, seed=3, reg_lambda=0.25, learning_probability=0.5)
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(**batch.model_inputs(), labels=batch.labels, bootstrap_mask=torch.ones(4, 2)).loss.backward()
    opt.step()  # heads now differ from their anchors: both must survive the round trip
    model.eval()
    model.save_pretrained(tmp_path / "m", tokenizer)
    loaded, tok2 = EnsemblePRM.from_pretrained(tmp_path / "m", with_tokenizer=True)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["w1"], a["anchor_w1"])
    assert loaded.config == model.config and loaded.config.num_heads == 4
    assert tok2.get_vocab() == tokenizer.get_vocab()
    check_compatible(loaded, tok2)
    batch2 = StepBatcher(tok2).encode(QUESTIONS, STEPS)
    assert torch.equal(batch2.input_ids, batch.input_ids)
    for p, q in zip(model.step_probabilities(batch), loaded.step_probabilities(batch2)):
        assert torch.equal(p, q)


def test_step_probabilities_shapes_and_range(tiny):
    model, tokenizer = tiny
    probs = model.step_probabilities(StepBatcher(tokenizer).encode(QUESTIONS, STEPS))
    assert [p.shape for p in probs] == [(3, 3), (3, 3)]
    assert all(bool(((p >= 0) & (p <= 1)).all()) for p in probs)


def test_freeze_backbone_trains_heads_only():
    model, tokenizer = build_prm("tiny", num_heads=2, freeze_backbone=True)
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    model(**batch.model_inputs(), labels=batch.labels).loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.w1.grad is not None


def test_a_frozen_backbone_stays_in_eval_mode_and_a_warm_start_can_unfreeze_it(tmp_path):
    """Frozen, the backbone never changes: dropout in it would train the heads on states scoring never shows them.
    A model trained with a frozen backbone may be fine-tuned whole later: the run's setting wins."""
    from tasks.train import _make_trainable

    model, tokenizer = build_prm("cpu", num_heads=2, freeze_backbone=True)  # MiniLM: BERT dropout 0.1
    model.train()
    assert not model.backbone.training and not model.has_dropout()
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    first, again = (model(**batch.model_inputs()).logits for _ in range(2))
    assert torch.equal(first, again)
    model.save_pretrained(tmp_path / "m", tokenizer)
    loaded = EnsemblePRM.from_pretrained(tmp_path / "m")
    _make_trainable(loaded, freeze_backbone=False, reg_lambda=0.5, learning_probability=1.0,
                    gradient_checkpointing=False)
    loaded.train()
    assert not loaded.config.freeze_backbone and loaded.backbone.training and loaded.has_dropout()
    assert all(p.requires_grad for n, p in loaded.backbone.named_parameters() if "pooler" not in n)


def test_heads_run_in_float32_when_the_model_is_cast_to_bf16():
    """DeepSpeed's bf16 mode casts the whole module, heads included."""
    model, tokenizer = build_prm("tiny", num_heads=2)
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS, FIRST_ERRORS)
    out = model.bfloat16()(**batch.model_inputs(), labels=batch.labels)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)


def test_the_bootstrap_mask_is_fixed_per_trajectory_across_minibatches_and_epochs():
    """Bootstrap: a head learns from a given trajectory in every epoch or in none. Redrawn per minibatch, a head
    saw a trajectory at least once in 3 epochs with probability 1 - 0.5^3 = 0.875 instead of 0.5."""
    model, _ = build_prm("tiny", num_heads=32, learning_probability=0.5)
    epoch_1 = model.bootstrap_mask_for([4, 9, 2], seed=7)
    epoch_2 = model.bootstrap_mask_for([2, 4], seed=7)  # the same trajectories, in another minibatch
    assert torch.equal(epoch_2, epoch_1[:, [2, 0]])
    many = model.bootstrap_mask_for(list(range(2000)), seed=7)
    assert abs(many.mean().item() - 0.5) < 0.02 and not torch.equal(many, model.bootstrap_mask_for(range(2000), 8))
    assert torch.equal(build_prm("tiny", num_heads=3)[0].bootstrap_mask_for([1, 2], seed=0), torch.ones(3, 2))


def test_unknown_preset_and_bad_backbone_path_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="tiny.*cpu.*qwen2.5-math-7b"):
        build_prm("gpt-5")
    with pytest.raises(ModelError, match="qwen2.5-math-7b"):
        build_prm("qwen2.5-math-7b", backbone_path=str(tmp_path / "no-such-model"))


def test_tokenizer_model_mismatch_is_a_clear_error(tiny):
    model, _ = tiny
    other, _ = build_prm("tiny", num_heads=1)
    _, big_tokenizer = build_prm("tiny", num_heads=1)
    big_tokenizer.add_tokens([f"tok{i}" for i in range(50)])
    with pytest.raises(ModelError, match="tokenizer has"):
        check_compatible(other, big_tokenizer)
    from models.tiny_tokenizer import build_tiny_tokenizer

    with pytest.raises(ModelError, match="separator"):
        check_compatible(model, build_tiny_tokenizer())


def test_step_mean_readout_averages_each_steps_own_tokens():
    """The step_mean readout (the cpu preset's) reads step j as the mean of the tokens after the question's
    [SEP] / the previous separator up to and including its own separator, never question or padding tokens,
    layer-normalized."""
    model, tokenizer = build_prm("tiny", num_heads=2, seed=0, readout="step_mean")
    model.eval()  # no dropout: two backbone passes must agree
    batch = StepBatcher(tokenizer).encode(QUESTIONS, STEPS)
    hidden = model.backbone(**batch.model_inputs()).last_hidden_state
    states, rows, step_index = model.step_states(hidden, batch.input_ids, batch.attention_mask)
    expected = []
    for b in range(len(QUESTIONS)):
        ids = batch.input_ids[b].tolist()
        start = ids.index(tokenizer.sep_token_id) + 1  # the question ends at the pair layout's [SEP]
        for end in [i for i, t in enumerate(ids) if t == model.separator_id]:
            mean = hidden[b, start:end + 1].mean(0)
            expected.append((mean - mean.mean()) / torch.sqrt(mean.var(unbiased=False) + 1e-5))
            start = end + 1
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and step_index.tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(states, torch.stack(expected))
    # The scores and the loss go through the same readout.
    out = model(**batch.model_inputs())
    torch.testing.assert_close(out.logits, model.head_logits(states))


def test_cpu_preset_reads_step_means_and_old_configs_keep_separator():
    from models.presets import READOUTS
    from models.prm import PRMConfig

    assert READOUTS["cpu"] == "step_mean"
    assert PRMConfig.from_json('{"num_heads": 2}').readout == "separator"  # models saved before the option
    model, _ = build_prm("tiny", num_heads=1)
    assert model.config.readout == "separator"
