"""Tokenizers for the data-pipeline tests, small enough to count tokens by hand."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from conftest import CORPUS

# A minimal chat template: "<|user|>...<eos>\n<|assistant|>...<eos>\n", as instruct models write it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(bos: bool = True, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One token per byte (no merges): an ASCII text of n characters is n tokens.

    Ids: <pad> 0, <bos> 1, <eos> 2, then the 256 byte symbols. With `bos`, the tokenizer puts
    <bos> before a text when asked for special tokens, as Llama and Gemma tokenizers do.
    """
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def other_bpe() -> PreTrainedTokenizerFast:
    """A BPE tokenizer with other merges than conftest's: token boundaries differ from it."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([line[::-1] for line in CORPUS] + CORPUS[:3], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def byte_fallback_bpe() -> PreTrainedTokenizerFast:
    """A tokenizer in the style of Llama 2's: "▁" for spaces, a character it has no token for as
    its UTF-8 bytes (<0xC3> <0xA9>), and a decode that drops the leading space of its text."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>", *byte_tokens])
    tok.train_from_iterator([line.replace(" ", "▁") for line in CORPUS], trainer)
    # the byte tokens stay in the vocabulary as ordinary tokens (the trainer made them special)
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_tokens]
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
