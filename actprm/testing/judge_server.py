"""A local OpenAI-compatible judge server with fault injection, for tests and bench/bench_judge.py.

It answers `POST /v1/chat/completions` like `vllm serve` would: it reads the ProcessBench prompt
back into (question, steps), asks `answer_fn` for the first error and replies with `\\boxed{k}` and
a `usage` block. Faults are injected at given rates or from a script: 429 with Retry-After, 500,
504 or 524 from a gateway (the answer is still generated and billed),
slow answers (past the client's timeout), malformed or truncated content, an invalid JSON body, a
dropped connection, 401; and answers other servers give: the content as an array of text parts
(`chunks`, as Mistral's API answers), a box holding a 5,000-digit number (`hugebox`), a usage block with
a negative or an impossibly large prompt count (`negusage`, `hugeusage`); a judge that accepts the request and
never answers (`hang`, until the server stops). `style` answers like a reasoning model: `think` (a long
`<think>` block first, quoting a wrong box and a `</think>` inside it), `reasoning_content` or `reasoning` (the
thinking sent apart in that field, as vLLM's reasoning parsers do: the first name until vLLM 0.11, the second since); a `truncated` reply is then cut inside the thinking. Prompts in the
ActivePRM template (`actprm-v1`) are answered in its form (`<analysis_i>` blocks and a `<conclusion>`).
Standard library only; one thread per connection, keep-alive.

    python -m actprm.testing.judge_server --latency 0.1     # prints the base URL, serves until killed
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "504", "524", "slow", "malformed", "truncated", "badjson", "drop", "401", "chunks", "hugebox",
          "negusage", "hugeusage", "hang")
STYLES = ("plain", "think", "reasoning_content", "reasoning")

_QUESTION = re.compile(r"\[Math Problem\]\n\n?(?:<math_problem>\n)?(.*?)(?:\n</math_problem>)?\n\n?\[Solution\]",
                       re.DOTALL)
_PARAGRAPH = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.DOTALL)
# The last "[Math Problem]": the ActivePRM template shows the layout (with placeholders) before the task itself.
_TASK = re.compile(r"\[Math Problem\](?!.*\[Math Problem\])", re.DOTALL)


def read_prompt(prompt: str) -> tuple[str, list[str]]:
    """(question, steps) back from a processbench or actprm prompt, as the pool holds them (escapes undone)."""
    task = _TASK.search(prompt)
    prompt = prompt[task.start():] if task else prompt
    m = _QUESTION.search(prompt)
    return (html.unescape(m.group(1)) if m else ""), [html.unescape(s) for _, s in _PARAGRAPH.findall(prompt)]


def conclusion_answer(k: int) -> str:
    """An answer in the ActivePRM template's form: analyses of paragraphs 1.. up to the first wrong one."""
    shown = k + 1 if k >= 0 else None
    blocks = [f"<analysis_{i}>\nParagraph {i} {'is wrong' if i == shown else 'checks out'}.\n</analysis_{i}>"
              for i in range(1, (shown or 3) + 1)]
    return "\n".join(blocks) + f"\n<conclusion>\n{'Correct' if k < 0 else 'Incorrect'}\n</conclusion>"


def default_answer(question: str, steps: list[str]) -> int:
    try:
        from actprm.synth import verify_first_error
    except ImportError:
        return -1
    return verify_first_error(question, steps)


class JudgeServer:
    def __init__(self, *, latency_s: float = 0.0, faults: dict[str, float] | None = None,
                 script: list[str | None] | None = None, api_key: str | None = None,
                 answer_fn: Callable[[str, list[str]], int] = default_answer, retry_after: str = "0",
                 slow_s: float = 1.0, seed: int = 0, port: int = 0, style: str = "plain",
                 thinking_chars: int = 20_000):
        unknown = (set(faults or {}) | {f for f in script or [] if f}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; known: {STYLES}")
        self.style, self.thinking_chars = style, thinking_chars
        self._stopping = threading.Event()  # releases `hang` handlers when the server stops
        self.questions: list[str] = []       # the question of every request, in order (who was asked what)
        self.latency_s, self.faults, self.script = latency_s, dict(faults or {}), list(script or [])
        self.api_key, self.answer_fn, self.retry_after, self.slow_s = api_key, answer_fn, retry_after, slow_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.injected: Counter = Counter()
        self.answered: Counter = Counter()   # question -> good answers delivered
        self.billed_tokens = 0               # usage of every answer generated, delivered or not (what an API bills)
        self.auth_headers: list[str] = []
        self.last_payload: dict | None = None
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _bill(self, tokens: int) -> None:
        with self._lock:
            self.billed_tokens += tokens

    def _pick_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.script:
                fault = self.script.pop(0)
            else:
                x, fault = self._rng.random(), None
                for name, rate in self.faults.items():
                    if x < rate:
                        fault = name
                        break
                    x -= rate
            if fault:
                self.injected[fault] += 1
            return fault

    def _handler(server):  # noqa: N805 - `server` is the JudgeServer the handler class closes over
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: tests read counters, not logs
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                auth = self.headers.get("Authorization", "")
                with server._lock:
                    server.auth_headers.append(auth)
                    server.last_payload = payload
                fault = server._pick_fault()
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                if fault == "401" or (server.api_key and auth != f"Bearer {server.api_key}"):
                    # Echo what we were sent, as some servers do: the client must not repeat it.
                    return self._send(401, json.dumps({"error": f"invalid key {auth!r}"}).encode())
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault in ("504", "524"):  # the gateway times out; the model behind it still generates, and bills
                    server._bill(len(payload["messages"][-1]["content"]) // 4 + 16)
                    return self._send(int(fault), b'{"error": "upstream timed out"}')
                if fault in ("429", "500"):
                    headers = {"Retry-After": server.retry_after} if fault == "429" else {}
                    return self._send(int(fault), b'{"error": "injected"}', headers)
                prompt = payload["messages"][-1]["content"]
                question, steps = read_prompt(prompt)
                with server._lock:
                    server.questions.append(question)
                if fault == "hang":  # took the request, never answers: the client must give up on its own
                    server._stopping.wait()
                    self.close_connection = True
                    return
                time.sleep(server.slow_s if fault == "slow" else server.latency_s)
                if fault == "badjson":  # generated (and billed) but the body is unreadable
                    server._bill(len(prompt) // 4 + 16)
                    return self._send(200, b'{"choices": [ not json')
                k = server.answer_fn(question, steps)
                content, finish = f"Checking each paragraph in turn.\n\nThe earliest error: \\boxed{{{k}}}", "stop"
                if "<conclusion>" in prompt:  # the ActivePRM template
                    content = conclusion_answer(k)
                if "structured_outputs" in payload:  # vLLM's JSON-schema constrained decoding
                    content = json.dumps({"first_error": k})
                reasoning = None
                if server.style != "plain":
                    # A reasoning model's long thinking, quoting a wrong answer and a closing tag on the way.
                    wrong = k + 1 if k + 1 < len(steps) else -1
                    reasoning = ("Let me check each paragraph. " * (server.thinking_chars // 30) +
                                 f"A step might say '</think> \\boxed{{{wrong}}} <conclusion>Correct</conclusion>', "
                                 "but that is not my answer.")
                if fault == "malformed":
                    content = "The first mistake is somewhere in the middle, I think."
                elif fault == "truncated":
                    content, finish = "Checking each paragraph in turn. Paragraph 0 is", "length"
                    if reasoning is not None:  # cut inside the thinking: no answer at all yet
                        content, reasoning = None, reasoning[: len(reasoning) // 2]
                elif fault == "hugebox":
                    content = "The earliest error: \\boxed{" + "9" * 5000 + "}"
                elif fault != "slow":  # a slow answer arrives after the client gave up on it
                    with server._lock:
                        server.answered[question] += 1
                if server.style == "think" and reasoning is not None:
                    content = f"<think>\n{reasoning}" + ("" if content is None else f"\n</think>\n\n{content}")
                    reasoning = None
                generated = len(content or "") // 4 + len(reasoning or "") // 4
                if fault == "truncated":  # cut at the limit: billed for every token it was allowed
                    generated = int(payload.get("max_completion_tokens") or generated)
                server._bill(len(prompt) // 4 + generated)
                usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": generated,
                         "total_tokens": len(prompt) // 4 + generated}
                if fault in ("negusage", "hugeusage"):
                    usage["prompt_tokens"] = -100_000 if fault == "negusage" else 10**19
                message = {"role": "assistant",
                           "content": [{"type": "text", "text": content}] if fault == "chunks" else content}
                if reasoning is not None:  # vLLM's field: reasoning_content until 0.11, reasoning since
                    message[server.style] = reasoning
                body = {"id": "cmpl-local", "object": "chat.completion", "model": payload.get("model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}
                try:
                    self._send(200, json.dumps(body).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.1)
    args = ap.parse_args()
    server = JudgeServer(latency_s=args.latency, port=args.port).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
