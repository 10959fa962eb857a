"""The project's own record format, TRL's stepwise supervision, and unlabeled pools."""

from actprm.formats.spec import InputFormat, View, register

# What actprm.synth writes: hard_labels are 1 up to the first error and 0 at it (ActPRM, Duan et al., 2025).
ACTPRM = register(InputFormat(
    name="actprm", signature=("question", "steps", "hard_labels"), priority=40,
    description="ActPRM: question, steps, hard_labels (0/1; first 0 = first error), optional first_error, error_kind, id",
    views=(View(question="question", steps="steps", labels="hard_labels", label_key="hard_labels",
                first_error_key="first_error", error_kind_key="error_kind", id_key="id"),),
))

# TRL stepwise supervision datasets: a prompt, the completions (steps) and one bool label per step.
TRL_STEPWISE = register(InputFormat(
    name="trl_stepwise", signature=("prompt", "completions", "labels"), priority=40,
    description="TRL stepwise supervision: prompt, completions, labels (bools per step)",
    views=(View(question="prompt", steps="completions", labels="bool_labels", label_key="labels", id_key="id"),),
))

# The main production case: trajectories to be scored and labeled by a judge.
UNLABELED = register(InputFormat(
    name="unlabeled", signature=("question", "steps"), priority=90,
    description="Unlabeled pool: question and steps only (optional id)",
    views=(View(question="question", steps="steps", id_key="id"),),
))
