"""The model's own user-facing error: `models/` imports nothing of the pipeline (not even `actprm.errors`), so a
bad preset, folder, tokenizer or setting raises this. Its message is one line; the CLI prints it as `error: ...`
and exits 1, as it does for `actprm.errors.ActPRMError`."""


class ModelError(ValueError):
    """A problem with a model, its folder, its tokenizer or its settings that the user can act on."""
