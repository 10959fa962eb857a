"""Batched inference of the ensemble PRM: the one forward loop the score stage and the served pyfunc share.

Plain torch: the served model ships this package and nothing else of the project (tasks/pyfunc_model.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.layout import EncodedTrajectory, StepBatch, StepBatcher


def inference_max_length(model, max_length: int | None = None) -> int:
    """The token budget for scoring: `max_length` if given, else the backbone's whole context."""
    if max_length:
        return int(max_length)
    context = getattr(model.backbone.config, "max_position_embeddings", None)
    return int(context) if context else 512


def forward_batches(model, batcher: StepBatcher, encoded: list[EncodedTrajectory], *, batch_size: int = 32,
                    bucket: bool = True) -> Iterator[tuple[StepBatch, list[tuple[int, torch.Tensor]]]]:
    """Yield (batch, [(index into `encoded`, per-head step probabilities [heads, steps])]) batch by batch.

    `bucket` runs shortest first (less padding; the scores don't depend on it); `bucket=False` keeps the input
    order (plain padding), for the benchmark's comparison. bf16 autocast on CUDA, float32 on CPU."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids)) if bucket else list(range(len(encoded)))
    device = model.device
    for lo in range(0, len(order), batch_size):
        idx = order[lo: lo + batch_size]
        batch = batcher.collate([encoded[i] for i in idx], with_labels=False).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(**batch.model_inputs())
            probs = torch.sigmoid(out.logits.float()).cpu()
            counts = torch.bincount(out.step_trajectory.cpu(), minlength=len(idx)).tolist()
        yield batch, list(zip(idx, torch.split(probs, counts, dim=1)))
