"""What a training run leaves on disk and needs back after a crash: its checkpoints, the counters saved in
them, the fingerprint that says which data and settings a checkpoint belongs to, and the final model.

A rerun resumes only from a complete checkpoint (CHECKPOINT_DONE written last) of the same fingerprint, so a
``kill -9`` mid-save or a rerun under other settings never continues from the wrong state (tasks/train.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actprm.errors import ActPRMError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_DONE = "checkpoint.json"  # written last: a checkpoint without it was interrupted mid-save
KEEP_CHECKPOINTS = 2


def run_fingerprint(examples: list[dict], params: dict[str, Any]) -> str:
    """What a checkpoint must match to be resumed: the data and every knob that changes the weights."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for ex in examples:
        h.update(json.dumps([ex["question"], ex["steps"], ex["first_error"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


class Progress:
    """Run counters that must survive a resume; saved by accelerator.save_state (register_for_checkpointing)."""

    def __init__(self) -> None:
        self.completed_steps = 0
        self.seen = self.kept = self.confident = self.pseudo_correct = 0
        self.epoch_counts: dict[int, list[int]] = {}  # epoch -> [seen, kept, confident, pseudo_correct]
        self.last: dict[str, float] = {}

    def record_step(self, epoch: int, totals: list[float], micro_batches: int) -> dict[str, float]:
        """Count one optimizer step from its summed window; return its metrics (tasks/train.py's docstring)."""
        seen, kept, conf, correct, cls_sum, reg_sum, _ = totals
        self.completed_steps += 1
        counts = (int(seen), int(kept), int(conf), int(correct))
        self.seen, self.kept = self.seen + counts[0], self.kept + counts[1]
        self.confident, self.pseudo_correct = self.confident + counts[2], self.pseudo_correct + counts[3]
        per_epoch = self.epoch_counts.setdefault(epoch, [0, 0, 0, 0])
        for j, v in enumerate(counts):
            per_epoch[j] += v
        metrics = {"loss": (cls_sum + reg_sum) / micro_batches, "cls_loss": cls_sum / micro_batches,
                   "reg_loss": reg_sum / micro_batches, "trained_fraction": kept / seen,
                   "kept_trajectories": kept, "confident_trajectories": conf, "epoch": epoch}
        if conf:
            metrics["pseudo_label_accuracy"] = correct / conf
        self.last = metrics
        return dict(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"completed_steps": self.completed_steps, "seen": self.seen, "kept": self.kept,
                "confident": self.confident, "pseudo_correct": self.pseudo_correct,
                "epoch_counts": {str(k): v for k, v in self.epoch_counts.items()}, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.completed_steps = int(state["completed_steps"])
        self.seen, self.kept = int(state["seen"]), int(state["kept"])
        self.confident, self.pseudo_correct = int(state["confident"]), int(state["pseudo_correct"])
        self.epoch_counts = {int(k): list(v) for k, v in state["epoch_counts"].items()}
        self.last = dict(state["last"])

    def final_metrics(self, last_epoch: int) -> dict[str, Any]:
        """The last step's losses, plus selection figures over the final epoch and over the whole run."""
        seen, kept, conf, correct = self.epoch_counts.get(last_epoch, [0, 0, 0, 0])
        return {
            "cls_loss": self.last.get("cls_loss"), "reg_loss": self.last.get("reg_loss"),
            "loss": self.last.get("loss"),
            "trained_fraction": kept / seen if seen else None,
            "pseudo_label_accuracy": correct / conf if conf else None,
            "run_trained_fraction": self.kept / self.seen if self.seen else None,
            "run_pseudo_label_accuracy": self.pseudo_correct / self.confident if self.confident else None,
            "kept_trajectories": self.kept, "seen_trajectories": self.seen,
        }


class Checkpoints:
    """A run's checkpoints, `root/step_N`: accelerate's saved state, complete once CHECKPOINT_DONE is written
    (last), which also records the fingerprint of the data and settings it belongs to."""

    def __init__(self, root: Path, fingerprint: str, accelerator) -> None:
        self.root, self.fingerprint, self.accelerator = root, fingerprint, accelerator

    def _scan(self) -> list[tuple[int, Path, dict]]:
        """Every step_* dir with its step and completion record ({} and -1 when it has none: cut off mid-save)."""
        found = []
        for d in self.root.glob("step_*"):
            try:
                meta = json.loads((d / CHECKPOINT_DONE).read_text())
            except (OSError, ValueError):  # interrupted mid-save (or no marker at all)
                meta = {}
            found.append((int(meta.get("step", -1)), d, meta))
        return found

    def drop_stale(self) -> None:
        """Remove checkpoints of other data or settings (and unfinished ones of them): never resumed, only disk."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for _, d, meta in self._scan():
                if meta.get("fingerprint") != self.fingerprint:
                    log.warning("removing checkpoint %s: it belongs to other data or settings", d)
                    shutil.rmtree(d, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def latest(self) -> Path | None:
        """The latest complete checkpoint of this run's data and settings."""
        mine = [(step, d) for step, d, meta in self._scan() if meta.get("fingerprint") == self.fingerprint]
        return max(mine)[1] if mine else None

    def save(self, step: int) -> None:
        """Save the state after optimizer step `step`; keep the last KEEP_CHECKPOINTS complete ones."""
        d = self.root / f"step_{step}"
        self.accelerator.save_state(str(d))
        if self.accelerator.is_main_process:
            (d / CHECKPOINT_DONE).write_text(json.dumps({"step": step, "fingerprint": self.fingerprint}))
            complete = sorted((n, path) for n, path, meta in self._scan() if meta)
            for _, old in complete[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()


def save_final_model(accelerator, model, tokenizer, model_dir: Path, rebuild: Callable | None) -> None:
    """model.save_pretrained on the main process, gathering the weights first where they are sharded."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type.name != "FSDP":  # single process, DDP and ZeRO-2 keep whole parameters
        if accelerator.is_main_process:
            unwrapped.save_pretrained(model_dir, tokenizer=tokenizer)
        return
    # FSDP2 shards the parameters themselves: gather them (a collective: every rank) and write them from a
    # plain copy rebuilt on the main process the way this run built its model. Not exercised on CPU.
    full_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if rebuild is None:
            raise ActPRMError("under FSDP pass preset/init_from instead of a model object, so the final "
                              "model can be rebuilt for saving")
        plain = rebuild()
        plain.config = unwrapped.config
        plain.load_state_dict(full_state)
        plain.save_pretrained(model_dir, tokenizer=tokenizer)
