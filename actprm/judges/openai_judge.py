"""Any OpenAI-compatible chat endpoint: `vllm serve`, SGLang, or a hosted API.

Retries with exponential backoff and jitter on 429, 5xx and connections that never opened, honouring
`Retry-After`; fails fast on 401/403/404 (a wrong key or URL cannot be fixed by waiting). A request
that was sent and then timed out or was cut off, or that a gateway answered with 504 or 524, is not retried
here: it may have been billed, so the label task keeps its reservation as spent and re-asks under a
new one.
The API key lives only in the client's headers: it is registered for redaction and never appears in
a repr, an exception, a log line or anything stored.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from actprm.judges import JUDGES
from actprm.judges.base import (Judge, JudgeFatalError, JudgeReply, JudgeRequest, JudgeUnavailable, redact,
                                register_secret)
from actprm.judges.prompt import answer_schema, estimate_prompt_tokens, max_prompt_tokens

# Transport failures that happen before the request is on the wire: nothing can have been billed.
# Everything else that fails after sending (read timeout, a cut connection) may have been.
NOT_SENT = (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError, httpx.ProxyError, httpx.UnsupportedProtocol,
            httpx.LocalProtocolError)

# A gateway that timed out waiting for the model: 504, and Cloudflare's 524 (it hands the request to the origin,
# then gives up after ~100 s while the model goes on generating). Retrying these under the same reservation could
# buy several generations against one worst case. Other 5xx (502, 503, ...) are the proxy or server failing to take
# the request, so they are retried here.
GATEWAY_TIMEOUT = {504, 524}

FATAL_STATUS = {401: "unauthorized (check the API key, ACTPRM_JUDGE_API_KEY)",
                403: "forbidden (the API key may not use this model)",
                404: "not found (check the judge URL and model name)"}


def _retry_after_s(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@JUDGES.register("openai")
class OpenAIJudge(Judge):
    name = "openai"

    def __init__(self, *, url: str = "http://127.0.0.1:8000/v1", model: str = "Qwen/QwQ-32B",
                 api_key: str | None = None, api_key_secret_block: str | None = None,
                 prompt_version: str = "processbench", template_path: str | None = None,
                 max_completion_tokens: int | None = None, structured_output: bool = False,
                 timeout_s: float | None = None, max_retries: int = 6, base_delay: float = 1.0,
                 max_delay: float = 60.0, max_retry_after: float = 300.0, temperature: float | None = None,
                 top_p: float | None = None, concurrency: int = 16, seed: int | None = None):
        super().__init__(model=model, prompt_version=prompt_version, template_path=template_path,
                         max_completion_tokens=max_completion_tokens, structured_output=structured_output,
                         temperature=temperature, top_p=top_p, timeout_s=timeout_s)
        if api_key is None and api_key_secret_block:
            api_key = _load_secret_block(api_key_secret_block)
        register_secret(api_key)
        self.url = url.rstrip("/") + "/chat/completions"
        self.timeout_s = self.sampling.timeout_s
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.temperature, self.top_p = self.sampling.temperature, self.sampling.top_p
        self._rng = random.Random(seed)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = concurrency
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # One pooled client per labeling run (each run has its own event loop; aclose ends it), with
        # keep-alive connections sized to the run's concurrency.
        if self._client is None:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(headers=self._headers, timeout=httpx.Timeout(self.timeout_s),
                                             limits=limits)
        return self._client

    def _body(self, req: JudgeRequest, prompt: str) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_completion_tokens": self.max_completion_tokens}
        for knob in ("temperature", "top_p"):  # None: left to the server (some reasoning APIs refuse them)
            if getattr(self, knob) is not None:
                body[knob] = getattr(self, knob)
        if self.structured_output:
            # vLLM >= 0.12 name (guided_json was removed); other servers ignore unknown fields.
            body["structured_outputs"] = {"json": answer_schema(len(req.steps))}
        return body

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with "equal jitter": half fixed, half random, so retries spread out.
        cap = min(self.max_delay, self.base_delay * 2 ** attempt)
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        body = self._body(req, prompt)
        start = time.monotonic()
        reason, detail = "unknown", ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                # httpx's timeout bounds each read, not the answer: a server that trickles a byte now and then
                # would hold the request forever. This bounds the whole exchange.
                resp = await asyncio.wait_for(self._http().post(self.url, json=body), self.timeout_s)
            except TimeoutError:
                raise JudgeUnavailable("timeout", attempt + 1, f"no whole answer within {self.timeout_s:g}s",
                                       maybe_billed=True) from None
            except NOT_SENT as exc:  # never reached the model: free to retry here
                reason, detail = ("timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error",
                                  type(exc).__name__)
            except httpx.TimeoutException:
                # Sent, then no answer in time: the model may well have generated (and billed) it.
                raise JudgeUnavailable("timeout", attempt + 1, f"no answer within {self.timeout_s:g}s",
                                       maybe_billed=True) from None
            except httpx.TransportError as exc:  # cut after sending: same as a timeout
                raise JudgeUnavailable("connection_error", attempt + 1, type(exc).__name__, maybe_billed=True) from None
            else:
                code = resp.status_code
                if code == 200:
                    reply = _parse_completion(resp, prompt, attempt + 1, time.monotonic() - start,
                                              self.max_completion_tokens)
                    if reply is not None:
                        return reply
                    # A 200 is an answer the model produced: billed, though we cannot read its usage.
                    raise JudgeUnavailable("bad_response", attempt + 1, "answer is not a chat completion",
                                           maybe_billed=True)
                if code in FATAL_STATUS:
                    raise JudgeFatalError(redact(f"judge at {self.url} answered {code} {FATAL_STATUS[code]}"))
                if code in GATEWAY_TIMEOUT:  # the model got the request and may still generate (and bill) it
                    raise JudgeUnavailable(f"http_{code}", attempt + 1, "gateway timed out waiting for the model",
                                           maybe_billed=True)
                if code == 429 or code >= 500:
                    reason, detail = f"http_{code}", ""
                    wait = _retry_after_s(resp)
                else:  # 400/413/422: this request is rejected as sent (e.g. longer than the context)
                    raise JudgeUnavailable(f"http_{code}", attempt + 1, resp.text[:200])
            if attempt == self.max_retries:
                break
            delay = min(wait, self.max_retry_after) if wait is not None else self._backoff(attempt)
            await asyncio.sleep(delay)
        raise JudgeUnavailable(reason, self.max_retries + 1, detail)

    def reask_delay(self, reask: int) -> float:
        return self._backoff(reask)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def __repr__(self) -> str:
        return f"OpenAIJudge(url={self.url!r}, model={self.model!r}, prompt_version={self.prompt_version!r})"


def _parse_completion(resp: httpx.Response, prompt: str, attempts: int, latency_s: float,
                      max_completion_tokens: int) -> JudgeReply | None:
    """The reply in a chat completion, or None when the body is not one. Usage is what the budget is charged:
    a count that is missing is estimated, and one that cannot be a real count (negative, not an integer, absurdly
    large) is charged at the request's worst case, never trusted to lower the spend."""
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = _content_text(choice["message"].get("content"))
        # vLLM's and SGLang's reasoning parsers send the thinking apart (`reasoning_content`; `reasoning` in newer
        # vLLM and OpenRouter): then `content` is the final answer alone.
        reasoning = choice["message"].get("reasoning_content") or choice["message"].get("reasoning")
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens = _usage(usage.get("prompt_tokens"), estimate_prompt_tokens(prompt), max_prompt_tokens(prompt))
    reasoning = reasoning if isinstance(reasoning, str) else None
    completion_tokens = _usage(usage.get("completion_tokens"), (len(text or "") + len(reasoning or "")) // 4 + 1,
                               max_completion_tokens)
    return JudgeReply(text=text, finish_reason=choice.get("finish_reason"), prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, attempts=attempts, latency_s=latency_s, reasoning=reasoning)


def _content_text(content) -> str | None:
    """A message's text: a string, or the text parts of a content array (the form Mistral's API and others
    answer in); anything else is not an answer we can read."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "".join(parts) if parts else None
    raise TypeError(f"message content is a {type(content).__name__}")


# No request is billed 2^40 tokens: a count above it is garbage (and would not fit the ledger's BIGINT anyway).
_ABSURD_TOKENS = 1 << 40


def _usage(reported, estimate: int, worst: int) -> int:
    """A reported token count as the budget is charged: `estimate` when the server reports none; `worst` (the
    request's reservation) when the number cannot be a real count (a negative one would hand budget back); the
    count itself otherwise, even above `worst`: a server that bills past max_completion_tokens has billed it."""
    if reported is None:
        return estimate
    if isinstance(reported, bool) or not isinstance(reported, (int, float)) or reported != reported:  # NaN
        return worst
    if reported < 0 or reported > _ABSURD_TOKENS or reported != int(reported):
        return worst
    return int(reported)


def _load_secret_block(name: str) -> str:
    """The API key from a Prefect Secret block (imported lazily: Prefect is heavy)."""
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except ValueError as exc:
        raise JudgeFatalError(f"cannot load Prefect Secret block {name!r}: {type(exc).__name__}") from None
