"""vLLM's offline `LLM` engine for batch labeling on a GPU node (optional: the `gpu` extra).

Shares prompt building and parsing with the openai judge; concurrent `ask` calls are gathered into
micro-batches (vLLM schedules a batch far more efficiently than one prompt at a time) and each batch
runs in a worker thread so the event loop keeps committing labels meanwhile.
"""

from __future__ import annotations

import asyncio
import time

from actprm.judges import JUDGES
from actprm.judges.base import Judge, JudgeFatalError, JudgeReply, JudgeRequest, JudgeUnavailable
from actprm.judges.prompt import answer_schema


@JUDGES.register("vllm")
class VLLMJudge(Judge):
    name = "vllm"

    def __init__(self, *, model: str = "Qwen/QwQ-32B", prompt_version: str = "processbench",
                 template_path: str | None = None, max_completion_tokens: int | None = None,
                 structured_output: bool = False, temperature: float | None = None, top_p: float | None = None,
                 batch_size: int = 64, batch_wait_s: float = 0.05, **engine_kwargs):
        super().__init__(model=model, prompt_version=prompt_version, template_path=template_path,
                         max_completion_tokens=max_completion_tokens, structured_output=structured_output,
                         temperature=temperature, top_p=top_p)
        try:
            import vllm
        except ImportError:
            raise JudgeFatalError(
                "the vllm judge needs vLLM, which is not installed: on a GPU node run "
                "`pip install 'actprm[gpu]'`, or use the openai judge against `vllm serve`"
            ) from None
        self._vllm = vllm
        self._llm = vllm.LLM(model=model, **engine_kwargs)
        self.temperature, self.top_p = self.sampling.temperature, self.sampling.top_p
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _sampling(self, n_steps: int):
        kw = {"max_tokens": self.max_completion_tokens}
        kw.update({k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p)) if v is not None})
        if self.structured_output:
            try:
                from vllm.sampling_params import StructuredOutputsParams
            except ImportError:
                raise JudgeFatalError(
                    f"this vLLM ({getattr(self._vllm, '__version__', '?')}) has no StructuredOutputsParams "
                    "(vLLM >= 0.12): upgrade it or set judge.structured_output to false") from None
            kw["structured_outputs"] = StructuredOutputsParams(json=answer_schema(n_steps))
        return self._vllm.SamplingParams(**kw)

    async def ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batches())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((req, prompt, fut, time.monotonic()))
        return await fut

    async def _batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            # Every failure lands on the batch's futures: an exception escaping this loop would end the worker
            # task silently and leave every `ask` waiting forever.
            try:
                messages = [[{"role": "user", "content": p}] for _, p, _, _ in batch]
                params = [self._sampling(len(r.steps)) for r, _, _, _ in batch]
                outputs = await asyncio.to_thread(self._llm.chat, messages, params, use_tqdm=False)
                now = time.monotonic()
                replies = [JudgeReply(out.outputs[0].text, out.outputs[0].finish_reason,
                                      len(out.prompt_token_ids or []), len(out.outputs[0].token_ids or []),
                                      latency_s=now - t0) for (_, _, _, t0), out in zip(batch, outputs, strict=True)]
            except JudgeFatalError as exc:  # a configuration vLLM cannot run: the run stops with this line
                _fail(batch, exc)
                continue
            except Exception as exc:  # one bad batch fails its requests, not the run
                _fail(batch, JudgeUnavailable("engine_error", detail=type(exc).__name__))
                continue
            for (_, _, fut, _), reply in zip(batch, replies):
                if not fut.done():
                    fut.set_result(reply)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


def _fail(batch: list, exc: Exception) -> None:
    for _, _, fut, _ in batch:
        if not fut.done():
            fut.set_exception(exc)
