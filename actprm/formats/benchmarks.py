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
# one with injected errors; `error_steps` is 1-based (see LabelKind: out-of-range numbers are ignored and an empty
# list, as in every `multi_solutions` line, means all correct, as mr_eval scores them).
# Every category file repeats the problem's original solution, reworded or renumbered ("Step 3." prefixes);
# mr_eval takes the original, its one all-correct "correct_<idx>" sample per problem, from the `redundency` line
# only, and so does the original view here. Steps lose their numbering prefix as mr_eval's
# `remove_step_prefix` cuts it before scoring, except that a bare number ("k." not followed by a space) is kept:
# the official pattern cuts "7.8 minutes" to "8 minutes" and a step "64." to nothing (in the 3,203-record train
# sample 21 steps start with a decimal and 8 lines hold such number steps).
PRMBENCH_STEP_PREFIX = r"^(?:Step\s*\d+\.\s*|\d+\.\s+)"
PRMBENCH_ORIGINALS_FROM = "redundency"
PRMBENCH = register(InputFormat(
    name="prmbench", signature=("original_process", "modified_process"), priority=10,
    description="PRMBench: modified_process (error_steps, 1-based), and original_process (all correct) of the "
                "redundency lines",
    views=(
        View(question="original_question", steps="original_process", labels="all_correct",
             id_key="idx", id_suffix=":original", step_prefix=PRMBENCH_STEP_PREFIX,
             only_if=("classification", PRMBENCH_ORIGINALS_FROM)),
        View(question="modified_question", steps="modified_process", labels="error_steps",
             label_key="error_steps", error_kind_key="classification", id_key="idx", id_suffix=":modified",
             step_prefix=PRMBENCH_STEP_PREFIX),
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

# Raw PRM800K (Lightman et al., 2023, "Let's Verify Step by Step"; github.com/openai/prm800k): human ratings of
# each step's candidate completions. Which completion each step follows, and what counts as the first error, is
# `actprm.store.parsing._prm800k_sql` (documented in docs/BENCHMARKS.md). Its TRL conversion loads as trl_stepwise.
PRM800K = register(InputFormat(
    name="prm800k", signature=("question", "label"), priority=25,
    description="PRM800K raw: question.problem, label.steps[].completions[].rating, chosen_completion, "
                "human_completion (first followed step rated -1 = first error; neutral 0 is not an error)",
    views=(View(question="question", steps="label", labels="prm800k", label_key="label"),),
))
