"""Public PRM benchmarks and training sets."""

from actprm.formats.spec import InputFormat, View, register

# ProcessBench (Zheng et al., 2024, arXiv 2412.06559): `label` is the 0-based index of the earliest
# wrong step, -1 when every step is correct.
PROCESSBENCH = register(InputFormat(
    name="processbench", signature=("problem", "steps", "label"), priority=30,
    description="ProcessBench: problem, steps, label (0-based first wrong step or -1)",
    views=(View(question="problem", steps="steps", labels="first_error", label_key="label",
                id_key="id", error_kind_key="generator"),),
))

# PRMBench (Song et al., 2025, arXiv 2501.03124): each record holds a correct solution and a modified
# one with injected errors; `error_steps` is 1-based. The same original appears in several category
# files, so the content hash stores it once.
PRMBENCH = register(InputFormat(
    name="prmbench", signature=("original_process", "modified_process"), priority=10,
    description="PRMBench: original_process (all correct) and modified_process (error_steps, 1-based)",
    views=(
        View(question="original_question", steps="original_process", labels="all_correct",
             id_key="idx", id_suffix=":original"),
        View(question="modified_question", steps="modified_process", labels="error_steps",
             label_key="error_steps", error_kind_key="classification", id_key="idx", id_suffix=":modified"),
    ),
))

# Math-Shepherd (Wang et al., 2024, arXiv 2312.08935): `input` is the question followed by
# "Step 1: ... ки\nStep 2: ... ки"; `label` is the same text with each tag replaced by +/-.
MATH_SHEPHERD = register(InputFormat(
    name="math_shepherd", signature=("input", "label"), priority=20,
    description="Math-Shepherd: input with the step tag ки after each step, label with +/- in its place",
    views=(View(question="input", steps="input", labels="step_tags", label_key="label", id_key="id",
                error_kind_key="task"),),
))
