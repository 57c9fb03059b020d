"""The tiny model's tokenizer, saved as an ordinary Hugging Face tokenizer folder.

Character-level, except that every two-digit group ("00".."99") is one token:
one token per printable ASCII character and newline, 100 two-digit tokens, and
<pad>, <bos>, <eos>, <unk> (200 ids). Two-digit tokens turn the arith task's
additions into look-ups the tiny model learns in minutes on a CPU, where
carrying digit by digit would take far longer. Text is split left to right, so
"123" is "12" + "3". `transformers.AutoTokenizer.from_pretrained(folder)` loads
it, and `tokenizer(text)` starts with <bos>.
"""

from __future__ import annotations

import re
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
PAIRS = tuple(f"{n:02d}" for n in range(100))
SPLIT = r"\d\d|[\s\S]"
_SPLIT = re.compile(SPLIT)


def vocabulary() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(list(SPECIALS) + list(CHARACTERS) + list(PAIRS))}


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    core.decoder = decoders.Fuse()
    # Like Llama tokenizers: `tokenizer(text)` starts with <bos>.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocabulary()[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=4096,
    )


def save_tokenizer(folder: Path) -> None:
    build_tokenizer().save_pretrained(str(folder))


class TaskCodec:
    """The same ids as the saved tokenizer, without transformers (fast, for training loops)."""

    def __init__(self):
        self.vocab = vocabulary()
        self.inverse = {i: t for t, i in self.vocab.items()}
        self.pad_id, self.bos_id = self.vocab[PAD], self.vocab[BOS]
        self.eos_id, self.unk_id = self.vocab[EOS], self.vocab[UNK]

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(piece, self.unk_id) for piece in _SPLIT.findall(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.inverse[i] for i in ids if i >= len(SPECIALS))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


CharCodec = TaskCodec  # the name earlier code imports
