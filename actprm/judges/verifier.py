"""The programmatic judge of the built-in synthetic domain: redoes each step's arithmetic
(`actprm.synth.verify_first_error`). The embedded default: no network, no GPU, metered like a paid judge."""

from __future__ import annotations

from actprm.judges import JUDGES
from actprm.judges.base import Judge, JudgeFatalError, JudgeReply, JudgeRequest


@JUDGES.register("verifier")
class VerifierJudge(Judge):
    name = "verifier"

    def __init__(self, *, model: str = "verifier:synth", prompt_version: str = "processbench",
                 template_path: str | None = None, max_completion_tokens: int | None = None, **_ignored):
        super().__init__(model=model, prompt_version=prompt_version, template_path=template_path,
                         max_completion_tokens=max_completion_tokens)
        try:  # imported lazily: the synthetic domain is one of several
            from actprm.synth import verify_first_error
        except ImportError as exc:
            raise JudgeFatalError(f"the verifier judge needs actprm.synth.verify_first_error ({exc})") from None
        self._verify = verify_first_error

    async def ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        first_error = self._verify(req.question, list(req.steps))
        return self.simulated_reply(prompt, self.answer_text(int(first_error)))
