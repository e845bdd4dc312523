"""Tokenizers for the data-pipeline tests, small enough to count tokens by hand."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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
