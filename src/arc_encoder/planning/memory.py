"""Bytes per GPU of a training step: weights, gradients, AdamW states, parallelism buffers and
activations, from a model built on the meta device (exact parameter counts) and the step's shapes.

Storage follows the trainer: trained weights, their gradients and both AdamW moments in float32;
the encoder float32 even where frozen; the frozen decoders in `decoder_dtype`. Activations follow
what autograd keeps for the backward pass of each transformers Llama-family block (counted op by
op in docs/scale.md), at the padded shapes of planning/shapes.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..model.pooling import pooled_length
from ..training.config import TrainConfig
from .meta_model import PlannedModel
from .shapes import StepShape

GIB = 1024**3
# Share of a GPU's memory the estimate may take and still count as fitting: the rest is for the
# CUDA context, the caching allocator's fragmentation, and the estimate's own error.
FIT_FRACTION = 0.9
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class BlockDims:
    hidden: int  # d
    intermediate: int  # f (MLP width)
    attention: int  # heads x head_dim: q, and k, v once repeated to every head (a padded batch)
    head_dim: int

    @classmethod
    def of(cls, config) -> BlockDims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, config.intermediate_size, heads * head_dim, head_dim)


def block_bytes_per_row(dims: BlockDims, trained: bool, act: int, residual: int, autocast: bool) -> int:
    """Bytes one block keeps for the backward pass per row (token) it runs on.

    Every block whose input needs a gradient keeps: the float32 input of each RMSNorm (4d each);
    q, k and v (repeated to every head) and the attention output for SDPA's backward (4 x heads x
    head_dim); the MLP's gate, its SiLU and up projection (3f). A block whose weights train also
    keeps what the weight gradients read: each RMSNorm's normalized input (4d each), the inputs of
    its linear maps (q/k/v and gate/up inputs: one copy each, or under bf16 autocast one bf16 cast
    per map, 3 + 2; the o_proj input; the down_proj input f)."""
    d, f, a = dims.hidden, dims.intermediate, dims.attention
    kept = 2 * 4 * d + 4 * act * a + 3 * act * f
    if trained:
        linear_inputs = 5 * 2 * d if autocast and residual == 4 else 2 * residual * d
        kept += 2 * 4 * d + linear_inputs + act * a + act * f
    return kept


@dataclass
class Terms:
    """One plan's bytes per GPU, by what holds them."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    buffers: int = 0  # DDP gradient buckets, bf16 copies of trained weights, FSDP2 gathered blocks
    activations: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.buffers + self.activations


def count(params) -> int:
    return sum(p.numel() for p in params)


def activation_bytes(planned: PlannedModel, shape: StepShape, bf16: bool, decoder_width: int, checkpointing: bool):
    """Peak activation bytes of one micro-batch (the same on every GPU), and its parts."""
    arc = planned.arc
    act = 2 if bf16 else 4
    enc_dims = BlockDims.of(arc.encoder.hf_config)
    # Rows each encoder block runs on: a pooling block also runs its pooled queries, memory tokens
    # follow the segment's own (model/encoder.py).
    rows, n = [], shape.segment_tokens + planned.config.memory_tokens
    for factor in arc.encoder.factors:
        if factor > 1:
            m = pooled_length(n, factor)
            rows.append(n + m)
            n = m
        else:
            rows.append(n)
    parts = {"encoder": 0, "decoder": 0, "masks": 0, "loss": 0, "recompute": 0}
    grad_upstream = False  # whether a block's input needs a gradient
    largest_block = 0
    for layer, n_rows in zip(arc.encoder.layers, rows):
        trained = any(p.requires_grad for p in layer.parameters())
        grad_upstream = grad_upstream or trained or arc.encoder.embed_tokens.weight.requires_grad
        if not grad_upstream:
            continue  # a frozen block below every trained one keeps nothing
        tokens = shape.segments * n_rows
        full = tokens * block_bytes_per_row(enc_dims, trained, act, 4, bf16)
        largest_block = max(largest_block, full)
        parts["encoder"] += tokens * 4 * enc_dims.hidden if checkpointing else full
        # each encoder block gets its own float32 additive mask [S, 1, N, N] and RoPE tables
        parts["masks"] += shape.segments * n_rows * n_rows * 4 + 2 * tokens * enc_dims.head_dim * 4
    # The decoder's input needs a gradient (it holds the trained projector's output); a step runs
    # one decoder: the largest.
    decoder_parts = []
    for decoder in arc.decoders:
        dims = BlockDims.of(decoder.config)
        tokens = shape.decoder_tokens
        per_block = tokens * block_bytes_per_row(dims, False, act, decoder_width, bf16)
        n_blocks = len(decoder.base_model.layers)
        kept = n_blocks * (tokens * decoder_width * dims.hidden if checkpointing else per_block)
        # one bool mask [B, 1, L, L] and RoPE tables shared by every block; the final norm's input
        shared = shape.rows * shape.length**2 + 2 * tokens * dims.head_dim * decoder_width + tokens * 4 * dims.hidden
        # float32 logits at the supervised positions, their log-softmax kept for the backward, its gradient
        loss = 3 * 4 * shape.loss_tokens * decoder.config.vocab_size
        decoder_parts.append((kept + shared + loss, kept, shared, loss, per_block))
    _, kept, shared, loss, per_block = max(decoder_parts)
    parts["decoder"] += kept
    parts["masks"] += shared
    parts["loss"] = loss
    if checkpointing:  # the backward pass recomputes one block at a time, which then keeps all it keeps
        parts["recompute"] = max(largest_block, per_block)
    # The loss's tensors are freed by its own backward, before any block is recomputed: the peak
    # is at one or the other.
    peak = parts["encoder"] + parts["decoder"] + parts["masks"] + max(parts["loss"], parts["recompute"])
    return peak, parts


def plan_terms(
    planned: PlannedModel,
    shape: StepShape,
    config: TrainConfig,
    strategy: str,
    gpus: int,
    checkpointing: bool,
    device_type: str = "cuda",
) -> Terms:
    """Bytes per GPU of one micro-batch of `shape` under `strategy` on `gpus` GPUs. One GPU runs
    the plain module (the trainer wraps nothing), whatever the strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    arc = planned.arc
    bf16 = config.uses_bf16(device_type)
    decoder_width = 2 if config.frozen_decoder_dtype(device_type) == "bf16" else 4
    param_width = 2 if bf16 else 4  # what FSDP2 gathers parameters in (MixedPrecisionPolicy)
    own = [p for n, p in arc.named_parameters() if not n.startswith("decoders.")]
    trained = [p for p in own if p.requires_grad]
    n_trained, n_frozen_own = count(trained), count(p for p in own if not p.requires_grad)
    n_decoders = count(arc.decoders.parameters())
    terms = Terms()
    sharded = strategy == "fsdp" and gpus > 1
    shard_decoders = sharded and config.fsdp_decoders == "shard"
    terms.weights = (4 * (n_trained + n_frozen_own)) // (gpus if sharded else 1)
    terms.weights += (decoder_width * n_decoders) // (gpus if shard_decoders else 1)
    terms.gradients = 4 * n_trained // (gpus if sharded else 1)
    terms.optimizer = 2 * 4 * n_trained // (gpus if sharded else 1)
    if sharded:
        blocks = list(arc.encoder.layers) + (
            [layer for d in arc.decoders for layer in d.base_model.layers] if shard_decoders else []
        )
        in_blocks = {id(p) for layer in blocks for p in layer.parameters()}
        sharded_params = own + (list(arc.decoders.parameters()) if shard_decoders else [])
        root = [p for p in sharded_params if id(p) not in in_blocks]
        largest = max(count(layer.parameters()) for layer in blocks)
        largest_trained = max(count(p for p in layer.parameters() if p.requires_grad) for layer in blocks)
        # the root's parameters stay gathered through the step; two blocks are gathered at once
        # (the one running, the one prefetched); a block's full gradients wait for their
        # reduce-scatter (in the gathered dtype, then float32)
        terms.detail["fsdp_root_gathered"] = param_width * count(root)
        terms.detail["fsdp_blocks_gathered"] = 2 * param_width * largest
        terms.detail["fsdp_block_gradients"] = (param_width + 4) * largest_trained
    else:
        if strategy == "ddp" and gpus > 1:
            terms.detail["ddp_buckets"] = 4 * n_trained  # gradients are copied into flat buckets to all-reduce
        if bf16:  # autocast keeps a bf16 copy of every trained weight a matmul reads, until the step ends
            embeddings = {id(p) for m in arc.encoder.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
            terms.detail["autocast_weight_copies"] = 2 * count(p for p in trained if id(p) not in embeddings)
    terms.buffers = sum(terms.detail.values())
    terms.activations, parts = activation_bytes(planned, shape, bf16, decoder_width, checkpointing)
    terms.detail.update({f"activations_{k}": v for k, v in parts.items()})
    return terms


@dataclass
class Plan:
    strategy: str
    checkpointing: bool
    task: str  # the batch shape that peaks
    terms: Terms

    @property
    def gib(self) -> float:
        return self.terms.total / GIB


def make_plans(planned: PlannedModel, shapes: list[StepShape], config: TrainConfig, gpus: int, device_type="cuda"):
    """Every strategy with and without activation checkpointing, each at its peaking shape."""
    plans = []
    for strategy in STRATEGIES:
        for checkpointing in (False, True):
            by_shape = [(plan_terms(planned, s, config, strategy, gpus, checkpointing, device_type), s) for s in shapes]
            terms, shape = max(by_shape, key=lambda t: t[0].total)
            plans.append(Plan(strategy, checkpointing, shape.task, terms))
    return plans


def trained_and_frozen(planned: PlannedModel) -> tuple[int, int]:
    params = list(planned.arc.parameters())
    return count(p for p in params if p.requires_grad), count(p for p in params if not p.requires_grad)
