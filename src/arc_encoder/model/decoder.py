"""Frozen decoders: loading, next-token loss at chosen positions, and KV-cached generation."""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel


def load_frozen_decoder(
    path: str,
    attn_implementation: str = "sdpa",
    pretrained: bool = True,
    config=None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Any AutoModelForCausalLM, in eval mode, with every parameter frozen, stored in `dtype`
    (read from disk straight into it: an 8B decoder never takes its float32 32 GB)."""
    if pretrained:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    else:
        config._attn_implementation = attn_implementation
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The keyword a decoder class's forward takes its KV cache under: `cache` from transformers
    5.24 on, `past_key_values` before (5.24-5.39 still accept the old name, with a warning)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(decoder: PreTrainedModel, cache) -> dict:
    """{keyword: cache} for a call of `decoder` (see `_cache_keyword`)."""
    return {_cache_keyword(type(decoder)): cache}


def returned_cache(output):
    """The KV cache a decoder call returned: `output.cache` (transformers >= 5.24), or
    `output.past_key_values`."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def decoder_logits(decoder: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM head (plus the final soft-cap some families use) on selected hidden states [T, d]."""
    logits = decoder.get_output_embeddings()(hidden)
    cap = getattr(decoder.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def target_logits(decoder, embeds, attention_mask, position_ids, index) -> torch.Tensor:
    """[T, V] float32 logits of the decoder at flat positions `index` of its [B*L] input.

    Logits are computed only at those positions: over a 49k-256k vocabulary, logits everywhere
    would be the largest cost of a training step.

    `use_cache=False`: decoder configs default to caching, and a cache the blocks append to would
    hold twice the keys when activation checkpointing recomputes them in the backward pass.
    """
    hidden = decoder.base_model(
        inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state  # [B, L, d] after the final norm
    picked = hidden.reshape(-1, hidden.shape[-1])[index]  # [T, d]
    return decoder_logits(decoder, picked).float()


def end_and_pad_ids(decoder: PreTrainedModel, tokenizer) -> tuple[set[int], int]:
    """The token ids that end a generation (the model's and the tokenizer's EOS) and the id that
    fills finished rows of a batch."""
    eos = decoder.generation_config.eos_token_id if decoder.generation_config else None
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    eos |= {tokenizer.eos_token_id} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    return eos, pad


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """[B, V] -> [B]: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(
    decoder: PreTrainedModel,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    should_stop=None,
    cache: DynamicCache | None = None,
) -> list[list[int]]:
    """Prefill once on left-padded spliced embeddings [B, L, d], then decode with the KV cache.

    `should_stop(i, ids)` may end sample i early (stop strings). Returns new token ids per sample,
    without the EOS. With `cache` (keys/values of positions every sample shares, see
    `shared_prefix_cache`), `embeds` holds only what follows and `attention_mask` covers both.
    """
    B = embeds.shape[0]
    cache = cache if cache is not None else DynamicCache(config=decoder.config)
    out = decoder(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **with_cache(decoder, cache),
    )
    next_position = position_ids[:, -1:] + 1  # [B, 1]
    outputs: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    eos = torch.tensor(sorted(eos_ids), device=embeds.device)
    for _ in range(max_new_tokens):
        token = sample_next(out.logits[:, -1], temperature, top_p, generator)  # [B]
        finished = torch.isin(token, eos).tolist()
        for i in range(B):
            if done[i]:
                continue
            if finished[i]:
                done[i] = True
                continue
            outputs[i].append(int(token[i]))
            if should_stop is not None and should_stop(i, outputs[i]):
                done[i] = True
        if all(done):
            break
        token = token.masked_fill(torch.tensor(done, device=token.device), pad_id)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
        out = decoder(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            use_cache=True,
            **with_cache(decoder, returned_cache(out)),
        )
        next_position = next_position + 1
    return outputs


# ----------------------------------------------------------------------------- shared prompt prefix
# Few-shot prompts of one evaluation all start with the same shots (~1,100 of ~1,400 decoder
# positions for 5-shot SQuAD). Their keys and values are computed once and reused by every batch.
SharedPrefix = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [1, h, P, d_h]


def shares_prefixes(decoder: PreTrainedModel) -> bool:
    """Prefix reuse needs every layer to keep all keys: sliding-window layers drop old ones."""
    return not any(layer.is_sliding for layer in DynamicCache(config=decoder.config).layers)


def cache_bytes(shared: SharedPrefix) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in shared)


def shared_start(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading rows two [n, d] tensors have exactly equal."""
    n = min(a.shape[0], b.shape[0])
    differs = (~(a[:n] == b[:n]).all(-1)).nonzero()
    return int(differs[0]) if differs.numel() else n


def common_prefix_length(rows: list[torch.Tensor]) -> int:
    """How many leading positions all rows [n_i, d] share exactly, leaving each row at least one."""
    return max(0, min([r.shape[0] - 1 for r in rows] + [shared_start(rows[0], r) for r in rows[1:]]))


@torch.no_grad()
def shared_prefix_cache(decoder: PreTrainedModel, prefix: torch.Tensor) -> SharedPrefix:
    """Run the decoder once on prefix embeddings [P, d]; keep each layer's keys and values."""
    cache = DynamicCache(config=decoder.config)
    positions = torch.arange(prefix.shape[0], device=prefix.device)[None]
    decoder(
        inputs_embeds=prefix[None],
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **with_cache(decoder, cache),
    )
    return [(layer.keys, layer.values) for layer in cache.layers]


def batch_cache(decoder: PreTrainedModel, shared: SharedPrefix, batch: int) -> DynamicCache:
    """A fresh cache for `batch` samples that all start with the shared prefix."""
    cache = DynamicCache(config=decoder.config)
    for i, (keys, values) in enumerate(shared):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), i)
    return cache
