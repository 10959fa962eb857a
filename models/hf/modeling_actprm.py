"""ActPRM ensemble process reward model (Duan et al., 2025, arXiv 2504.10559), standalone.

This file travels inside an exported model folder and is loaded by `transformers` with
``trust_remote_code=True``; it imports only torch and transformers. Usage::

    from transformers import AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    [result] = model.score_steps(tokenizer, ["What is 2+3?"], [["2+3 = 5.", "The answer is 5."]])
    result["step_scores"], result["step_std"], result["uncertain"]

A shared backbone feeds E MLP heads (hidden -> K -> K -> 1, ReLU) read at the step separator ``<extra_0>``
that closes every step (the Qwen2.5-Math-PRM layout). A step's score is the mean over heads of P(step correct),
its uncertainty the heads' unbiased std (torch.std, as the official ActPRM trainer; 0 for one head). The heads run in float32 whatever the backbone's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

HEAD_PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3")


class ActPRMConfig(PretrainedConfig):
    model_type = "actprm_ensemble"

    def __init__(self, backbone_config: dict | None = None, num_heads: int = 32, head_hidden: int = 128,
                 separator_token: str = "<extra_0>", separator_id: int = -1, readout: str = "separator",
                 prefix_end_id: int = -1, p_threshold: float = 0.95, std_threshold: float = 0.005,
                 system_prompt: str = "", **kwargs):
        self.backbone_config = backbone_config or {}
        self.num_heads = num_heads
        self.head_hidden = head_hidden
        self.separator_token = separator_token
        self.separator_id = separator_id
        self.readout = readout                # "separator" or "step_mean" (see ActPRMForStepScoring.step_states)
        self.prefix_end_id = prefix_end_id    # token closing the question in BERT's pair layout, or -1
        self.p_threshold = p_threshold        # ActPRM's confidence rule (paper Sec. 3.2: 0.95 and 0.005)
        self.std_threshold = std_threshold
        self.system_prompt = system_prompt    # chat-template tokenizers only (Qwen2.5-Math-PRM's prompt)
        super().__init__(**kwargs)


class ActPRMForStepScoring(PreTrainedModel):
    config_class = ActPRMConfig
    base_model_prefix = "actprm"
    # The heads stay float32 whatever dtype the model is loaded in: the uncertainty rule compares an ensemble std
    # with 0.005, below bfloat16's resolution near 1.
    _keep_in_fp32_modules_strict = list(HEAD_PARAMS) + [f"anchor_{n}" for n in HEAD_PARAMS]

    def __init__(self, config: ActPRMConfig):
        super().__init__(config)
        settings = dict(config.backbone_config)
        self.backbone = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
        e, k, h = config.num_heads, config.head_hidden, self.backbone.config.hidden_size
        shapes = {"w1": (e, h, k), "b1": (e, 1, k), "w2": (e, k, k), "b2": (e, 1, k), "w3": (e, k, 1), "b3": (e, 1, 1)}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            # The heads' initial weights: the anchors of the regularizer, kept so training can continue.
            self.register_buffer(f"anchor_{name}", torch.zeros(shape))
        self.post_init()

    def _init_weights(self, module):
        # Every weight comes from the checkpoint; only the backbone's own modules need its own init (buffers).
        if module is not self:
            super()._init_weights(module)

    # -- the network ---------------------------------------------------------------------------
    def head_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(N, H) step states -> (E, N) logits of all heads, in float32."""
        x = states.float()
        w1, b1, w2, b2, w3, b3 = (getattr(self, n).float() for n in HEAD_PARAMS)
        z = torch.relu(torch.einsum("nh,ehk->enk", x, w1) + b1)
        z = torch.relu(torch.baddbmm(b2, z, w2))
        return torch.baddbmm(b3, z, w3).squeeze(-1)

    def step_states(self, hidden, input_ids, attention_mask):
        """The (N, H) states the heads read, one per separator in row-major order, and each one's batch row.
        "separator": the state at the separator. "step_mean": the layer-normalized mean of the step's token
        states, separator included (for frozen sentence encoders, which carry a step in their mean)."""
        sep = (input_ids == self.config.separator_id) & attention_mask.bool()
        rows, cols = sep.nonzero(as_tuple=True)
        before = sep.long().cumsum(1)
        step_index = (before - 1)[rows, cols]
        if self.config.readout == "separator":
            return hidden[rows, cols], rows
        step_of = before - sep.long()
        in_steps = attention_mask.bool() & (step_of < before[:, -1:])
        if self.config.prefix_end_id >= 0:
            ends = (input_ids == self.config.prefix_end_id).long()
            in_steps &= ((ends.cumsum(1) - ends) > 0) | (ends.sum(1, keepdim=True) == 0)
        width = max(int(before[:, -1].max()), 1) if rows.numel() else 1
        segment = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1) * width + step_of
        seg = segment[in_steps]
        sums = torch.zeros(input_ids.shape[0] * width, hidden.shape[-1], device=hidden.device)
        sums.index_add_(0, seg, hidden[in_steps].float())
        counts = torch.bincount(seg, minlength=sums.shape[0]).clamp(min=1).unsqueeze(1)
        means = (sums / counts)[rows * width + step_index]
        return F.layer_norm(means, means.shape[-1:]).to(hidden.dtype), rows

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Logits (E, N) of every head at the N separators of the batch, and each separator's batch row (N,)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states, rows = self.step_states(hidden, input_ids, attention_mask)
        return {"logits": self.head_logits(states), "step_rows": rows}

    # -- scoring text ------------------------------------------------------------------------------
    def encode_trajectory(self, tokenizer, question: str, steps: list[str]) -> list[int]:
        """Token ids of `question` and its `steps`: <prefix> step_1 <extra_0> step_2 <extra_0> ... <suffix>.
        The prefix is the chat template (system + user + assistant opener) when the tokenizer has one, else
        BERT's pair layout [CLS] question [SEP] steps [SEP], else <bos> question."""
        sep_text = self.config.separator_token

        def clean(text):
            return text.replace(sep_text, " ")

        chat = bool(getattr(tokenizer, "chat_template", None))
        if chat:
            q_text = tokenizer.apply_chat_template(
                [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": clean(question)}],
                tokenize=False, add_generation_prompt=True)
        else:
            q_text = clean(question)
        pieces = tokenizer([q_text] + [clean(s) for s in steps], add_special_tokens=False)["input_ids"]
        mid = [tokenizer.sep_token_id] if not chat and tokenizer.cls_token_id is not None else []
        if tokenizer.cls_token_id is not None:
            head, tail = [tokenizer.cls_token_id], ([tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else [])
        elif tokenizer.bos_token_id is not None and not chat:
            head, tail = [tokenizer.bos_token_id], []
        else:
            head, tail = [], []
        ids = head + list(pieces[0]) + mid
        for step in pieces[1:]:
            ids += list(step) + [self.config.separator_id]
        return ids + tail

    @torch.no_grad()
    def score_steps(self, tokenizer, questions: list[str], steps_lists: list[list[str]], batch_size: int = 8,
                    max_length: int | None = None) -> list[dict]:
        """Per trajectory: {"step_scores": mean over heads of P(step correct) per step, "step_std": the heads'
        unbiased std per step, "uncertain": the ActPRM rule}. Every step is scored: a trajectory longer than
        `max_length` (default: the backbone's position limit) raises instead of being cut."""
        if len(questions) != len(steps_lists):
            raise ValueError("questions and steps_lists must have the same length")
        limit = max_length or getattr(self.backbone.config, "max_position_embeddings", None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.eval()
        results = []
        for start in range(0, len(questions), batch_size):
            encoded = [self.encode_trajectory(tokenizer, q, s)
                       for q, s in zip(questions[start:start + batch_size], steps_lists[start:start + batch_size])]
            for i, ids in enumerate(encoded):
                if limit is not None and len(ids) > limit:
                    raise ValueError(f"trajectory {start + i} has {len(ids)} tokens, over the limit of {limit}: "
                                     "split it or pass a larger max_length")
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attention = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, ids in enumerate(encoded):  # right padding, as in training
                input_ids[i, :len(ids)] = torch.tensor(ids)
                attention[i, :len(ids)] = 1
            device = self.w1.device
            out = self.forward(input_ids.to(device), attention.to(device))
            probs = torch.sigmoid(out["logits"]).float().cpu()
            counts = torch.bincount(out["step_rows"].cpu(), minlength=len(encoded)).tolist()
            for p in torch.split(probs, counts, dim=1):
                p = p.double()
                mu = p.mean(0)
                sigma = p.std(0, correction=1) if p.shape[0] > 1 else torch.zeros_like(mu)
                results.append({"step_scores": mu.tolist(), "step_std": sigma.tolist(),
                                "uncertain": self._uncertain(mu, sigma)})
        return results

    def _uncertain(self, mu: torch.Tensor, sigma: torch.Tensor) -> bool:
        """ActPRM (Sec. 3.2): uncertain when a step up to the first predicted error (mu < 0.5) is not confident."""
        if len(mu) == 0:
            return True  # nothing was read: nothing is known
        p, s = self.config.p_threshold, self.config.std_threshold
        wrong = (mu < 0.5).nonzero()
        last = int(wrong[0, 0]) + 1 if len(wrong) else len(mu)
        confident = (sigma <= s) & ((mu >= p) | (mu <= 1 - p))
        return bool((~confident[:last]).any())
