"""Prompts as the decoder reads them: text pieces tokenized, documents compressed, blocks placed.

A prompt is a list of parts: `str` (text), `Doc` (a document to compress now) or `Compressed`
(vectors made earlier, e.g. read from a store). `build_prompts` turns a batch of prompts into
decoder token ids plus compressed blocks and where they go; `splice_prompts` embeds the text and
splices the blocks in (model/splice.py), left-padded for generation. `prompt_positions` counts the
decoder positions a prompt will take from token counts alone, before anything is compressed: the
library and the service refuse a prompt too long for the decoder with it, before the encoder runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..prompt import ChatText, Doc
from .splice import splice


class PromptTooLong(ValueError):
    """A sequence longer than the decoder's positions (or a stated window): refused, never cut."""


@dataclass
class Compressed:
    """A document compressed for one decoder: bottleneck vectors per chunk."""

    chunks: list[torch.Tensor]  # per chunk [m_i, bottleneck]
    decoder: int  # index of the decoder whose projector made them
    document_tokens: int  # decoder-tokenizer tokens of the original text (for the ratio)

    @property
    def n_vectors(self) -> int:
        return sum(c.shape[0] for c in self.chunks)

    @property
    def compression_ratio(self) -> float:
        return self.document_tokens / self.n_vectors


def text_token_ids(tokenizer, part: str, first: bool) -> list[int]:
    """Decoder token ids of a text part; the tokenizer's special tokens (BOS) only on the first part,
    and not on a chat template's text (it has the template's own)."""
    special = first and not isinstance(part, ChatText)
    return tokenizer(part, add_special_tokens=special)["input_ids"] if part else []


def block_length(model, vectors: int, special: str | None) -> int:
    """Decoder positions of one chunk's block: its vectors, and its special token (decoder_blocks)."""
    return vectors + (1 if model.config.special_tokens and special is not None else 0)


def prompt_positions(
    model,
    prompt: list,
    decoder: int,
    special: str | None = "cont",
    doc_chunks: Callable[[Doc], list[int]] | None = None,
) -> int:
    """The decoder positions a prompt takes (Generation.prompt_length), counted without compressing
    anything: text tokens, and per chunk of each document its vectors (Encoder.output_length of its
    encoder tokens) plus its special token.

    doc_chunks(doc) -> encoder tokens per chunk of a Doc; by default the model's own chunking
    (ARCModel.chunks_of at the config's chunk size, as ARCModel.compress chunks)."""
    tokenizer = model.decoder_tokenizers[decoder]
    memory = model.config.memory_tokens if model.config.pooling == "memory" else 0
    total = 0
    for k, part in enumerate(prompt):
        if isinstance(part, str):
            total += len(text_token_ids(tokenizer, part, k == 0))
        elif isinstance(part, Doc):
            lengths = doc_chunks(part) if doc_chunks else [len(c.encoder_ids) for c in model.chunks_of(part.text)]
            total += sum(block_length(model, model.encoder.output_length(n, memory), special) for n in lengths)
        elif isinstance(part, Compressed):
            total += sum(block_length(model, c.shape[0], special) for c in part.chunks)
        else:
            raise TypeError(f"prompt parts must be str, Doc or Compressed, got {type(part).__name__}")
    return total


def check_positions(model, positions: int, new_tokens: int, decoder: int, window: int | None = None) -> None:
    """Refuse, before running anything, a sequence longer than the decoder's positions, or
    than `window` positions when one is given (an evaluation's stated context window)."""
    limit = getattr(model.decoders[decoder].config, "max_position_embeddings", None)
    if window is not None and (limit is None or window < limit):
        if window < 1:
            raise ValueError(f"window must be at least 1 position, got {window}")
        limit, whose = window, f"the window of {window} positions"
    else:
        whose = f"decoder {decoder}'s {limit}"
    if limit is not None and positions + new_tokens > limit:
        asked = f" + {new_tokens} new tokens" if new_tokens else ""
        raise PromptTooLong(
            f"the input takes {positions} decoder positions{asked}, more than {whose}: "
            "shorten the prompt or documents, or ask for fewer new tokens"
        )


def build_prompts(model, prompts: list[list], decoder: int, special: str = "cont"):
    """Tokenize text pieces, compress Docs (one encoder batch), expand stored vectors.

    Returns per prompt: decoder token ids, blocks [m_i (+1), d_dec], their text offsets, and
    (document tokens, vectors) for the compression counts."""
    tokenizer = model.decoder_tokenizers[decoder]
    docs = [part.text for prompt in prompts for part in prompt if isinstance(part, Doc)]
    compressed = iter(model.compress(docs, decoder) if docs else [])
    text_ids, blocks, offsets, stats = [], [], [], []
    for prompt in prompts:
        ids, sample_blocks, sample_offsets, n_doc, n_vec = [], [], [], 0, 0
        for k, part in enumerate(prompt):
            if isinstance(part, str):
                ids += text_token_ids(tokenizer, part, k == 0)
                continue
            if isinstance(part, Doc):
                part = next(compressed)
            if not isinstance(part, Compressed):
                raise TypeError(f"prompt parts must be str, Doc or Compressed, got {type(part).__name__}")
            if part.decoder != decoder:
                raise ValueError(f"vectors compressed for decoder {part.decoder} cannot feed decoder {decoder}")
            # decoder_blocks moves the vectors (e.g. float32 from a store) to the model's device and dtype
            for block in model.decoder_blocks(part.chunks, decoder, special):
                sample_blocks.append(block)
                sample_offsets.append(len(ids))
            n_doc += part.document_tokens
            n_vec += part.n_vectors
        if not ids and not sample_blocks:
            raise ValueError("empty prompt")
        text_ids.append(ids)
        blocks.append(sample_blocks)
        offsets.append(sample_offsets)
        stats.append((n_doc, n_vec))
    return text_ids, blocks, offsets, stats


def splice_prompts(model, prompts: list[list], decoder: int, special: str = "cont"):
    """Prompts -> left-padded spliced decoder inputs and (document tokens, vectors) per prompt."""
    text_ids, blocks, offsets, stats = build_prompts(model, prompts, decoder, special)
    embed = model.decoders[decoder].get_input_embeddings()
    text = [embed(torch.tensor(ids, dtype=torch.long, device=model.device)) for ids in text_ids]
    return splice(text, blocks, offsets, left_pad=True), stats
