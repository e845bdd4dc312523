"""Answering prompts with an ARCModel: the spliced prompt through the frozen decoder, token by token.

A prompt is a list of parts: text (str), documents to compress now (Doc) and vectors compressed
earlier (Compressed). `generate` checks every prompt's length before anything is compressed,
splices the prompts (model/prompting.py), reuses the keys and values of the start all prompts
share (model/prefix.py) and decodes with a KV cache (model/decoder.py), calling `on_token` after
every token so a caller can stream. `prompt_embeddings` stops before the decoder runs: the spliced
input embeddings, for engines that take those.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..prompt import Doc
from .decoder import end_and_pad_ids, generate_ids
from .detokenize import StopStrings
from .prompting import Compressed, splice_prompts


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_length: int  # decoder input positions: text tokens + compressed vectors + special tokens
    document_tokens: int  # decoder-tokenizer tokens of the compressed documents
    compressed_vectors: int  # vectors those documents became (special tokens excluded)

    @property
    def compression_ratio(self) -> float | None:
        return self.document_tokens / self.compressed_vectors if self.compressed_vectors else None


@dataclass
class PromptEmbeddings:
    """One prompt as the decoder reads it: text embeddings with compressed blocks spliced in."""

    embeds: torch.Tensor  # [L, d_dec]
    document_tokens: int  # decoder-tokenizer tokens of the compressed documents
    compressed_vectors: int  # vectors those documents became (special tokens excluded)


def prompt_list(prompts, what: str) -> list[list]:
    """A batch of prompts; a single prompt given as a flat list of parts becomes a batch of one."""
    if not isinstance(prompts, list) or not prompts:
        raise TypeError(f"{what}() takes a non-empty list of prompts")
    if all(isinstance(p, (str, Doc, Compressed)) for p in prompts):
        return [prompts]
    return prompts


@torch.no_grad()
def generate(
    model,
    prompts,
    decoder: int | str = 0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    special: str = "cont",
    share_prefix: bool = True,
    on_token: Callable[[int, list[int]], bool] | None = None,
    window: int | None = None,
) -> list[Generation]:
    """Answer prompts whose parts are text (str), documents to compress (Doc) or stored
    vectors (Compressed). Greedy at temperature 0; stops at EOS or any `stop` string.
    `special="rec"` follows each document with <Rec>: the decoder then reconstructs it.
    `share_prefix` runs the decoder once over the positions all prompts start with (few-shot
    examples) and reuses their keys and values, for this batch and the following ones.
    `on_token(i, ids)` is called after every new token of prompt i with its new token ids so
    far; it may stream them, and returning True ends prompt i there (a client that has gone).
    `window`: refuse (PromptTooLong) any prompt whose positions plus `max_new_tokens` exceed
    it, as for the decoder's own limit: a context window smaller than the decoder's."""
    prompts = prompt_list(prompts, "generate")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    decoder = model.decoder_index(decoder)
    results = []
    for start in range(0, len(prompts), batch_size):
        results += _generate_batch(
            model,
            prompts[start : start + batch_size],
            decoder,
            max_new_tokens,
            temperature,
            top_p,
            stop or [],
            seed,
            special,
            share_prefix,
            None if on_token is None else (lambda i, ids, start=start: on_token(start + i, ids)),
            window,
        )
    return results


@torch.no_grad()
def prompt_embeddings(model, prompts, decoder: int | str = 0) -> list[PromptEmbeddings]:
    """The decoder input embeddings generate() would feed, per prompt, without running the decoder.

    For engines that take prompt embeddings (vLLM's `prompt_embeds`): positions run 0..L-1 over
    text tokens and spliced vectors alike, so the engine's own positions match.
    """
    prompts = prompt_list(prompts, "prompt_embeddings")
    decoder = model.decoder_index(decoder)
    batch, stats = splice_prompts(model, prompts, decoder)
    real = batch.attention_mask.bool()  # [B, L]; left padding is dropped below
    return [PromptEmbeddings(batch.embeds[i][real[i]], *stats[i]) for i in range(len(prompts))]


def _generate_batch(
    model,
    prompts,
    decoder,
    max_new_tokens,
    temperature,
    top_p,
    stop,
    seed,
    special,
    share_prefix=True,
    on_token=None,
    window=None,
):
    dec, tokenizer = model.decoders[decoder], model.decoder_tokenizers[decoder]
    for prompt in prompts:  # before any document is compressed
        model.check_prompt(prompt, decoder, max_new_tokens, special, window=window)
    batch, stats = splice_prompts(model, prompts, decoder, special)
    embeds, mask, positions, cache = (
        model._prefix_memo.split(dec, decoder, batch)
        if share_prefix
        else (batch.embeds, batch.attention_mask, batch.position_ids, None)
    )
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed if seed is not None else random.randrange(2**31))

    stops = [StopStrings(tokenizer, stop) for _ in prompts]  # each decodes only its newest tokens

    def should_stop(i, ids):
        if on_token is not None and on_token(i, ids):
            return True
        return stops[i].reached(ids)

    eos, pad = end_and_pad_ids(dec, tokenizer)
    new_ids = generate_ids(
        dec, embeds, mask, positions, max_new_tokens, eos, pad, temperature, top_p, generator, should_stop, cache
    )
    out = []
    for i, ids in enumerate(new_ids):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop:
            text = text.split(s)[0]
        out.append(Generation(text, ids, int(batch.attention_mask[i].sum()), *stats[i]))
    return out
