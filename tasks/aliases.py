"""The registry's names: the registered model and its aliases.

Apart from tasks/champion.py so that readers (`actprm status`) can name them without importing MLflow.
"""

from actprm.config import RegistrySettings

MODEL_NAME = RegistrySettings.model_fields["model_name"].default  # the default lives in the settings
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
