"""What an input format is: one or more *views* of a record, each giving one trajectory."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from actprm.errors import ActPRMError
from actprm.registry import Registry

# How a view encodes its gold labels (the store knows the SQL for each):
#   none         unlabeled pool
#   first_error  an integer key: 0-based first wrong step, -1 = all correct (ProcessBench `label`)
#   hard_labels  a list of 0/1 per step; the first 0 is the first error (ActPRM, optional `first_error` key)
#   bool_labels  a list of true/false per step (TRL stepwise supervision)
#   error_steps  a list of 1-based wrong steps; first error = min - 1 (PRMBench `error_steps`). As in PRMBench's
#                mr_eval, numbers outside 1..len(steps) are ignored (it only visits steps that exist) and an empty
#                list means every step is correct (`multi_solutions`)
#   all_correct  every step is correct (PRMBench `original_process`)
#   step_tags    Math-Shepherd: steps end with a tag in `steps`, replaced by +/- in `label_key`
#   prm800k      raw PRM800K: `question` holds {problem}, `label_key` holds {steps: [{completions, chosen_completion,
#                human_completion}]}; the followed completions are the steps, their ratings the labels
LabelKind = Literal["none", "first_error", "hard_labels", "bool_labels", "error_steps", "all_correct", "step_tags",
                    "prm800k"]


@dataclass(frozen=True)
class View:
    """One trajectory read from a record."""

    question: str
    steps: str
    labels: LabelKind = "none"
    label_key: str | None = None
    first_error_key: str | None = None  # optional explicit first error, checked against the labels
    error_kind_key: str | None = None
    id_key: str | None = None
    id_suffix: str = ""                 # appended to the source id (PRMBench ':original' / ':modified')
    step_tag: str = "ки"                # step_tags only
    # A regex cut from the start of every step (after stripping whitespace), e.g. PRMBench's "Step 3." numbering,
    # which differs between files that hold the same solution. DuckDB's RE2 and Python's `re` read it alike.
    step_prefix: str | None = None
    # (key, value): the view exists only on records whose string field `key` equals `value`
    only_if: tuple[str, str] | None = None

    def clean_step(self, step: str) -> str:
        """Python twin of the SQL step cleaning: what the store keeps of a step."""
        if self.step_prefix is None:
            return step
        return re.sub(self.step_prefix, "", step.strip(" \t\r\n"), count=1, flags=re.IGNORECASE)

    def keys(self) -> list[str]:
        ks = [self.question, self.steps, self.label_key, self.first_error_key, self.error_kind_key, self.id_key,
              self.only_if[0] if self.only_if else None]
        return [k for k in ks if k]


@dataclass(frozen=True)
class InputFormat:
    name: str
    signature: tuple[str, ...]  # keys whose presence identifies the format
    views: tuple[View, ...]
    priority: int               # detection order: lower is tried first (most specific signatures first)
    description: str = ""

    def keys(self) -> list[str]:
        return sorted({k for v in self.views for k in v.keys()})


FORMATS: Registry[InputFormat] = Registry("input format")


def register(fmt: InputFormat) -> InputFormat:
    # Every line is accounted for by the trajectories it gives: one view must exist on every record.
    if all(v.only_if for v in fmt.views):
        raise ValueError(f"input format {fmt.name!r}: at least one view must not depend on only_if")
    return FORMATS.register(fmt.name)(fmt)


def detect_format(keys: Iterable[str]) -> InputFormat:
    """The most specific registered format whose signature keys are all present."""
    present = set(keys)
    candidates = sorted((FORMATS.get(n) for n in FORMATS.names()), key=lambda f: (f.priority, f.name))
    for fmt in candidates:
        if set(fmt.signature) <= present:
            return fmt
    shown = ", ".join(sorted(present)[:12]) or "none"
    raise ActPRMError(f"cannot detect the input format from record keys ({shown}); pass format= one of: "
                      f"{', '.join(FORMATS.names())}")
