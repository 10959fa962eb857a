"""Importing public PRM checkpoints: tiny random checkpoints in each exact file layout, scored against reference
forwards written here from the public definitions (Qwen2.5-Math-PRM's model card and modeling code; the
released ActPRM modeling code, github.com/sail-sg/ActivePRM, models/nets.py + qwen2_ensemble_prm)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import save_file

from models.errors import ModelError
from models import StepBatcher
from models.hf_import import detect_layout, import_prm, load_prm_folder
from models.uncertainty import step_stats

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Qwen2's chat template, reduced to what a PRM prompt uses.
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QUESTIONS = ["What is 12 + 30?", "Compute 7 * 6 - 2."]
STEPS = [["12 + 30 = 42.", "The answer is 42."], ["7 * 6 = 42.", "42 - 2 = 41.", "The answer is 41."]]


def qwen_like_tokenizer():
    """A character-level tokenizer shaped like Qwen2.5's: chat template, <|im_start|>/<|im_end|>, <extra_0> in the
    vocabulary, no [CLS]/[SEP], <|endoftext|> as padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  additional_special_tokens=specials[1:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen2(vocab: int, seed: int):
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024, pad_token_id=0)
    return cfg, Qwen2Model(cfg).eval()


def write_checkpoint(folder, tokenizer, cfg, backbone, extra_config: dict, extra_tensors: dict):
    """A Hugging Face folder as the hub holds it: config.json, model.safetensors (backbone under `model.`)."""
    folder.mkdir(parents=True)
    config = cfg.to_dict() | extra_config
    (folder / "config.json").write_text(json.dumps(config))
    state = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()} | extra_tensors
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def reference_states(tokenizer, backbone, question, steps):
    """Hidden states at the <extra_0> tokens, laid out as the public PRMs' model cards do: the whole chat, the
    assistant turn being the steps joined and closed by <extra_0>."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        hidden = backbone(input_ids=ids).last_hidden_state[0]
    return hidden[ids[0] == tokenizer.convert_tokens_to_ids("<extra_0>")]


def imported_stats(model, tokenizer):
    batch = StepBatcher(tokenizer, max_length=1024).encode(QUESTIONS, STEPS)
    return [step_stats(p) for p in model.step_probabilities(batch)]


def test_qwen25_math_prm_backbone_loads_and_new_heads_read_its_step_states(tmp_path):
    tok = qwen_like_tokenizer()
    cfg, backbone = tiny_qwen2(len(tok), seed=1)
    h = cfg.hidden_size
    head = {"score.0.weight": torch.randn(h, h) * 0.1, "score.0.bias": torch.randn(h) * 0.1,
            "score.2.weight": torch.randn(2, h) * 0.1, "score.2.bias": torch.randn(2) * 0.1}
    folder = tmp_path / "Qwen2.5-Math-PRM-tiny"
    write_checkpoint(folder, tok, cfg, backbone, {
        "architectures": ["Qwen2ForProcessRewardModel"],
        "auto_map": {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                     "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}}, head)
    assert detect_layout(folder) == "qwen2.5-math-prm"

    model, tokenizer = load_prm_folder(folder, num_heads=4, seed=3)
    assert model.config.num_heads == 4 and model.separator_id == tok.convert_tokens_to_ids("<extra_0>")
    # The heads are new (at their anchors), as when the paper started from Qwen2.5-Math-PRM-7B.
    assert torch.equal(model.w1, model.anchor_w1)
    for question, steps, (mu, sigma) in zip(QUESTIONS, STEPS, imported_stats(model, tokenizer)):
        states = reference_states(tok, backbone, question, steps)
        assert states.shape[0] == len(steps) == len(mu)
        # The states Qwen2.5-Math-PRM's 2-class head reads (softmax(score(h))[1]) are what the new heads read.
        w1, b1, w2, b2, w3, b3 = (getattr(model, n).detach() for n in ("w1", "b1", "w2", "b2", "w3", "b3"))
        z = torch.relu(torch.einsum("nh,ehk->enk", states, w1) + b1)
        z = torch.relu(z @ w2 + b2)
        ref = torch.sigmoid((z @ w3 + b3).squeeze(-1)).double()
        torch.testing.assert_close(mu, ref.mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(sigma, ref.std(0, correction=1), atol=1e-5, rtol=0)  # official: torch.std


def release_heads(e: int, h: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"nn1.weight": (e, h, k), "nn1.bias": (e, k), "nn2.weight": (e, k, k), "nn2.bias": (e, k),
              "nn_out.weight": (e, k, 1), "nn_out.bias": (e, 1)}
    return {name: torch.randn(shape, generator=g) * 0.3 for name, shape in shapes.items()}


def release_forward(states: torch.Tensor, heads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2ForEnsemblePRM.inference read at the rr_token: EnsembleFC is einsum('eblh,ehm->eblm') + bias, ReLU
    between layers, sigmoid at the end; -> (E, steps)."""
    x = states[None, None].expand(heads["nn1.weight"].shape[0], 1, -1, -1)
    x = torch.relu(torch.einsum("eblh,ehm->eblm", x, heads["nn1.weight"]) + heads["nn1.bias"][:, None, None, :])
    x = torch.relu(torch.einsum("eblh,ehm->eblm", x, heads["nn2.weight"]) + heads["nn2.bias"][:, None, None, :])
    x = torch.einsum("eblh,ehm->eblm", x, heads["nn_out.weight"]) + heads["nn_out.bias"][:, None, None, :]
    return torch.sigmoid(x.squeeze(-1))[:, 0]


def test_released_actprm_heads_and_anchors_load_as_they_are(tmp_path):
    tok = qwen_like_tokenizer()
    cfg, backbone = tiny_qwen2(len(tok), seed=2)
    e, k = 5, 128
    heads, anchors = release_heads(e, cfg.hidden_size, k, seed=0), release_heads(e, cfg.hidden_size, k, seed=1)
    tensors = {f"score.model.{n}": v for n, v in heads.items()} | {f"score.reg_model.{n}": v for n, v in anchors.items()}
    folder = tmp_path / "ActPRM-tiny"
    write_checkpoint(folder, tok, cfg, backbone, {
        "architectures": ["Qwen2ForEnsemblePRM"],
        "auto_map": {"AutoConfig": "configuration_qwen2.QwenEnPRMConfig", "AutoModel": "modeling_qwen2.Qwen2ForEnsemblePRM"},
        "num_ensemble": e, "learning_probability": 0.5, "regularization_lambda": 0.1, "rr_token": "<extra_0>",
        "rr_token_id": tok.convert_tokens_to_ids("<extra_0>"), "problem_type": "single_label_classification"}, tensors)
    assert detect_layout(folder) == "actprm-release"

    model, tokenizer = load_prm_folder(folder)
    assert (model.config.num_heads, model.config.head_hidden) == (e, k)
    assert (model.config.reg_lambda, model.config.learning_probability) == (0.1, 0.5)
    torch.testing.assert_close(model.anchor_w2, anchors["nn2.weight"])
    torch.testing.assert_close(model.anchor_b3.reshape(e, 1), anchors["nn_out.bias"])
    # The anchors are the released initial heads, so the regularizer starts where the paper's training left it.
    assert float(model.anchor_distance().detach()) > 0
    for question, steps, (mu, sigma) in zip(QUESTIONS, STEPS, imported_stats(model, tokenizer)):
        ref = release_forward(reference_states(tok, backbone, question, steps), heads).double()
        torch.testing.assert_close(mu, ref.mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(sigma, ref.std(0, correction=1), atol=1e-5, rtol=0)  # official: torch.std

    # Converted once into this project's folder, it scores the same wherever --model takes a folder.
    out = tmp_path / "native"
    assert import_prm(folder, out)["heads"] == "loaded"
    again, tokenizer2 = load_prm_folder(out)
    for (mu, _), (mu2, _) in zip(imported_stats(model, tokenizer), imported_stats(again, tokenizer2)):
        torch.testing.assert_close(mu, mu2, atol=0, rtol=0)


def test_unknown_or_broken_folders_are_refused_in_one_line(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelError, match="unsupported PRM architecture"):
        detect_layout(tmp_path / "llama")
    with pytest.raises(ModelError, match="not a PRM folder"):
        detect_layout(tmp_path)


def test_training_and_scoring_start_from_an_imported_folder_converted_once(tmp_path, monkeypatch):
    """`model.init_from` (and `--model` of score) take a public PRM folder: it becomes a native folder once."""
    from actprm.config import Settings
    from models import EnsemblePRM
    from tasks.model_source import starting_model

    tok = qwen_like_tokenizer()
    cfg, backbone = tiny_qwen2(len(tok), seed=4)
    folder = tmp_path / "Qwen2.5-Math-PRM-tiny"
    write_checkpoint(folder, tok, cfg, backbone, {"architectures": ["Qwen2ForProcessRewardModel"]},
                     {"score.0.weight": torch.zeros(32, 32), "score.0.bias": torch.zeros(32),
                      "score.2.weight": torch.zeros(2, 32), "score.2.bias": torch.zeros(2)})
    # A registry of its own, without a champion (one would be the starting point instead).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = Settings(home=tmp_path / "home", model={"preset": "tiny-decoder", "num_heads": 3,
                                                       "init_from": str(folder)})
    model_dir, key = starting_model(settings)
    assert Path(model_dir).parent == settings.checkpoints_dir / "init" and key.startswith("dir:")
    assert starting_model(settings) == (model_dir, key)  # converted once
    model = EnsemblePRM.from_pretrained(model_dir)
    assert model.config.num_heads == 3 and model.config.preset == "qwen2.5-math-prm"
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], value, atol=0, rtol=0)
