"""Step layout of a trajectory, after Qwen2.5-Math-PRM.

A trajectory is laid out as ``<prefix(question)> step_1 <extra_0> step_2 <extra_0> ... <suffix>``: every
step is followed by the step separator token, and the PRM reads its step score from the hidden state
at that separator. Step labels (the ActPRM / ProcessBench convention) sit only on separators:
1 before the first error, 0 at it, and nothing (-100, ignored) after it.

The prefix is the tokenizer's chat template (system + user question + assistant turn opener) when it
has one, as Qwen2.5-Math-PRM does; otherwise ``[CLS] question [SEP]`` for BERT-like tokenizers (suffix
``[SEP]``, BERT's pair layout), or ``<bos> question`` for decoders without a template.

Truncation to ``max_length`` happens at step boundaries: the steps that do not fit are cut and get no
score (``truncated_steps``). The first step is always kept: when even it does not fit, the question
is cut from the left (its end usually holds the actual ask) and then the step itself from the right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.errors import ModelError

STEP_SEPARATOR = "<extra_0>"
IGNORE_INDEX = -100
# Qwen2.5-Math-PRM's system prompt, used only with tokenizers that have a chat template.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def step_labels(num_steps: int, first_error: int | None) -> list[int]:
    """Per-step labels: 1 before the first error, 0 at it, IGNORE_INDEX after it (-1 = all correct)."""
    if first_error is None:
        return [IGNORE_INDEX] * num_steps
    if first_error < 0 or first_error >= num_steps:  # -1, or an error past the last step: all correct
        return [1] * num_steps
    return [1] * first_error + [0] + [IGNORE_INDEX] * (num_steps - first_error - 1)


def ensure_separator(tokenizer, backbone) -> int:
    """Add STEP_SEPARATOR to the vocabulary once and give it a sensible embedding; return its id.

    The new row is a copy of the embedding of "\\n\\n" (the step delimiter the backbone saw in
    pre-training) when the tokenizer has it as a single token; else the mean of the tokens of "\\n";
    else the tokenizer's separator token ([SEP] for BERT/MiniLM, whose WordPiece drops newlines);
    else the mean embedding. Embeddings grow only when the new id does not fit (Qwen2.5 already
    pads its embedding matrix beyond len(tokenizer), so it must never be shrunk).
    """
    existing = _token_id(tokenizer, STEP_SEPARATOR)
    if existing is not None:
        return existing
    # Keep the tokenizer's other special tokens (Qwen's <|im_start|> etc.) registered as special.
    tokenizer.add_special_tokens({"additional_special_tokens": [STEP_SEPARATOR]}, replace_extra_special_tokens=False)
    sep_id = _token_id(tokenizer, STEP_SEPARATOR)
    assert sep_id is not None
    emb = backbone.get_input_embeddings()
    if sep_id >= emb.weight.shape[0]:
        backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = backbone.get_input_embeddings()
    with torch.no_grad():
        emb.weight[sep_id] = _newline_embedding(tokenizer, emb.weight[:sep_id])
    return sep_id


def _token_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return int(tid)


def _newline_embedding(tokenizer, table: torch.Tensor) -> torch.Tensor:
    for text in ("\n\n", "\n"):
        ids = [i for i in tokenizer.encode(text, add_special_tokens=False) if i != tokenizer.unk_token_id]
        if ids and (text == "\n" or len(ids) == 1):
            return table[ids].float().mean(0).to(table.dtype)
    if tokenizer.sep_token_id is not None and tokenizer.sep_token_id < table.shape[0]:
        return table[tokenizer.sep_token_id].clone()
    return table.float().mean(0).to(table.dtype)


def _clean(text: str) -> str:
    # A literal separator inside the text would create a fake step: drop it.
    return text.replace(STEP_SEPARATOR, " ")


@dataclass
class EncodedTrajectory:
    """One trajectory's token ids (unpadded), with labels on separator positions."""

    input_ids: list[int]
    labels: list[int]
    scored_steps: int
    truncated_steps: int


@dataclass
class StepBatch:
    """A padded batch. ``labels`` is (B, T) with IGNORE_INDEX off labeled separators, or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    scored_steps: list[int]
    truncated_steps: list[int]
    lengths: list[int] = field(default_factory=list)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device) -> StepBatch:
        return StepBatch(
            self.input_ids.to(device), self.attention_mask.to(device),
            None if self.labels is None else self.labels.to(device),
            self.scored_steps, self.truncated_steps, self.lengths,
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def prefix_end_token(tokenizer) -> int | None:
    """The token that closes the question in the layout, or None: BERT-like encoders without a chat template
    get their pair layout, [CLS] question [SEP] steps [SEP], where the middle [SEP] tells where the first step
    begins (the step_mean readout needs it) and is what such encoders were trained on."""
    if getattr(tokenizer, "chat_template", None) or tokenizer.cls_token_id is None:
        return None
    return tokenizer.sep_token_id


class StepBatcher:
    """Tokenizes (question, steps) into the separator layout and pads batches."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer = tokenizer
        self.max_length = max_length
        sep = _token_id(tokenizer, STEP_SEPARATOR)
        if sep is None:
            raise ModelError(f"tokenizer has no step separator {STEP_SEPARATOR!r}; build the model with build_prm()")
        self.separator_id = sep
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._chat = bool(getattr(tokenizer, "chat_template", None))
        prefix_end = prefix_end_token(tokenizer)
        self._mid: list[int] = [] if prefix_end is None else [prefix_end]
        if tokenizer.cls_token_id is not None:
            self._head, self._tail = [tokenizer.cls_token_id], ([tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else [])
        elif tokenizer.bos_token_id is not None and not self._chat:
            self._head, self._tail = [tokenizer.bos_token_id], []
        else:
            self._head, self._tail = [], []
        if max_length < len(self._head) + len(self._mid) + len(self._tail) + 2:
            raise ModelError(f"max_length={max_length} is too small to hold one step")

    def _question_text(self, question: str) -> str:
        if self._chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": _clean(question)}],
                tokenize=False, add_generation_prompt=True,
            )
        return _clean(question)

    def tokenize(self, question: str, steps: list[str], first_error: int | None = None) -> EncodedTrajectory:
        # One batched call into the Rust tokenizer for the question and all steps.
        pieces = self.tokenizer([self._question_text(question)] + [_clean(s) for s in steps],
                                add_special_tokens=False)["input_ids"]
        q_ids, step_ids = list(pieces[0]), [list(p) for p in pieces[1:]]
        room = self.max_length - len(self._head) - len(self._mid) - len(self._tail)
        ids = list(self._head) + q_ids + self._mid
        if step_ids and len(q_ids) + len(step_ids[0]) + 1 > room:
            # Keep the first step: cut the question from the left, then the step from the right.
            keep_q = max(0, room - len(step_ids[0]) - 1)
            ids = list(self._head) + (q_ids[len(q_ids) - keep_q:] if keep_q else []) + self._mid
            step_ids[0] = step_ids[0][: room - keep_q - 1]
        step_lab = step_labels(len(steps), first_error)
        labels = [IGNORE_INDEX] * len(ids)
        kept = 0
        for s_ids, lab in zip(step_ids, step_lab):
            if len(ids) + len(s_ids) + 1 + len(self._tail) > self.max_length:
                break
            ids += s_ids + [self.separator_id]
            labels += [IGNORE_INDEX] * len(s_ids) + [lab]
            kept += 1
        ids += self._tail
        labels += [IGNORE_INDEX] * len(self._tail)
        return EncodedTrajectory(ids, labels, kept, len(steps) - kept)

    def collate(self, encoded: list[EncodedTrajectory], with_labels: bool = True) -> StepBatch:
        width = max(len(e.input_ids) for e in encoded)
        n = len(encoded)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(encoded):  # right padding: positions of real tokens match unpadded runs
            input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
            attention[i, : len(e.input_ids)] = 1
            labels[i, : len(e.labels)] = torch.tensor(e.labels, dtype=torch.long)
        return StepBatch(
            input_ids, attention, labels if with_labels else None,
            [e.scored_steps for e in encoded], [e.truncated_steps for e in encoded],
            [len(e.input_ids) for e in encoded],
        )

    def encode(self, questions: list[str], steps_lists: list[list[str]],
               first_errors: list[int | None] | None = None) -> StepBatch:
        """Tokenize and pad; ``first_errors`` (0-based, -1 = all correct, None = unlabeled) adds labels."""
        fes = first_errors if first_errors is not None else [None] * len(questions)
        encoded = [self.tokenize(q, s, fe) for q, s, fe in zip(questions, steps_lists, fes)]
        return self.collate(encoded, with_labels=first_errors is not None)
