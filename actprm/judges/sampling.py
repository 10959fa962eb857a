"""Sampling defaults per judge model family: what a judge asks for when the settings leave a knob unset (None).

A reasoning model thinks for thousands of tokens before its answer; cut at 4,096 tokens it answers nothing,
and a truncated answer is paid for and gives no label. The released ActivePRM code samples its QwQ judge at
temperature 0.5, top_p 0.95 with 8,192-12,000 new tokens (sail-sg/ActivePRM, utils/processor.py,
LLMasJudgerProcessor); the model cards of QwQ, DeepSeek-R1 and Qwen3 (thinking) warn against greedy decoding
(endless repetition) and suggest 0.6 / 0.95. An instruction model answers a critique in well under 4,096
tokens and is best read greedily (ProcessBench's protocol).

`timeout_s` follows: a non-streamed answer arrives whole, so the limit must cover the longest generation
(12,288 tokens at ~30 tokens/s per sequence under load is ~400 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    max_completion_tokens: int
    temperature: float | None   # None: not sent (the server's own default)
    top_p: float | None
    timeout_s: float


REASONING = Sampling(max_completion_tokens=12_288, temperature=0.5, top_p=0.95, timeout_s=600.0)
INSTRUCT = Sampling(max_completion_tokens=4_096, temperature=0.0, top_p=None, timeout_s=120.0)

# Model names (as sent to the endpoint, matched case-insensitively anywhere in the name) that think before they
# answer. Anything else gets the instruction-model defaults; set the knobs explicitly for a family not listed.
_REASONING_NAMES = re.compile(r"qwq|deepseek-r1|(?:^|[-_/])r1(?:$|[-_/])|qwen3(?!.*instruct)|gpt-oss|skywork-or1|openthinker|"
                              r"reasoning|thinking|magistral|marco-o1|sky-t1|light-r1|acereason", re.IGNORECASE)

FAMILIES = {"reasoning": REASONING, "instruct": INSTRUCT}


def family_of(model: str) -> str:
    return "reasoning" if _REASONING_NAMES.search(model or "") else "instruct"


def sampling_for(model: str, *, max_completion_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, timeout_s: float | None = None) -> Sampling:
    """The family's defaults for `model`, with every knob that is given (not None) taking its place."""
    base = FAMILIES[family_of(model)]
    return Sampling(max_completion_tokens=base.max_completion_tokens if max_completion_tokens is None
                    else max_completion_tokens,
                    temperature=base.temperature if temperature is None else temperature,
                    top_p=base.top_p if top_p is None else top_p,
                    timeout_s=base.timeout_s if timeout_s is None else timeout_s)
