"""The ARC encoder: a Hugging Face decoder-only backbone, cut short, attending both ways, pooling.

We reuse the backbone's own blocks (any family transformers implements: Llama, Mistral, Qwen2/3,
Gemma3...) and only change what they see: a 4-D additive mask (bidirectional or causal inside each
segment) and, in the last blocks, a sequence with pooled rows appended. The pooled block
(method.md §2.3) is computed by running the *unchanged* HF block on `[H ; P]`, where P holds the pooled
residual streams at positions 0..m-1 and every row may only attend to the unpooled keys of H. For
the P rows this is exactly "pooled queries attend the unpooled keys and values, and the residual
carries the pooled vector"; the H rows are computed and discarded (a small waste in one block,
bought for not re-implementing attention per family: q/k norms, softcaps, extra norms all come
for free).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from ..config import ARCConfig
from .frozen_cache import FrozenBlockCache
from .pooling import group_index, pool, pooled_length


def backbone_config(path: str, drop_layers: int, attn_implementation: str) -> PretrainedConfig:
    return truncated_config(AutoConfig.from_pretrained(path), drop_layers, attn_implementation, path)


def truncated_config(config: PretrainedConfig, drop_layers: int, attn_implementation: str, name: str):
    """A backbone's HF config without its last `drop_layers` blocks: the encoder's."""
    config = getattr(config, "text_config", None) or config  # multimodal wrappers (Gemma3)
    kept = config.num_hidden_layers - drop_layers
    if kept < 1:
        raise ValueError(f"drop_layers={drop_layers} leaves no block of the {config.num_hidden_layers} in {name}")
    config.num_hidden_layers = kept
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:kept]
    config._attn_implementation = attn_implementation
    config.use_cache = False
    return config


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] float mask of 0 (attend) / dtype-min (blocked).

    Rows that may attend nothing (padding queries) get key 0, so softmax never sees an all-masked
    row (which would give NaN under SDPA); their outputs are thrown away anyway.
    """
    allowed = allowed.clone()
    empty = ~allowed.any(-1)
    allowed[..., 0] |= empty
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class Encoder(nn.Module):
    def __init__(self, hf_config: PretrainedConfig, cfg: ARCConfig, base: nn.Module | None = None):
        super().__init__()
        base = base if base is not None else AutoModel.from_config(hf_config)
        self.hf_config = hf_config
        self.embed_tokens = base.embed_tokens
        self.layers = base.layers  # no final norm, no LM head: the raw last-block output is used
        self.rotary_emb = base.rotary_emb
        self.causal = cfg.causal
        self.mode = cfg.pooling
        self.receptive_field = cfg.pooled_receptive_field
        self.pooled_positions = cfg.pooled_positions
        n = len(self.layers)
        if len(cfg.pooling_factors) > n:
            raise ValueError(f"{len(cfg.pooling_factors)} pooling factors for {n} encoder blocks")
        # factor applied before each block (1 = plain block)
        self.factors = [1] * (n - len(cfg.pooling_factors)) + list(cfg.pooling_factors)
        self._scheduled_factor: int | None = None  # set by pooling_factor() for a training step
        self.layer_types = list(getattr(hf_config, "layer_types", None) or ["full_attention"] * n)
        self.sliding_window = getattr(hf_config, "sliding_window", None)
        self.frozen_cache: FrozenBlockCache | None = None  # set by cache_frozen_blocks (training)

    @classmethod
    def from_backbone(cls, path: str, cfg: ARCConfig, pretrained: bool = True) -> Encoder:
        hf_config = backbone_config(path, cfg.drop_layers, cfg.attn_implementation)
        if pretrained:
            base = AutoModel.from_pretrained(path, config=hf_config, dtype=torch.float32)
        else:
            base = AutoModel.from_config(hf_config)
        return cls(hf_config, cfg, base)

    @classmethod
    def from_saved(cls, folder: str | Path, cfg: ARCConfig) -> Encoder:
        """The architecture a saved model's encoder/ folder describes (the truncated backbone's
        config), its weights untrained: the saved ones are loaded into it (model/saved.py)."""
        hf_config = AutoConfig.from_pretrained(folder)
        hf_config._attn_implementation = cfg.attn_implementation
        return cls(hf_config, cfg)

    @contextlib.contextmanager
    def pooling_factor(self, factor: int | None):
        """Pool by `factor` in the last block while inside (a pooling-factor curriculum; 1 still
        runs the pooling block, each vector then reading its own token). None: as configured."""
        if factor is not None and self.mode == "memory":
            raise ValueError("a pooling-factor schedule needs mean or last pooling, not memory tokens")
        if factor is not None and sum(f > 1 for f in self.factors) != 1:
            raise ValueError(
                f"a pooling-factor schedule needs one pooling block, this encoder has factors {self.factors}"
            )
        self._scheduled_factor = factor
        try:
            yield
        finally:
            self._scheduled_factor = None

    @property
    def hidden_size(self) -> int:
        return self.hf_config.hidden_size

    def _rope(self, h: torch.Tensor, positions: torch.Tensor, layer_type: str):
        if getattr(self.rotary_emb, "layer_types", None):  # per-layer-type RoPE (Gemma3)
            return self.rotary_emb(h, positions, layer_type)
        return self.rotary_emb(h, positions)

    def _active_factors(self) -> tuple[list[int], list[bool]]:
        """The factor each block pools by (a scheduled one included), and which blocks pool."""
        factors = list(self.factors)
        if self._scheduled_factor is not None:  # the one pooling block pools by the scheduled factor
            factors[factors.index(max(factors))] = self._scheduled_factor
        return factors, [f > 1 for f in self.factors]  # a configured pooling block pools even at x1

    def output_length(self, n_tokens: int, memory_tokens: int = 0) -> int:
        """How many vectors a segment of `n_tokens` encoder tokens becomes, without running
        anything: `memory_tokens` with memory tokens, else the length after every pooling block
        (pooling.pooled_length, the rule `forward` pools by)."""
        if memory_tokens:
            return memory_tokens
        factors, pooling = self._active_factors()
        for factor, pools in zip(factors, pooling):
            if pools:
                n_tokens = pooled_length(n_tokens, factor)
        return n_tokens

    def cache_frozen_blocks(self, max_mb: float) -> FrozenBlockCache | None:
        """Keep the frozen lower blocks' outputs per segment (model/frozen_cache.py): the blocks
        from the embeddings up to the first one that trains or pools. Refused where nothing below
        the trained blocks is frozen, or with memory tokens (their vectors train and enter below).
        None (no cache) where the first block already trains or pools."""
        if self.mode == "memory":
            raise ValueError("frozen_block_cache_mb needs mean or last pooling: memory tokens enter the lower blocks")
        if self.embed_tokens.weight.requires_grad:
            raise ValueError(
                "frozen_block_cache_mb needs a frozen lower encoder (train_encoder_blocks or freeze_encoder)"
            )
        frozen = 0
        for layer, factor in zip(self.layers, self.factors):
            if factor > 1 or any(p.requires_grad for p in layer.parameters()):
                break
            frozen += 1
        if frozen == 0:  # every block trains or pools (a tiny encoder): nothing to keep
            return None
        self.frozen_cache = FrozenBlockCache(frozen, max_mb)
        return self.frozen_cache

    def encode_ids(self, segments: list[list[int]], pad_id: int, memory: torch.Tensor | None = None):
        """`forward` on segments given as token id lists, right-padded here with `pad_id`; with a
        frozen-block cache, the frozen blocks' outputs come from it."""
        lengths = [len(s) for s in segments]
        if min(lengths) < 1:
            raise ValueError("cannot compress an empty segment")
        if self.frozen_cache is not None:
            h = self.frozen_cache.hidden(self, segments, pad_id)  # [S, N, d]
            return self.blocks(h, lengths, first=self.frozen_cache.blocks)
        return self(self.padded_ids(segments, pad_id), lengths, memory)

    def padded_ids(self, segments: list[list[int]], pad_id: int) -> torch.Tensor:
        """Token id lists -> [S, N] right-padded with `pad_id`, on the encoder's device."""
        ids = torch.full((len(segments), max(len(s) for s in segments)), pad_id, dtype=torch.long)
        for i, seg in enumerate(segments):
            ids[i, : len(seg)] = torch.tensor(seg)
        return ids.to(self.embed_tokens.weight.device)

    def forward(self, input_ids: torch.Tensor, lengths: list[int], memory: torch.Tensor | None = None):
        """Compress a batch of segments.

        input_ids: [S, N] right-padded encoder token ids; segment s is real up to lengths[s].
        memory: [M, d] memory-token vectors (pooling == "memory" only).
        Returns [S, m_max, d] compressed vectors (right-padded) and their lengths m_s.
        """
        h = self.embed_tokens(input_ids)  # [S, N, d]
        lengths = list(lengths)
        if memory is not None:
            h, lengths = self._append_memory(h, lengths, memory)
        h, lengths = self.blocks(h, lengths)
        if memory is not None:  # keep the last M positions of each segment
            M = memory.shape[0]
            index = torch.tensor([[n - M + i for i in range(M)] for n in lengths], device=h.device)
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))  # [S, M, d]
            lengths = [M] * len(lengths)
        return h, lengths

    def blocks(self, h: torch.Tensor, lengths: list[int], first: int = 0):
        """Blocks `first`.. on the residual stream [S, N, d] -> [S, m_max, d] and the lengths m_s."""
        factors, pooling = self._active_factors()
        for layer, layer_type, factor, pools in list(zip(self.layers, self.layer_types, factors, pooling))[first:]:
            if not pools:
                h = self._plain_block(layer, layer_type, h, lengths)
            else:
                h, lengths = self._pooled_block(layer, layer_type, h, lengths, factor)
        return h, lengths

    def _append_memory(self, h, lengths, memory):
        """Place the M memory vectors right after each segment's tokens: [S, N, d] -> [S, N+M, d]."""
        S, N, d = h.shape
        M = memory.shape[0]
        out = h.new_zeros(S, N + M, d)
        out[:, :N] = h
        for s, n in enumerate(lengths):
            out[s, n : n + M] = memory
        return out, [n + M for n in lengths]

    def _plain_block(self, layer, layer_type, h, lengths):
        S, N, _ = h.shape
        q = torch.arange(N, device=h.device)
        real = q[None, :] < torch.tensor(lengths, device=h.device)[:, None]  # [S, N]
        allowed = real[:, None, :].expand(S, N, N)  # every query sees every real key of its segment
        if self.causal:
            allowed = allowed & (q[None, :] <= q[:, None])[None]
        if layer_type == "sliding_attention" and self.sliding_window:
            allowed = allowed & ((q[None, :] - q[:, None]).abs() < self.sliding_window)[None]
        positions = q[None].expand(S, N)
        return layer(
            h,
            attention_mask=additive_mask(allowed, h.dtype),
            position_ids=positions,
            position_embeddings=self._rope(h, positions, layer_type),
        )

    def _pooled_block(self, layer, layer_type, h, lengths, factor):
        S, N, _ = h.shape
        pooled, counts, ends = pool(h, lengths, factor, self.mode)  # [S, M, d]
        M = pooled.shape[1]
        x = torch.cat([h, pooled], dim=1)  # [S, N+M, d]
        # Unpooled tokens keep positions 0..n-1; pooled query j takes position j (method.md §2.5), or
        # with pooled_positions="group" the position of its group's first token.
        if self.pooled_positions == "group":
            starts = [[0] + [e + 1 for e in seg[:-1]] + [0] * (M - len(seg)) for seg in ends]
            query_pos = torch.tensor(starts, device=h.device)  # [S, M]
        else:
            query_pos = torch.arange(M, device=h.device)[None].expand(S, M)
        positions = torch.cat([torch.arange(N, device=h.device)[None].expand(S, N), query_pos], dim=1)
        keys = torch.arange(N + M, device=h.device)
        real_key = keys[None, :] < torch.tensor(lengths, device=h.device)[:, None]  # [S, N+M]
        allowed = real_key[:, None, :].expand(S, N + M, N + M).clone()
        if self.causal:
            # unpooled row t sees keys <= t; pooled row j sees keys up to the end of its own group
            last_key = torch.cat(
                [
                    torch.arange(N)[None].expand(S, N),
                    torch.tensor([e + [N - 1] * (M - len(e)) for e in ends]),
                ],
                dim=1,
            ).to(h.device)  # [S, N+M]
            allowed &= keys[None, None, :] <= last_key[:, :, None]
        if self.receptive_field is not None:
            # pooled row j sees only the tokens of groups j-w .. j+w (padding keys are blocked above)
            ids, _ = group_index(lengths, factor)
            key_group = torch.full((S, N + M), -N - M, dtype=torch.long)
            for s, row in enumerate(ids):
                key_group[s, : len(row)] = torch.tensor(row)
            key_group = key_group.to(h.device)
            query_group = torch.arange(M, device=h.device)
            near = (key_group[:, None, :] - query_group[None, :, None]).abs() <= self.receptive_field  # [S, M, N+M]
            allowed[:, N:] &= near
        out = layer(
            x,
            attention_mask=additive_mask(allowed, h.dtype),
            position_ids=positions,
            position_embeddings=self._rope(h, positions, layer_type),
        )
        return out[:, N:], counts
