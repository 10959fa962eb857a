"""Judge backends, registered by decorator: `@JUDGES.register("name")` on a `Judge` subclass.

    judge = build_judge("openai", url=..., model=..., api_key=...)

Backends: verifier (default, synthetic domain), oracle (gold labels, simulated cost), openai (any
OpenAI-compatible endpoint), vllm (offline engine on a GPU node; needs the `gpu` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from actprm.registry import Registry

if TYPE_CHECKING:
    from actprm.judges.base import Judge

JUDGES: Registry = Registry("judge")

# Importing a backend module registers it; vllm_judge imports vLLM only when constructed.
for _module in ("verifier", "oracle", "openai_judge", "vllm_judge"):
    importlib.import_module(f"actprm.judges.{_module}")


def build_judge(name: str, **kwargs) -> Judge:
    """Construct a registered judge; kwargs a backend does not take are a user error."""
    from actprm.errors import ActPRMError

    cls = JUDGES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # an option the backend does not have
        raise ActPRMError(f"judge {name!r}: {exc}") from None


def judge_kwargs_from_settings(settings, *, base_delay: float = 1.0) -> dict:
    """Map `Settings.judge` onto constructor arguments (the CLI and flows call this)."""
    j = settings.judge
    kw = {"prompt_version": j.prompt_version, "max_completion_tokens": j.max_completion_tokens}
    if j.backend in ("openai", "vllm"):
        kw.update(model=j.model, structured_output=j.structured_output, temperature=j.temperature, top_p=j.top_p)
    if j.backend == "openai":
        kw.update(url=j.url, api_key=settings.judge_api_key(), timeout_s=j.timeout_s, max_retries=j.max_retries,
                  concurrency=j.concurrency, base_delay=base_delay)
    return kw


def judge_identity(settings) -> tuple[str, str]:
    """The (judge model, prompt version) labels are bought and cached under: selection skips what it has
    labeled, and training learns from its labels only.

    A served judge (openai, vllm) is named by the settings, so it is not built here: building the vllm judge
    loads the model onto the GPU. A programmatic judge has no served model: it is built (cheaply) for its name.
    """
    from actprm.judges.prompt import resolve_version

    kwargs = judge_kwargs_from_settings(settings)
    model = kwargs.get("model") or build_judge(settings.judge.backend, **kwargs).model
    return model, resolve_version(settings.judge.prompt_version)  # "processbench" is stored as its current version
