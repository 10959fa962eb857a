"""The study's cached backbone states: what the frozen backbone computes once per pool, packed for the heads.

`step_states` are the per-step states the heads read (`EnsemblePRM.step_states`); with `top_layers` > 0,
`token_states` are the per-token states entering the backbone's top layers instead, which every run trains its
own copy of (`TopLayers`). Both are cached on disk by (trajectories, model, readout) (`cached_step_states`),
packed per split (`pack_splits`), and read by `heads_model` ensembles through `forward_pool` and
`step_probabilities`. The protocol that trains and scores those ensembles is in `study.protocol`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from actprm.errors import ActPRMError

STATES_VERSION = 3  # bump when the layout or a readout changes, so cached step states are recomputed
TOKEN_GROUP = 16  # trajectories per forward of the trained top layers (`_token_steps`)


@contextlib.contextmanager
def torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _length_batches(tokenizer, trajectories: list[dict], batch_size: int, max_length: int):
    """(positions, encoded batch) over the trajectories, batched by length so padding stays small."""
    from tqdm import tqdm

    from models import StepBatcher

    batcher = StepBatcher(tokenizer, max_length=max_length)
    order = sorted(range(len(trajectories)), key=lambda i: len(trajectories[i]["question"])
                   + sum(len(s) for s in trajectories[i]["steps"]))
    # The one backbone pass of a study: minutes on a large pool on 2 cores, before any run logs a line.
    with tqdm(total=len(order), unit="traj", desc="backbone states", file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, batcher.encode([trajectories[i]["question"] for i in idx],
                                      [trajectories[i]["steps"] for i in idx])
            bar.update(len(idx))


def _backbone_out(model, batch, **kwargs):
    """The backbone's output on an encoded batch, on the model's device (the states come back to the CPU after)."""
    device = next(model.backbone.parameters()).device
    return model.backbone(**{k: v.to(device) for k, v in batch.model_inputs().items()}, **kwargs)


def step_states(model, tokenizer, trajectories: list[dict], *, batch_size: int = 32,
                max_length: int = 512) -> list[torch.Tensor]:
    """Per trajectory, the (scored_steps, H) states the frozen model's heads read (`EnsemblePRM.step_states`).

    Trajectories are batched by length so padding stays small, and returned in the order given, on the CPU.
    """
    out: list[torch.Tensor | None] = [None] * len(trajectories)
    model.eval()
    with torch.no_grad():
        for idx, batch in _length_batches(tokenizer, trajectories, batch_size, max_length):
            hidden = _backbone_out(model, batch).last_hidden_state.cpu()
            states, rows, _ = model.step_states(hidden, batch.input_ids, batch.attention_mask)
            per_row = torch.split(states.float(), torch.bincount(rows, minlength=len(idx)).tolist())
            for row, i in enumerate(idx):
                out[i] = per_row[row].clone()
    return out  # type: ignore[return-value]


def token_states(model, tokenizer, trajectories: list[dict], top_layers: int, *, batch_size: int = 32,
                 max_length: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per trajectory, the (tokens, H) states entering the frozen model's top `top_layers` layers and its (tokens,)
    input ids, padding dropped; batched by length as `step_states`, returned in the order given."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(trajectories)
    model.eval()
    with torch.no_grad():
        for idx, batch in _length_batches(tokenizer, trajectories, batch_size, max_length):
            hidden = _backbone_out(model, batch, output_hidden_states=True).hidden_states[-1 - top_layers].cpu()
            for row, i in enumerate(idx):
                real = batch.attention_mask[row].bool()
                out[i] = (hidden[row][real].float().clone(), batch.input_ids[row][real].clone())
    return out  # type: ignore[return-value]


class TopLayers(nn.Module):
    """The backbone slot of an ensemble that trains the backbone's top layers: it runs them on cached states that
    enter them (`token_states`), and carries how the heads read steps off their output."""

    def __init__(self, layers: nn.ModuleList, hidden_size: int, *, separator_id: int, readout: str,
                 prefix_end_id: int):
        super().__init__()
        self.layers = layers
        self.config = SimpleNamespace(hidden_size=hidden_size)
        self.separator_id, self.readout, self.prefix_end_id = separator_id, readout, prefix_end_id

    @classmethod
    def of(cls, model, k: int) -> TopLayers:
        """A copy of the top k layers of a BERT-style model's encoder (MiniLM, the tiny preset)."""
        layers = getattr(getattr(model.backbone, "encoder", None), "layer", None)
        if layers is None:
            raise ActPRMError(f"study preset field top_layers needs a BERT-style encoder; the {model.config.preset!r} "
                              "backbone has none: use top_layers=0")
        if not 0 < k <= len(layers):
            raise ActPRMError(f"study preset field top_layers is {k}, but the {model.config.preset!r} backbone has "
                              f"{len(layers)} layers")
        return cls(copy.deepcopy(nn.ModuleList(list(layers)[-k:])), model.backbone.config.hidden_size,
                   separator_id=model.separator_id, readout=model.config.readout,
                   prefix_end_id=model.config.prefix_end_id)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The additive (B, 1, 1, T) mask BERT's layers take: padding keys get the dtype's lowest value.
        extended = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=extended)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def train(self, mode: bool = True) -> TopLayers:
        """The layers always run as in eval mode (no dropout), so the scores a strategy picks by and the network it
        trains are the same function, and runs reproduce under a seed without touching torch's global generator."""
        super().train(mode)
        self.layers.eval()
        return self


def feature_cache_key(trajectories: list[dict], preset: str, backbone: str, max_length: int, readout: str,
                      top_layers: int = 0, device: str = "cpu") -> str:
    what = [preset, backbone, max_length, readout, STATES_VERSION] + ([f"tokens-entering-top-{top_layers}"]
                                                                      if top_layers else [])
    if torch.device(device).type != "cpu":  # other kernels, other rounding; CPU keys stay what they were
        what.append(f"device-{torch.device(device).type}")
    h = hashlib.sha256(json.dumps(what).encode())
    for t in trajectories:
        h.update(t["id"].encode())
    return h.hexdigest()[:16]


def cached_step_states(trajectories: list[dict], *, preset: str, cache_dir: str | Path | None,
                       batch_size: int = 32, max_length: int = 512, seed: int = 0,
                       backbone_path: str | None = None, threads: int | None = None, top_layers: int = 0,
                       device: str = "cpu") -> tuple[list, dict]:
    """`step_states` of a fresh `build_prm(preset)` model, cached on disk by (trajectories, model, readout).

    With `top_layers` > 0, the `token_states` entering the model's top layers instead, and `info["top"]`: a copy of
    those pretrained layers (`TopLayers`, on the CPU), for `pack_splits`. The backbone pass runs on `device`; the
    states are returned on the CPU."""
    from models import build_prm

    t0 = time.perf_counter()
    model, tokenizer = build_prm(preset, num_heads=1, seed=seed, freeze_backbone=True, backbone_path=backbone_path)
    top = TopLayers.of(model, top_layers) if top_layers else None  # before the pass, so a bad k fails in seconds
    key = feature_cache_key(trajectories, preset, model.config.backbone_name, max_length, model.config.readout,
                            top_layers, device)
    path = Path(cache_dir) / f"{'token' if top else 'step'}-states-{key}.pt" if cache_dir else None
    info = {"preset": preset, "backbone": model.config.backbone_name, "cache_key": key,
            "hidden_size": model.backbone.config.hidden_size, "separator_id": model.separator_id,
            "readout": model.config.readout, "top_layers": top_layers, "top": top}
    if path is not None and path.is_file():
        states = torch.load(path)
        return states, info | {"cached": True, "seconds": time.perf_counter() - t0}
    model.to(device)
    with torch_threads(threads):
        if top is not None:
            states = token_states(model, tokenizer, trajectories, top_layers, batch_size=batch_size,
                                  max_length=max_length)
        else:
            states = step_states(model, tokenizer, trajectories, batch_size=batch_size, max_length=max_length)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(states, tmp)
        tmp.replace(path)
    return states, info | {"cached": False, "seconds": time.perf_counter() - t0}


@dataclass
class PackedPool:
    """Cached step states of a split, zero-padded to (N, S, H), with gold step labels.

    With `top` (the preset's `top_layers` > 0), `states` are instead the (N, T, H) token states entering the
    backbone's top layers, with their `input_ids` and `attention_mask`; each run trains its own copy of `top`."""

    ids: list[str]
    states: torch.Tensor         # (N, S, H) float32
    steps: torch.Tensor          # (N,) scored steps per trajectory
    labels: torch.Tensor         # (N, S) 1 before the first error, 0 at it, IGNORE_INDEX elsewhere
    first_errors: list[int]      # gold, 0-based, -1 = all correct
    unread: torch.Tensor         # (N,) steps past the backbone's max_length, never read
    input_ids: torch.Tensor | None = None       # (N, T), token pools only
    attention_mask: torch.Tensor | None = None  # (N, T), token pools only
    top: TopLayers | None = None                # the pretrained top layers, token pools only

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: list[int]) -> PackedPool:
        """The trajectories at `positions`, in that order, as a pool of their own."""
        idx = torch.tensor(positions, dtype=torch.long)
        tokens = {} if self.top is None else {"input_ids": self.input_ids[idx],
                                              "attention_mask": self.attention_mask[idx], "top": self.top}
        return PackedPool([self.ids[i] for i in positions], self.states[idx], self.steps[idx], self.labels[idx],
                          [self.first_errors[i] for i in positions], self.unread[idx], **tokens)


def _packed_pool(trajectories: list[dict], states: torch.Tensor, scored: list[int], width: int,
                 **tokens: Any) -> PackedPool:
    """The pool over already padded `states`, with the gold labels of each trajectory's `scored` steps laid out
    (N, width) as StepBatcher lays them out when later steps are cut, and the steps left unread."""
    from models import IGNORE_INDEX, step_labels

    labels = torch.full((len(trajectories), width), IGNORE_INDEX, dtype=torch.long)
    for i, (t, k) in enumerate(zip(trajectories, scored)):
        labels[i, :k] = torch.tensor(step_labels(len(t["steps"]), int(t["gold_first_error"]))[:k])
    return PackedPool([t["id"] for t in trajectories], states, torch.tensor(scored), labels,
                      [int(t["gold_first_error"]) for t in trajectories],
                      torch.tensor([len(t["steps"]) - k for t, k in zip(trajectories, scored)]), **tokens)


def pack(trajectories: list[dict], states: list[torch.Tensor]) -> PackedPool:
    """`step_states` zero-padded to (N, S, H), with their steps' gold labels."""
    scored = [int(s.shape[0]) for s in states]
    packed = torch.zeros(len(trajectories), max(scored), states[0].shape[1])
    for i, s in enumerate(states):
        packed[i, :len(s)] = s
    return _packed_pool(trajectories, packed, scored, max(scored))


def pack_tokens(trajectories: list[dict], states: list[tuple[torch.Tensor, torch.Tensor]], top: TopLayers
                ) -> PackedPool:
    """`token_states` zero-padded to (N, T, H), with the step labels of the steps the tokens hold (those whose
    separator survived max_length), laid out as `pack` lays them."""
    n, width = len(trajectories), max(int(ids.shape[0]) for _, ids in states)
    scored = [int((ids == top.separator_id).sum()) for _, ids in states]
    packed = torch.zeros(n, width, states[0][0].shape[1])
    input_ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, (hidden, ids) in enumerate(states):
        packed[i, :len(ids)], input_ids[i, :len(ids)], mask[i, :len(ids)] = hidden, ids, 1
    return _packed_pool(trajectories, packed, scored, max(max(scored), 1), input_ids=input_ids,
                        attention_mask=mask, top=top)


def model_facts(info: dict, train: PackedPool, evaluation: PackedPool) -> dict:
    """What a study records of its backbone pass (`cached_step_states`' info), with the trajectories cut at
    max_length: their unread steps count as uncertain, and an error there cannot be found."""
    return {**{k: info[k] for k in ("preset", "backbone", "hidden_size", "cached", "seconds")},
            "cut_trajectories": {"train": int((train.unread > 0).sum()), "eval": int((evaluation.unread > 0).sum())}}


def pack_splits(data: dict[str, list[dict]], states: list, top: TopLayers | None = None
                ) -> tuple[PackedPool, PackedPool]:
    """The train and eval splits packed, from the states of `data["train"] + data["eval"]` in that order (token
    states when `top` is given)."""
    n = len(data["train"])
    if top is not None:
        return pack_tokens(data["train"], states[:n], top), pack_tokens(data["eval"], states[n:], top)
    return pack(data["train"], states[:n]), pack(data["eval"], states[n:])


class CachedStates(nn.Module):
    """The backbone slot of a heads-only ensemble: the study feeds cached step states to the heads."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden_size)

    def forward(self, *_: Any, **__: Any):
        raise ActPRMError("this ensemble has no backbone: feed it cached step states (study.states)")


def heads_model(hidden_size: int, separator_id: int, *, num_heads: int, seed: int, reg_lambda: float,
                learning_probability: float, top: TopLayers | None = None):
    """A fresh ensemble (same head init as build_prm with this seed) over cached step states, or, with `top`,
    over a trainable copy of those pretrained top layers."""
    from models import EnsemblePRM, PRMConfig

    heads = dict(num_heads=num_heads, reg_lambda=reg_lambda, learning_probability=learning_probability, seed=seed,
                 separator_id=separator_id)
    if top is None:
        return EnsemblePRM(CachedStates(hidden_size),
                           PRMConfig(**heads, freeze_backbone=True, preset="cached-states"))
    return EnsemblePRM(copy.deepcopy(top).requires_grad_(True),
                       PRMConfig(**heads, preset="cached-token-states", readout=top.readout,
                                 prefix_end_id=top.prefix_end_id))


def forward_pool(model, pool: PackedPool, idx: torch.Tensor, with_labels: bool):
    """(E, N) logits over the scored steps of `idx` (row-major), their rows and, with labels, the loss.

    With labels only the labeled steps are scored: a step after the first error carries IGNORE_INDEX and adds
    nothing to the loss or its gradient, and skipping it saves a quarter of the training compute on the
    synthetic pool (the loss is the same up to float rounding).

    The pool stays on the CPU (a token pool of 12,000 trajectories is ~9 GB); what a minibatch reads goes to the
    model's device, and the results stay there."""
    from models import IGNORE_INDEX

    if pool.top is not None:
        states, rows, labels = _token_steps(model, pool, idx)
    else:
        width = int(pool.steps[idx].max())
        present = torch.arange(width).unsqueeze(0) < pool.steps[idx].unsqueeze(1)
        rows = present.nonzero(as_tuple=True)[0]
        states, labels = pool.states[idx, :width][present], pool.labels[idx, :width][present]
        states, rows, labels = states.to(model.device), rows.to(model.device), labels.to(model.device)
    if not with_labels:
        return model.head_logits(states), rows, None
    keep = labels != IGNORE_INDEX
    logits = model.head_logits(states[keep])
    cls_loss, reg_loss = model.step_loss(logits, labels[keep], rows[keep])
    return logits, rows[keep], cls_loss + reg_loss


def _token_steps(model, pool: PackedPool, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scored steps of `idx` in a token pool, row-major: the model's top layers run on the cached states that
    enter them, then the steps are read off their output (`EnsemblePRM.step_states`). Their states, rows and
    labels."""
    device = model.device
    lengths = pool.attention_mask[idx].sum(1)
    # The layers run on groups of trajectories of similar length, each padded to its own longest: a minibatch
    # padded to its longest trajectory would be about half padding on the synthetic pool.
    parts = []
    for group in torch.split(torch.argsort(lengths, stable=True), TOKEN_GROUP):
        width, where = int(lengths[group].max()), idx[group]
        ids, mask = pool.input_ids[where, :width].to(device), pool.attention_mask[where, :width].to(device)
        hidden = model.backbone(pool.states[where, :width].to(device), mask)
        states, rows, step_index = model.step_states(hidden, ids, mask)
        parts.append((states, group.to(device)[rows], step_index))
    states, rows, step_index = (torch.cat(t) for t in zip(*parts))
    # Back to row-major order over idx, as `forward_pool` and `step_probabilities` lay steps out.
    order = torch.argsort(rows * (int(step_index.max()) + 1 if step_index.numel() else 1) + step_index)
    states, rows, step_index = states[order], rows[order], step_index[order]
    return states, rows, pool.labels[idx].to(device)[rows, step_index]


@torch.no_grad()
def step_probabilities(model, pool: PackedPool, idx: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """Per trajectory of `idx`, its (E, scored_steps) P(step correct), on the CPU as
    `EnsemblePRM.step_probabilities` returns them."""
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(idx), batch_size):
        part = idx[start:start + batch_size]
        logits, rows, _ = forward_pool(model, pool, part, with_labels=False)
        out += list(torch.split(torch.sigmoid(logits).cpu(), torch.bincount(rows.cpu(), minlength=len(part)).tolist(),
                                dim=1))
    return out
