"""The oracle judge: reveals the gold label stored at ingest (the paper's pool-based simulation of
annotation, arXiv 2504.10559 Sec. 4), metered against the budget exactly as if it were paid."""

from __future__ import annotations

from actprm.judges import JUDGES
from actprm.judges.base import Judge, JudgeReply, JudgeRequest, JudgeUnavailable


@JUDGES.register("oracle")
class OracleJudge(Judge):
    name = "oracle"

    def __init__(self, *, model: str = "oracle:gold", prompt_version: str = "processbench",
                 template_path: str | None = None, max_completion_tokens: int | None = None, **_ignored):
        super().__init__(model=model, prompt_version=prompt_version, template_path=template_path,
                         max_completion_tokens=max_completion_tokens)

    async def ask(self, req: JudgeRequest, prompt: str) -> JudgeReply:
        if req.gold_first_error is None:
            raise JudgeUnavailable("no_gold_label", detail=f"trajectory {req.trajectory_id} has no gold label")
        # Answer in the same form a model judge would, so it goes through the same parser.
        return self.simulated_reply(prompt, self.answer_text(int(req.gold_first_error)))
