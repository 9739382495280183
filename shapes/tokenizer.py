"""The shapes world's tokenizer: one token per word of the grammar.

A ``tokenizers`` WordLevel model over the vocabulary plus ``[PAD] [UNK] [BOS] [EOS]``, whitespace
pre-tokenizer and ``[BOS] $A [EOS]`` post-processing, wrapped in ``PreTrainedTokenizerFast`` so
``AutoTokenizer.from_pretrained(dir)`` loads it like any Hugging Face tokenizer.

Pitfall (../shared/shapes-world-measurements.md): CLIPTextModel pools the hidden state at the EOS
token.  Its config must name our ``eos_token_id`` (3 here); if ``eos_token_id == 2`` transformers
falls back to legacy argmax pooling, which with our ids would pick ``[BOS]``.  Use
:func:`text_config_ids` when building a CLIPTextConfig.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from shapes.world import BACKGROUNDS, COLORS, COUNT_WORDS, SHAPES

SPECIAL = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
MAX_LENGTH = 12  # longest prompt is 7 words + BOS + EOS


def vocabulary() -> list[str]:
    words = list(COUNT_WORDS) + list(COLORS) + list(BACKGROUNDS)
    words += [s for shape in SHAPES for s in (shape, shape + "s")]
    words += ["on", "a", "background"]
    return list(SPECIAL) + words


def is_shapes_tokenizer(folder: str | Path) -> bool:
    """Whether the tokenizer saved in ``folder`` (a pipeline's ``tokenizer/``) is this one, the
    shapes world's word-level vocabulary: a model that reads shapes-world prompts and nothing else
    (read from ``tokenizer.json`` alone; a CLIP BPE tokenizer is not)."""
    try:
        model = json.loads((Path(folder) / "tokenizer.json").read_text()).get("model", {})
    except (OSError, ValueError, AttributeError):
        return False
    return model.get("type") == "WordLevel" and set(model.get("vocab", {})) == set(vocabulary())


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
        eos_token="[EOS]", model_max_length=MAX_LENGTH, padding_side="right")


def text_config_ids(tokenizer) -> dict:
    """Keyword arguments for CLIPTextConfig so pooling finds our EOS token."""
    return dict(vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
