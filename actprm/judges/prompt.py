"""The critique prompt sent to a judge and the strict parser of its answer.

The default template follows ProcessBench (Zheng et al., 2024, arXiv 2412.06559): the solution's
steps are shown as paragraphs tagged `<paragraph_i>` and indexed from 0, and the judge returns
the index of the earliest wrong paragraph, or -1 when every paragraph is correct, in `\\boxed{}`.
Templates are versioned: the version is part of the label cache key, so changing the wording
never reuses labels bought with another prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from actprm.errors import ActPRMError

PROBLEM = "{problem}"
TAGGED_RESPONSE = "{tagged_response}"

# Placeholders are replaced with str.replace, not str.format, so `\boxed{}` needs no escaping.
TEMPLATES: dict[str, str] = {
    "processbench-v1": (
        "The following is a math problem and a solution (split into paragraphs, enclosed with tags and "
        "indexed from 0):\n\n"
        "[Math Problem]\n\n{problem}\n\n"
        "[Solution]\n\n{tagged_response}\n\n"
        "Your task is to review and critique the solution paragraph by paragraph. Once you identify an "
        "error in a paragraph, return the index of the paragraph where the earliest error occurs. "
        "Otherwise, return the index of -1 (which typically denotes \"not found\").\n\n"
        "Please put your final answer (i.e., the index) in \\boxed{}."
    ),
}

STRUCTURED_SUFFIX = '\n\nAnswer with a JSON object {"first_error": <index>}.'

# Completion text kept per label for audit (raw_answer column).
RAW_ANSWER_CHARS = 2_000


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    text: str

    def render(self, question: str, steps: list[str], *, structured: bool = False) -> str:
        tagged = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))
        out = self.text.replace(PROBLEM, question).replace(TAGGED_RESPONSE, tagged)
        return out + STRUCTURED_SUFFIX if structured else out


def load_template(version: str = "processbench-v1", path: str | Path | None = None) -> PromptTemplate:
    """A built-in template by version, or a custom one from a text file with {problem} and
    {tagged_response} placeholders (its version is `custom-<hash>` so its labels are cached apart)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ActPRMError(f"prompt template file not found: {p}")
        text = p.read_text()
        for placeholder in (PROBLEM, TAGGED_RESPONSE):
            if placeholder not in text:
                raise ActPRMError(f"prompt template {p} lacks the placeholder {placeholder}")
        return PromptTemplate(f"custom-{hashlib.sha256(text.encode()).hexdigest()[:12]}", text)
    if version not in TEMPLATES:
        raise ActPRMError(f"unknown prompt version {version!r}; choose one of: {', '.join(sorted(TEMPLATES))}")
    return PromptTemplate(version, TEMPLATES[version])


def answer_schema(n_steps: int) -> dict:
    """JSON schema for structured output: the first-error index, range-checked by the decoder too."""
    return {
        "type": "object",
        "properties": {"first_error": {"type": "integer", "minimum": -1, "maximum": max(n_steps - 1, -1)}},
        "required": ["first_error"],
        "additionalProperties": False,
    }


def estimate_prompt_tokens(prompt: str) -> int:
    """A realistic token count (~4 characters per token for BPE on English/math text) plus the chat
    template's few tokens; used to meter judges that report no usage (oracle, verifier)."""
    return len(prompt) // 4 + 16


def max_prompt_tokens(prompt: str) -> int:
    """An upper bound on prompt tokens: byte-level BPE (Qwen, Llama 3, GPT) never emits more tokens
    than UTF-8 bytes, plus a margin for the chat template. Budget reservations use this bound so that
    actual usage can never exceed what was reserved."""
    return len(prompt.encode()) + 64


@dataclass(frozen=True)
class ParsedAnswer:
    first_error: int | None
    reason: str | None = None  # why it could not be parsed; None when parsed

    @property
    def ok(self) -> bool:
        return self.reason is None


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_INT = re.compile(r"[+-]?\d+")


def parse_answer(text: str | None, n_steps: int, *, finish_reason: str | None = "stop",
                 structured: bool = False) -> ParsedAnswer:
    """Strict: exactly one `\\boxed{int}` (outside `<think>` reasoning) with -1 <= int <= n_steps - 1.
    Anything else is unparseable, with a reason; a truncated answer (finish_reason=length) is never
    trusted even if it happens to contain a box."""
    if finish_reason == "length":
        return ParsedAnswer(None, "truncated")
    if text is None or not text.strip():
        return ParsedAnswer(None, "empty")
    if structured:
        try:
            value = json.loads(text)["first_error"]
        except (ValueError, KeyError, TypeError):
            return ParsedAnswer(None, "bad_json")
        if not isinstance(value, int) or isinstance(value, bool):
            return ParsedAnswer(None, "not_integer")
        return _in_range(value, n_steps)
    if "<think>" in text and "</think>" not in text:
        return ParsedAnswer(None, "unfinished_reasoning")
    final = _THINK.sub("", text)
    boxes = _BOXED.findall(final)
    if not boxes:
        return ParsedAnswer(None, "no_boxed")
    if len(boxes) > 1:
        return ParsedAnswer(None, "multiple_boxed")
    inner = boxes[0].strip()
    if not _INT.fullmatch(inner):
        return ParsedAnswer(None, "not_integer")
    if len(inner.lstrip("+-")) > 9:  # no trajectory has a billion steps; int() refuses over 4,300 digits
        return ParsedAnswer(None, "out_of_range")
    return _in_range(int(inner), n_steps)


def _in_range(value: int, n_steps: int) -> ParsedAnswer:
    if not -1 <= value <= n_steps - 1:
        return ParsedAnswer(None, "out_of_range")
    return ParsedAnswer(value)


def step_labels(first_error: int, n_steps: int) -> list[int]:
    """ProcessBench/PRM800K convention: 1 before the first error, 0 at it, none (not returned) after it;
    -1 means every step is correct."""
    if first_error < 0:
        return [1] * n_steps
    return [1] * first_error + [0]
