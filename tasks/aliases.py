"""The registry's names: the registered model and its aliases.

Apart from tasks/champion.py so that readers (`actprm status`) can name them without importing MLflow.
"""

MODEL_NAME = "actprm-prm"
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
