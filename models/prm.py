"""The ensemble PRM of ActPRM (Duan et al., 2025, arXiv 2504.10559, Sec. 3).

A shared backbone (any Hugging Face AutoModel) feeds E independent MLP heads
(hidden -> 128 -> 128 -> 1, ReLU; paper E = 32). The heads are read only at step-separator positions
and are computed together as batched matmuls over stacked weights, so E = 32 costs about as much
as E = 1 next to the backbone.

Training loss (paper Eq. 3-4): BCE-with-logits on labeled separators, where each head sees a
trajectory with probability ``learning_probability`` (a per-(head, trajectory) bootstrap mask, for
diversity between heads), plus ``reg_lambda * mean((theta - theta_init)^2)`` over the heads'
parameters, anchored to a frozen copy of their initial weights ("anchored ensembles",
Pearce et al., 2020), which keeps the heads' initial disagreement from collapsing.

The heads always run in float32 (even next to a bf16 backbone): the uncertainty rule compares an
ensemble std with 0.005, which is below bf16's resolution near 1.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.errors import ModelError
from models.layout import IGNORE_INDEX, STEP_SEPARATOR, StepBatch

CONFIG_FILE = "prm_config.json"
HEADS_FILE = "heads.safetensors"
BACKBONE_DIR = "backbone"


@dataclass
class PRMConfig:
    num_heads: int = 32
    head_hidden: int = 128
    reg_lambda: float = 0.5
    learning_probability: float = 1.0
    seed: int = 0
    freeze_backbone: bool = False
    separator_token: str = STEP_SEPARATOR
    separator_id: int = -1
    preset: str = ""
    backbone_name: str = ""        # where the backbone came from (path or hub id), for provenance
    # What the heads read per step. "separator": the hidden state at the step's separator (the paper's and
    # Qwen2.5-Math-PRM's design; the backbone is fine-tuned to put the step's verdict there). "step_mean": the
    # layer-normalized mean of the step's token states, separator included: a frozen sentence encoder such as MiniLM was
    # trained to be read that way, and its state at a newly added separator token carries little of the step.
    readout: str = "separator"
    prefix_end_id: int = -1        # token that closes the question (BERT's [SEP]); step 1 starts after it
    # How the heads start. "truncated_normal": the official code's (sail-sg/ActivePRM models/nets.py init_weights:
    # weights normal with std 1/(2 sqrt(fan_in)) truncated at 2 std, biases 0). "uniform": nn.Linear's default
    # (Kaiming-uniform, bound 1/sqrt(fan_in), biases too), which the CPU presets' learning rates were tuned on.
    # A saved model's heads are loaded, so this only matters for fresh ones; configs saved before it was a
    # field were made uniform.
    head_init: str = "uniform"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PRMConfig:
        return cls(**json.loads(text))


@dataclass
class PRMOutput:
    """``logits``: (E, N) over the N separator positions of the batch, in row-major order;
    ``step_trajectory``/``step_index``: (N,) batch row and 0-based step of each column."""

    logits: torch.Tensor
    step_trajectory: torch.Tensor
    step_index: torch.Tensor
    loss: torch.Tensor | None = None
    cls_loss: torch.Tensor | None = None
    reg_loss: torch.Tensor | None = None


HEAD_PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3")
HEAD_INITS = ("truncated_normal", "uniform")


class EnsemblePRM(nn.Module):
    def __init__(self, backbone: nn.Module, config: PRMConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        e, k = config.num_heads, config.head_hidden
        gen = torch.Generator().manual_seed(config.seed)
        if config.head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {config.head_init!r}; choose one of: {', '.join(HEAD_INITS)}")
        # each head independently, from the model's own seeded generator (config.head_init, see PRMConfig)
        for name, shape, fan_in in (("w1", (e, hidden, k), hidden), ("b1", (e, 1, k), hidden),
                                    ("w2", (e, k, k), k), ("b2", (e, 1, k), k),
                                    ("w3", (e, k, 1), k), ("b3", (e, 1, 1), k)):
            if config.head_init == "uniform":
                bound = 1.0 / math.sqrt(fan_in)
                value = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            elif name.startswith("b"):
                value = torch.zeros(shape)
            else:
                std = 1.0 / (2 * math.sqrt(fan_in))
                value = nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std, generator=gen)
            self.register_parameter(name, nn.Parameter(value))
            self.register_buffer(f"anchor_{name}", value.clone())
        self._mask_generator = torch.Generator().manual_seed(config.seed + 1)
        if config.freeze_backbone:
            self.freeze(True)

    # -- the network -------------------------------------------------------------------------
    @property
    def separator_id(self) -> int:
        return self.config.separator_id

    @property
    def device(self) -> torch.device:
        return self.w1.device

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) separator hidden states -> (E, N) logits, all heads in three batched matmuls."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            x = hidden.float()
            # float32 whatever the module was cast to: DeepSpeed's bf16 mode casts the whole model, heads included.
            w1, b1, w2, b2, w3, b3 = (t.float() for t in (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3))
            e, h, k = w1.shape
            # Layer 1 as one GEMM against the heads' weights laid side by side: (N, H) @ (H, E*K).
            z = (x @ w1.permute(1, 0, 2).reshape(h, e * k)).view(-1, e, k).transpose(0, 1)
            z = torch.relu(z + b1)
            z = torch.relu(torch.baddbmm(b2, z, w2))
            return torch.baddbmm(b3, z, w3).squeeze(-1)

    def step_states(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, H) backbone states -> the (N, H) states the heads read, one per separator in row-major
        order, with each one's batch row and 0-based step index."""
        sep = self.separator_mask(input_ids, attention_mask)
        rows, cols = sep.nonzero(as_tuple=True)
        before = sep.long().cumsum(1)
        step_index = (before - 1)[rows, cols]
        if self.config.readout == "separator":
            return hidden[rows, cols], rows, step_index
        if self.config.readout != "step_mean":
            raise ModelError(f"unknown readout {self.config.readout!r}; use 'separator' or 'step_mean'")
        # Token t belongs to step j when j separators come before it (the separator closes its own step);
        # tokens of the question (up to and including prefix_end_id) and after the last separator belong to none.
        # A row without the prefix-end token (another layout) starts its first step at its first token.
        step_of = before - sep.long()
        in_steps = attention_mask.bool() & (step_of < before[:, -1:])
        if self.config.prefix_end_id >= 0:
            ends = (input_ids == self.config.prefix_end_id).long()
            in_steps &= ((ends.cumsum(1) - ends) > 0) | (ends.sum(1, keepdim=True) == 0)
        width = max(int(before[:, -1].max()), 1) if rows.numel() else 1
        segment = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1) * width + step_of
        seg = segment[in_steps]
        sums = torch.zeros(input_ids.shape[0] * width, hidden.shape[-1], device=hidden.device)
        sums.index_add_(0, seg, hidden[in_steps].float())
        counts = torch.bincount(seg, minlength=sums.shape[0]).clamp(min=1).unsqueeze(1)
        means = (sums / counts)[rows * width + step_index]
        # Unit-scale inputs for the heads, as sentence-transformers normalize their pooled embeddings: MiniLM's
        # step means have a per-feature spread of ~0.1, which left the heads underfit in the study's budget.
        means = F.layer_norm(means, means.shape[-1:])
        return means.to(hidden.dtype), rows, step_index

    def separator_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: where the step separators of the batch are."""
        return (input_ids == self.separator_id) & attention_mask.bool()

    def step_loss(self, logits: torch.Tensor, step_labels: torch.Tensor, step_trajectory: torch.Tensor,
                  bootstrap_mask: torch.Tensor | None = None, trajectory_mask: torch.Tensor | None = None,
                  num_trajectories: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Paper Eq. 3-4 on (E, N) logits and their (N,) labels (IGNORE_INDEX = unlabeled): the masked BCE
        mean and the anchor regularization; see `forward` for the masks. A sampled bootstrap mask covers
        `num_trajectories` rows (default: up to the last row with a step)."""
        weight = (step_labels != IGNORE_INDEX).float().unsqueeze(0).expand_as(logits)
        if bootstrap_mask is None and self.training and self.config.learning_probability < 1.0:
            if num_trajectories is None:
                num_trajectories = int(step_trajectory.max()) + 1 if step_trajectory.numel() else 0
            bootstrap_mask = self.sample_bootstrap_mask(num_trajectories)
        if bootstrap_mask is not None:
            weight = weight * bootstrap_mask.to(weight.device, weight.dtype)[:, step_trajectory]
        if trajectory_mask is not None:
            weight = weight * trajectory_mask.to(weight.device, weight.dtype)[step_trajectory].unsqueeze(0)
        target = step_labels.clamp(min=0).float().unsqueeze(0).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # Mean over the (head, labeled step) pairs that are switched on; 0 (still a graph) when none.
        cls_loss = (bce * weight).sum() / weight.sum().clamp(min=1.0)
        return cls_loss, self.config.reg_lambda * self.anchor_distance()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                bootstrap_mask: torch.Tensor | None = None,
                trajectory_mask: torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> PRMOutput:
        """Score every separator of the batch; with ``labels`` (B, T) also compute the loss.

        ``bootstrap_mask`` (E, B) of 0/1 says which heads learn from which trajectory; when omitted
        in training mode with learning_probability < 1 it is sampled from the model's seeded
        generator. ``trajectory_mask`` (B,) drops whole trajectories from the loss (ActPRM's
        in-training selection of uncertain trajectories). It may also be a callable, given this forward's
        detached (E, N) logits and (N,) step rows, that returns the mask: a selection that reads the very
        scores it trains on, in one pass instead of a scoring pass and a training pass (the two agree only
        when the training forward is deterministic: see `has_dropout`).
        """
        ctx = torch.no_grad() if self.config.freeze_backbone else contextlib.nullcontext()
        with ctx:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states, rows, step_index = self.step_states(hidden, input_ids, attention_mask)
        out = PRMOutput(logits=self.head_logits(states), step_trajectory=rows, step_index=step_index)
        if labels is None:
            return out
        if callable(trajectory_mask):
            trajectory_mask = trajectory_mask(out.logits.detach(), rows)
        out.cls_loss, out.reg_loss = self.step_loss(out.logits, labels[self.separator_mask(input_ids, attention_mask)],
                                                    rows, bootstrap_mask, trajectory_mask,
                                                    num_trajectories=input_ids.shape[0])
        out.loss = out.cls_loss + out.reg_loss
        return out

    def has_dropout(self) -> bool:
        """Whether a training-mode forward is random (dropout anywhere, as a module or as an attention setting in
        the backbone's config), so that it scores differently from the eval-mode forward the scoring stage uses.
        BERT-style backbones (MiniLM) have dropout; Qwen2.5 has none (attention_dropout 0.0). A frozen backbone runs
        in eval mode (`train`), and the heads have no dropout."""
        if self.config.freeze_backbone:
            return False
        if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.modules()):
            return True
        config = getattr(self.backbone, "config", None)
        settings = config.to_dict() if hasattr(config, "to_dict") else {}
        return any("dropout" in k and isinstance(v, (int, float)) and v > 0 for k, v in settings.items())

    def anchor_distance(self) -> torch.Tensor:
        """mean((theta - theta_init)^2) over all head parameters (one mean over every element)."""
        total = sum(((getattr(self, n) - getattr(self, f"anchor_{n}")) ** 2).sum() for n in HEAD_PARAMS)
        return total / sum(getattr(self, n).numel() for n in HEAD_PARAMS)

    def train(self, mode: bool = True) -> EnsemblePRM:
        """A frozen backbone stays in eval mode: its weights never change, so dropout would only train the heads on
        noised states that scoring (eval mode) never shows them."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def freeze(self, frozen: bool) -> None:
        """Train only the heads (the forward then runs the backbone without grad and in eval mode), or all of it."""
        self.config.freeze_backbone = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def bootstrap_mask_for(self, trajectory_keys: list[int], seed: int) -> torch.Tensor:
        """(E, B) mask fixed per (seed, trajectory): head e learns from a trajectory in every epoch of a run or in
        none, with probability learning_probability (the bootstrap of the ensemble, drawn once per trajectory; a
        mask drawn afresh for every minibatch would let a head see a trajectory in most epochs)."""
        p = float(self.config.learning_probability)
        if p >= 1.0:
            return torch.ones(self.config.num_heads, len(trajectory_keys))
        columns = [torch.bernoulli(torch.full((self.config.num_heads,), p),
                                   generator=torch.Generator().manual_seed(seed * 1_000_003 + int(key)))
                   for key in trajectory_keys]
        return torch.stack(columns, dim=1)

    def sample_bootstrap_mask(self, num_trajectories: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(E, B) Bernoulli(learning_probability) mask: which head learns from which trajectory."""
        g = generator or self._mask_generator
        p = torch.full((self.config.num_heads, num_trajectories), float(self.config.learning_probability))
        return torch.bernoulli(p, generator=g)

    @torch.no_grad()
    def step_probabilities(self, batch: StepBatch) -> list[torch.Tensor]:
        """Per trajectory of the batch, an (E, scored_steps) float32 CPU tensor of P(step correct)."""
        inputs = {k: v.to(self.device) for k, v in batch.model_inputs().items()}
        out = self.forward(**inputs)
        probs = torch.sigmoid(out.logits).float().cpu()
        counts = torch.bincount(out.step_trajectory.cpu(), minlength=len(batch)).tolist()
        return list(torch.split(probs, counts, dim=1))

    def head_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, n) for n in HEAD_PARAMS]

    # -- save / load ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """Write backbone/ (HF format), heads.safetensors (heads + anchors), prm_config.json, tokenizer."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with _quiet_hf():
            self.backbone.save_pretrained(d / BACKBONE_DIR)
        tensors = {n: getattr(self, n).detach().cpu().contiguous() for n in HEAD_PARAMS}
        tensors |= {f"anchor_{n}": getattr(self, f"anchor_{n}").detach().cpu().contiguous() for n in HEAD_PARAMS}
        save_file(tensors, str(d / HEADS_FILE))
        (d / CONFIG_FILE).write_text(self.config.to_json())
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device | None = None,
                        with_tokenizer: bool = False):
        """Load a directory written by save_pretrained; with_tokenizer=True returns (model, tokenizer)."""
        from transformers import AutoModel, AutoTokenizer

        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / HEADS_FILE).is_file():
            raise ModelError(f"{d} is not a saved ActPRM model (missing {CONFIG_FILE} or {HEADS_FILE})")
        config = PRMConfig.from_json((d / CONFIG_FILE).read_text())
        with _quiet_hf():
            backbone = AutoModel.from_pretrained(d / BACKBONE_DIR, dtype="auto")
        model = cls(backbone, config)
        state = load_file(str(d / HEADS_FILE))
        with torch.no_grad():
            for name, value in state.items():
                getattr(model, name).copy_(value)
        if device is not None:
            model.to(device)
        model.eval()
        if with_tokenizer:
            return model, AutoTokenizer.from_pretrained(d)
        return model


@contextlib.contextmanager
def _quiet_hf():
    """Hide transformers' per-shard progress bars (they would interleave with the scoring bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check_compatible(model: EnsemblePRM, tokenizer) -> None:
    """Fail early and clearly when a tokenizer does not belong to a model."""
    rows = model.backbone.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelError(f"tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: "
                          "load the tokenizer saved with this model")
    sep = tokenizer.convert_tokens_to_ids(model.config.separator_token)
    if sep is None or sep == tokenizer.unk_token_id or sep != model.separator_id:
        raise ModelError(f"tokenizer maps the step separator {model.config.separator_token!r} to {sep}, "
                          f"the model expects id {model.separator_id}: load the tokenizer saved with this model")
