"""ActPRM: active learning for process reward models, as an MLOps pipeline."""

__version__ = "0.1.0"
