"""The one interface every judge backend implements, and the errors it may raise.

A judge answers one request at a time (`ask`), asynchronously; the label task owns everything
around it: budget reservations, parse re-asks, the circuit breaker and committing labels. Transport
retries (429/5xx/timeouts) belong to backends that have a transport (openai).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from actprm.errors import ActPRMError
from actprm.judges.prompt import PromptTemplate, estimate_prompt_tokens, load_template, max_prompt_tokens
from actprm.judges.sampling import Sampling, sampling_for

# Secrets handed to judges; `redact` removes them from anything we log, raise or store.
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for s in _SECRETS:
        text = text.replace(s, "***")
    return text


@dataclass(frozen=True)
class JudgeRequest:
    trajectory_id: str
    question: str
    steps: list[str]
    gold_first_error: int | None = None  # only the oracle looks at it
    error_kind: str | None = None


@dataclass(frozen=True)
class JudgeReply:
    """One answered request: the text to parse and the usage we are billed for."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int = 1          # transport attempts it took
    latency_s: float = 0.0
    reasoning: str | None = None  # the server's separate reasoning text (vLLM's reasoning_content), if it sent one

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class JudgeFatalError(ActPRMError):
    """The endpoint refuses us (401/403/404, bad config): retrying cannot help, the run stops."""


class JudgeUnavailable(Exception):
    """A request failed after its transport retries (or was rejected, e.g. 400); the trajectory is
    recorded as failed with `reason` and the run goes on (until the circuit breaker opens).

    `maybe_billed`: the request reached the judge and no usable answer came back (read timeout, a
    connection cut mid-answer, a 200 we cannot read). A hosted API bills such a request anyway, so
    its reservation is kept as spent and the label task, not the transport, decides on a re-ask,
    under a fresh reservation."""

    def __init__(self, reason: str, attempts: int = 1, detail: str = "", *, maybe_billed: bool = False):
        super().__init__(redact(f"{reason}: {detail}" if detail else reason))
        self.reason = reason
        self.attempts = attempts
        self.maybe_billed = maybe_billed


class Judge(abc.ABC):
    """A judge backend. `model` and `prompt_version` form, with the trajectory id, the label cache key."""

    name: str = "judge"

    def __init__(self, *, model: str, prompt_version: str = "processbench", template_path: str | None = None,
                 max_completion_tokens: int | None = None, structured_output: bool = False,
                 temperature: float | None = None, top_p: float | None = None, timeout_s: float | None = None):
        self.template: PromptTemplate = load_template(prompt_version, template_path)
        if structured_output and self.template.answer_rule != "boxed":
            raise ActPRMError(f"structured_output asks for a first-error index and works with the processbench "
                              f"prompts only, not {self.template.version}")
        self.model = model
        # Knobs left None take the model family's defaults (actprm.judges.sampling).
        self.sampling: Sampling = sampling_for(model, max_completion_tokens=max_completion_tokens,
                                               temperature=temperature, top_p=top_p, timeout_s=timeout_s)
        for knob, value in (("max_completion_tokens", self.sampling.max_completion_tokens),
                            ("timeout_s", self.sampling.timeout_s)):
            if not value > 0:  # NaN fails this too
                raise ActPRMError(f"judge {knob} must be positive (got {value})")
        self.max_completion_tokens = self.sampling.max_completion_tokens
        self.structured_output = structured_output

    @property
    def prompt_version(self) -> str:
        return self.template.version

    def prompt(self, req: JudgeRequest) -> str:
        return self.template.render(req.question, req.steps, structured=self.structured_output)

    def max_request_tokens(self, prompt: str) -> int:
        """What one request can cost at most: the reservation made before it is sent."""
        return max_prompt_tokens(prompt) + self.max_completion_tokens

    def answer_text(self, first_error: int) -> str:
        """How a judge following this template writes `first_error` (for judges that know the answer)."""
        if self.template.answer_rule == "conclusion":  # ActivePRM: analyses up to the wrong one, then a verdict
            last = first_error + 1 if first_error >= 0 else 0
            analyses = "".join(f"<analysis_{k}>checked</analysis_{k}>\n" for k in range(1, last + 1))
            return analyses + f"<conclusion>{'Incorrect' if first_error >= 0 else 'Correct'}</conclusion>"
        return f"\\boxed{{{int(first_error)}}}"

    def simulated_reply(self, prompt: str, answer: str) -> JudgeReply:
        """Usage for judges that are not billed per token (oracle, verifier), metered as if they were
        so that token and cost caps behave exactly as with a paid judge (the paper's pool-based simulation)."""
        return JudgeReply(answer, "stop", estimate_prompt_tokens(prompt), len(answer) // 4 + 1)

    @abc.abstractmethod
    async def ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        """Answer one request or raise JudgeUnavailable / JudgeFatalError."""

    def reask_delay(self, reask: int) -> float:
        """Seconds to wait before re-asking after a request that may have been billed but gave no
        answer (the judge is likely overloaded); judges without a transport need no wait."""
        return 0.0

    async def aclose(self) -> None:
        """Release connections; the label task calls it when the run ends."""

    def __repr__(self) -> str:  # never shows credentials
        return f"{type(self).__name__}(model={self.model!r}, prompt_version={self.prompt_version!r})"
