"""The ensemble PRM: network, loss, step layout, presets, uncertainty. No Prefect/MLflow/DuckDB here."""

from models.layout import IGNORE_INDEX, STEP_SEPARATOR, EncodedTrajectory, StepBatch, StepBatcher, step_labels
from models.presets import PRESETS, build_prm
from models.prm import EnsemblePRM, PRMConfig, PRMOutput, check_compatible

__all__ = [
    "IGNORE_INDEX", "STEP_SEPARATOR", "EncodedTrajectory", "StepBatch", "StepBatcher", "step_labels",
    "PRESETS", "build_prm", "EnsemblePRM", "PRMConfig", "PRMOutput", "check_compatible",
]
