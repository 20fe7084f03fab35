"""A small byte-level BPE tokenizer trained on the training texts.

Byte-level BPE can encode any text (its base alphabet is the 256 byte
values), so a tokenizer trained on one corpus still reads new questions.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mdskit import SEG_TOKEN

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the image and ``[SEG]`` tokens added.

    Training is deterministic for the same texts in the same order.
    """
    special = list(SPECIAL_TOKENS.values()) + [IMAGE_TOKEN, SEG_TOKEN]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]})
    return tokenizer
