"""The MLflow pyfunc of a registered PRM; this file travels inside every logged version.

`tasks.register.log_model` ships it, with the `models/` package, through MLflow's `code_paths`, so
`mlflow.pyfunc.load_model("models:/actprm-prm@champion")` works wherever the model's pip requirements are installed,
without this project. It therefore imports only mlflow, pandas, torch and `models` (network, text layout and the
ActPRM uncertainty rule): never `actprm` or `tasks`.

One row per trajectory: `question` (string) and `steps` (list of strings) in; `step_scores` (mean over heads of
P(step correct)), `step_std` (the heads' unbiased std), `uncertain` (the ActPRM rule, paper Sec. 3.2) and
`truncated_steps` out. Scoring runs the score stage's forward loop (`models.inference.forward_batches`): same
layout, same length-bucketed batches, so the served scores equal the pipeline's.
"""

from __future__ import annotations

import json
import os

import mlflow.pyfunc
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

# Where the save_pretrained folder lives inside the logged pyfunc model.
PRM_ARTIFACT = "prm"
# Token budget of the served model; unset: the backbone's whole context (as `actprm predict`).
SERVE_MAX_LENGTH_ENV = "ACTPRM_SERVE_MAX_LENGTH"
# Trajectories per forward pass: the score stage's default.
BATCH_SIZE = 32

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec(Array("string"), "steps")]),
    outputs=Schema([ColSpec(Array("double"), "step_scores"), ColSpec(Array("double"), "step_std"),
                    ColSpec("boolean", "uncertain"), ColSpec("long", "truncated_steps")]),
)
# Shown in the MLflow UI and written as the model's serving_input_example.json (the body `mlflow models serve` takes).
INPUT_EXAMPLE = {"question": ["What is 12 + 30?"], "steps": [["12 + 30 = 42.", "The answer is 42."]]}


def _steps(value, row: int) -> list[str]:
    # A list (or the array pandas makes of one); a JSON-encoded list is still read, as versions logged before
    # the list schema took it.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if value is None or isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise MlflowException(f"row {row}: steps must be a list of strings", error_code=INVALID_PARAMETER_VALUE)
    steps = list(value)
    if not all(isinstance(s, str) for s in steps):
        raise MlflowException(f"row {row}: steps must be a list of strings", error_code=INVALID_PARAMETER_VALUE)
    return steps


class PRMPyfunc(mlflow.pyfunc.PythonModel):
    """Rows of (question, steps) -> step_scores, step_std, uncertain, truncated_steps (see the module docstring).

    Steps past the token budget (env ACTPRM_SERVE_MAX_LENGTH, default the backbone's whole context) have no score
    and are counted in truncated_steps; such a trajectory is uncertain."""

    # SIGNATURE is the schema; MLflow's type-hint validation (and its warning that `predict` has no type hints)
    # does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from models.hf_import import load_prm_folder
        from models.inference import inference_max_length

        self.model, self.tokenizer = load_prm_folder(context.artifacts[PRM_ARTIFACT],
                                                     device="cuda" if torch.cuda.is_available() else None)
        self.model.eval()
        self.max_length = inference_max_length(self.model, int(os.environ.get(SERVE_MAX_LENGTH_ENV) or 0) or None)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        for column in ("question", "steps"):
            if column not in model_input:
                raise MlflowException(f"input has no {column!r} column (expected: question, steps)",
                                      error_code=INVALID_PARAMETER_VALUE)
        questions = [str(q) for q in model_input["question"]]
        steps = [_steps(s, i) for i, s in enumerate(model_input["steps"])]
        rows = self.score(questions, steps)
        return pd.DataFrame({"step_scores": [r[0] for r in rows], "step_std": [r[1] for r in rows],
                             "uncertain": [r[2] for r in rows], "truncated_steps": [r[3] for r in rows]})

    def score(self, questions: list[str], steps: list[list[str]]) -> list[tuple[list[float], list[float], bool, int]]:
        """(step_scores, step_std, uncertain, truncated_steps) per trajectory, in input order."""
        from models import StepBatcher, check_compatible
        from models.inference import forward_batches
        from models.uncertainty import P_THRESHOLD, STD_THRESHOLD, step_stats, trajectory_uncertain

        check_compatible(self.model, self.tokenizer)
        batcher = StepBatcher(self.tokenizer, max_length=self.max_length)
        encoded = [batcher.tokenize(q, s) for q, s in zip(questions, steps)]
        rows: list = [None] * len(encoded)
        # The score stage's forward loop (same length-bucketed batches), so the served scores equal the pipeline's.
        for _, scored in forward_batches(self.model, batcher, encoded, batch_size=BATCH_SIZE):
            for i, p in scored:
                mu, sigma = step_stats(p)
                # The float32 values the score stage stores, and the flag decided on them.
                mu32, sigma32 = mu.float(), sigma.float()
                cut = int(encoded[i].truncated_steps)
                rows[i] = (mu32.tolist(), sigma32.tolist(),
                           bool(trajectory_uncertain(mu32.double(), sigma32.double(), P_THRESHOLD, STD_THRESHOLD,
                                                     unscored_steps=cut)), cut)
        return rows
