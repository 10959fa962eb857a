"""A character-level tokenizer built locally (no download) for the `tiny` preset.

Every printable ASCII character is a token, plus "\\n" and "\\n\\n" (the step delimiter whose embedding
initialises the step separator). Characters outside ASCII map to [UNK]. Character-level keeps digits
and operators apart, which suits the synthetic arithmetic pools, and never meets an unknown word.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def build_tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n", "\n\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # "\n\n" first so a blank line is one token; [\s\S] matches any other single character.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # characters join back without spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=4096)
