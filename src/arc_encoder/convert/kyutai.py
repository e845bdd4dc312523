"""The released Kyutai ARC-Encoders <-> this library's saved format (method.md §7.3, §9).

Two official layouts exist:

* the hub export (`kyutai/ARC8_Encoder_Llama` ...): `config.json` + `model.safetensors` whose keys
  start with `embedder.` (encoder blocks, special tokens) or `bridge_module.` (projectors);
* the converted training folder: `params.json`, `embedder/consolidated.safetensors` and
  `bridge_module/consolidated.safetensors` with the same names, prefixes stripped.

The encoder is a Meta-style Llama stack. Our encoder runs Hugging Face Llama blocks, which rotate
half-split pairs (dims k, k + head_dim/2) where Meta rotates interleaved pairs (dims 2k, 2k + 1), so
the rows of wq and wk are permuted per head (method.md §9.2). RoPE frequencies are the plain
`theta^(-2k/head_dim)`: the official code never applied Llama-3 frequency scaling (method.md §13.12).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import write_folder, write_json
from ..config import ARCConfig
from ..model.saved import CONFIG_FILE, ENCODER_DIR, WEIGHTS_FILE, read_saved_config, write_saved_model
from ..model.weights import check_tensors, read_weights

HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"
PARAMS_FILE = "params.json"
EMBEDDER_FILE = Path("embedder") / "consolidated.safetensors"
BRIDGE_FILE = Path("bridge_module") / "consolidated.safetensors"

# Official name inside `layers.{i}.` -> Hugging Face Llama name inside `layers.{i}.`.
BLOCK_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
HF_BLOCK_NAMES = {hf: official for official, hf in BLOCK_NAMES.items()}

LLAMA_DECODER = "meta-llama/Llama-3.1-8B"
MISTRAL_DECODER = "mistralai/Mistral-7B-v0.3"
RELEASED_BACKBONE = "meta-llama/Llama-3.2-3B"
# The official RoPE table holds 128,000 positions.
MAX_POSITIONS = 128_000


@dataclass
class ModelArgs:
    """The official encoder backbone arguments (the full backbone, before truncation)."""

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    rope_theta: float

    @classmethod
    def from_dict(cls, values: dict, source: str) -> ModelArgs:
        """Accept the official `ModelArgs` fields or Meta's original `params.json` (where
        `head_dim` and `hidden_dim` are derived from `dim`, `multiple_of`, `ffn_dim_multiplier`)."""
        values = dict(values)
        for name in ("dim", "n_layers", "n_heads", "norm_eps", "vocab_size"):
            if values.get(name) is None:
                raise ValueError(f"{source}: model arguments lack {name!r} (have {sorted(values)})")
        if values.get("n_kv_heads") is None:
            values["n_kv_heads"] = values["n_heads"]
        if values.get("head_dim") is None:
            values["head_dim"] = values["dim"] // values["n_heads"]
        if values.get("hidden_dim") is None:
            if "multiple_of" not in values:
                raise ValueError(f"{source}: model arguments give neither hidden_dim nor multiple_of")
            # Meta's SwiGLU width rule (method.md §1)
            hidden = int(2 * 4 * values["dim"] / 3)
            if values.get("ffn_dim_multiplier") is not None:
                hidden = int(values["ffn_dim_multiplier"] * hidden)
            step = values["multiple_of"]
            values["hidden_dim"] = step * ((hidden + step - 1) // step)
        if values.get("rope_theta") is None:
            values["rope_theta"] = 1_000_000.0  # the official fallback when none is given
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# The backbone of every released encoder (method.md §1); used when a folder does not say.
LLAMA_3_2_3B = ModelArgs(
    dim=3072,
    n_layers=28,
    head_dim=128,
    hidden_dim=8192,
    n_heads=24,
    n_kv_heads=8,
    norm_eps=1e-5,
    vocab_size=128256,
    rope_theta=500000.0,
)


# --------------------------------------------------------------------------------- RoPE layout
def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[heads*hd, in] Meta rows (pairs 2k, 2k+1) -> HF rows (pairs k, k+hd/2), per head."""
    rows, cols = weight.shape
    hd = rows // n_heads
    if hd * n_heads != rows or hd % 2:
        raise ValueError(f"cannot split {rows} rows into {n_heads} heads of even size")
    return weight.reshape(n_heads, hd // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half`."""
    rows, cols = weight.shape
    hd = rows // n_heads
    if hd * n_heads != rows or hd % 2:
        raise ValueError(f"cannot split {rows} rows into {n_heads} heads of even size")
    return weight.reshape(n_heads, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols)


# --------------------------------------------------------------------------------- reading
@dataclass
class OfficialCheckpoint:
    layout: str  # "hub" or "converted"
    encoder: dict[str, torch.Tensor]  # tok_embeddings.weight, layers.{i}.<official name>
    special: dict[tuple[str, int], torch.Tensor]  # ("rec" | "cont", slot) -> [1, dim]
    bridges: dict[tuple[str, int], torch.Tensor]  # ("layer1" | "layer2", slot) -> weight
    model_args: dict | None
    embedder_args: dict | None
    bridge_args: dict | None
    extra: dict  # what our exporter recorded (backbone, decoders), if anything

    @property
    def slots(self) -> int:
        return 1 + max(k for _, k in self.bridges)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _section(values: dict, *names: str) -> dict | None:
    for name in names:
        found = values.get(name)
        if isinstance(found, dict):
            return found
    return None


def detect_layout(src: Path) -> str:
    if (src / PARAMS_FILE).is_file() and ((src / "embedder").is_dir() or (src / "bridge_module").is_dir()):
        return "converted"
    if (src / HUB_CONFIG).is_file() and (src / HUB_WEIGHTS).is_file():
        return "hub"
    hint = ""
    if (src / CONFIG_FILE).is_file():
        hint = f" ({src} holds {CONFIG_FILE}: it is already in this library's format)"
    elif (src / HUB_WEIGHTS).is_file() or (src / HUB_CONFIG).is_file():
        hint = f" (the hub layout needs both {HUB_CONFIG} and {HUB_WEIGHTS})"
    raise ValueError(
        f"{src} is not an official ARC-Encoder checkpoint{hint}: expected either the hub export "
        f"({HUB_CONFIG} + {HUB_WEIGHTS}) or the converted folder ({PARAMS_FILE}, {EMBEDDER_FILE}, "
        f"{BRIDGE_FILE})"
    )


def read_official(src: str | Path) -> OfficialCheckpoint:
    """Read either official layout into official (prefix-free) tensor names."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    layout = detect_layout(src)
    if layout == "hub":
        config = _read_json(src / HUB_CONFIG)
        config = _section(config, "config") or config  # some exporters nest the arguments
        state = read_weights(src / HUB_WEIGHTS)
        embedder, bridge, unknown = {}, {}, []
        for key, value in state.items():
            if key.startswith("embedder."):
                embedder[key[len("embedder.") :]] = value
            elif key.startswith("bridge_module."):
                bridge[key[len("bridge_module.") :]] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"{src / HUB_WEIGHTS}: unknown key(s) {sorted(unknown)[:8]}; expected "
                "names starting with 'embedder.' or 'bridge_module.'"
            )
        model_args = _section(config, "model_args")
        embedder_args = _section(config, "embedder_args", "embedder_params")
        bridge_args = _section(config, "bridge_args", "bridge_module")
        extra = {}
    else:
        params = _read_json(src / PARAMS_FILE)
        embedder = read_weights(src / EMBEDDER_FILE)
        bridge = read_weights(src / BRIDGE_FILE)
        model_args = _section(params, "model_args")
        embedder_args = _section(params, "embedder_params", "embedder_args")
        bridge_args = _section(params, "bridge_module", "bridge_args")
        extra = _section(params, "arc_encoder") or {}
    encoder, special = _split_embedder(embedder, src)
    bridges = _split_bridge(bridge, src)
    return OfficialCheckpoint(layout, encoder, special, bridges, model_args, embedder_args, bridge_args, extra)


_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_SPECIAL = re.compile(r"(rec_tok|cont_tok)(?:\.(\d+))?\.weight")
_BRIDGE = re.compile(r"(?:(\d+)\.)?(layer1|layer2)\.weight")


def _split_embedder(state: dict[str, torch.Tensor], src: Path):
    encoder, special, unknown = {}, {}, []
    for key, value in state.items():
        layer = _LAYER.fullmatch(key)
        tok = _SPECIAL.fullmatch(key)
        if key.startswith("mem_embeddings"):
            raise ValueError(
                f"{src}: memory-token checkpoints ({key}) are not supported by this "
                "converter; the released encoders use pooling"
            )
        if key == "tok_embeddings.weight" or (layer and layer.group(2) in BLOCK_NAMES):
            encoder[key] = value
        elif tok:
            # old single-decoder checkpoints have no slot index: that is slot 0
            special[("rec" if tok.group(1) == "rec_tok" else "cont", int(tok.group(2) or 0))] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{src}: unknown encoder key(s) {sorted(unknown)[:8]}")
    return encoder, special


def _split_bridge(state: dict[str, torch.Tensor], src: Path):
    bridges, unknown, indexed = {}, [], set()
    for key, value in state.items():
        match = _BRIDGE.fullmatch(key)
        if not match:
            unknown.append(key)
            continue
        indexed.add(match.group(1) is not None)
        bridges[(match.group(2), int(match.group(1) or 0))] = value
    if unknown:
        raise ValueError(
            f"{src}: unknown projector key(s) {sorted(unknown)[:8]}; expected "
            "layer1.weight / layer2.weight, or {k}.layer1.weight per decoder"
        )
    if not bridges:
        raise ValueError(f"{src}: no projector weights (bridge_module) found")
    if len(indexed) > 1:
        raise ValueError(f"{src}: projector keys mix single-decoder and per-decoder names")
    return bridges


# --------------------------------------------------------------------------------- checking
def official_encoder_shapes(args: ModelArgs, kept: int) -> dict[str, tuple]:
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    block = {
        "attention.wq.weight": (q, args.dim),
        "attention.wk.weight": (kv, args.dim),
        "attention.wv.weight": (kv, args.dim),
        "attention.wo.weight": (args.dim, q),
        "feed_forward.w1.weight": (args.hidden_dim, args.dim),
        "feed_forward.w3.weight": (args.hidden_dim, args.dim),
        "feed_forward.w2.weight": (args.dim, args.hidden_dim),
        "attention_norm.weight": (args.dim,),
        "ffn_norm.weight": (args.dim,),
    }
    shapes = {"tok_embeddings.weight": (args.vocab_size, args.dim)}
    for i in range(kept):
        shapes.update({f"layers.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def pooling_from_official(embedder_args: dict) -> tuple[str, list[int]]:
    """Official pooling arguments -> our (pooling mode, pooling_factors), or a clear refusal."""
    module = embedder_args.get("pooling_module") or {}
    pool_type = module.get("pool_type", "mean_pooled_queries")
    where = module.get("where", "before")
    if embedder_args.get("memory_tokens", 0):
        raise ValueError("memory-token checkpoints are not supported by this converter")
    if where != "before":
        raise ValueError(
            f"pooling where={where!r} is not supported: this library pools before the block (where='before')"
        )
    mode = pool_type.removesuffix("_pooled_queries")
    if not pool_type.endswith("_pooled_queries") or mode not in ("mean", "last"):
        raise ValueError(
            f"pool_type {pool_type!r} is not supported: this library implements "
            "'mean_pooled_queries' and 'last_pooled_queries' (pooled queries attend the unpooled keys)"
        )
    factors = []
    for rate in embedder_args.get("compress_rates", []):
        if not isinstance(rate, int) or rate >= 0:
            raise ValueError(
                f"compress rate {rate!r} is not supported: only negative rates (pool by "
                "|rate|, -1 = no pooling) map to pooling factors"
            )
        factors.append(-rate)
    return mode, factors


# --------------------------------------------------------------------------------- import
def _default_decoders(src: Path, slots: int) -> list[str]:
    if slots == 2:
        return [LLAMA_DECODER, MISTRAL_DECODER]  # the released multi-decoder order (method.md §9.1)
    if slots == 1:
        for part in reversed(src.resolve().parts):
            # a --local-dir named after the repository, or the hub cache's models--kyutai--...
            match = re.search(r"(?:^|-)arc\d+_encoder_(llama|mistral)$", part.lower())
            if match:
                return [LLAMA_DECODER if match.group(1) == "llama" else MISTRAL_DECODER]
    raise ValueError(
        f"cannot tell which decoder(s) {src} was trained for: pass --decoder "
        f"(one per projector; this checkpoint has {slots})"
    )


def _decoder_width(decoder: str) -> int | None:
    config = Path(decoder).expanduser() / "config.json"
    if not config.is_file():
        return None  # a hub name: checked when the model is loaded
    values = _read_json(config)
    values = values.get("text_config") or values
    return values.get("hidden_size")


def _rope_is_llama3(values: dict) -> bool:
    for key in ("rope_scaling", "rope_parameters"):
        rope = values.get(key)
        if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) == "llama3":
            return True
    return False


def unscaled_rope_view(decoder_dir: str | Path, target: str | Path) -> Path:
    """Make `target` a copy of a local decoder folder whose config has no Llama-3 RoPE scaling:
    config.json is rewritten, every other file is a symlink to the original.

    The official code ran Llama-3.1-8B with plain RoPE (method.md §9.3); loading the decoder from this
    view reproduces that.
    """
    decoder_dir, target = Path(decoder_dir).expanduser().resolve(), Path(target)
    values = _read_json(decoder_dir / "config.json")
    theta = values.get("rope_theta")
    if theta is None and isinstance(values.get("rope_parameters"), dict):
        theta = values["rope_parameters"].get("rope_theta")
    if theta is None:
        raise ValueError(f"{decoder_dir}/config.json has no rope_theta")
    values.pop("rope_scaling", None)
    if "rope_parameters" in values:  # a config saved by transformers >= 5
        values["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        values["rope_theta"] = theta
    target.mkdir(parents=True, exist_ok=False)
    for entry in decoder_dir.iterdir():
        if entry.name != "config.json":
            (target / entry.name).symlink_to(entry)
    (target / "config.json").write_text(json.dumps(values, indent=2))
    return target


def _encoder_hf_config(args: ModelArgs, kept: int, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=kept,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        rms_norm_eps=args.norm_eps,
        max_position_embeddings=MAX_POSITIONS,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        use_cache=False,
        # plain RoPE: the released encoders were trained without Llama-3 scaling
        rope_parameters={"rope_type": "default", "rope_theta": float(args.rope_theta)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def _refuse_non_empty(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} already exists and is not empty; choose a new folder")


def _official_depth(ckpt, backbone_params, where: str) -> tuple[ModelArgs, int, dict]:
    """The backbone's arguments, how many of its blocks the encoder keeps, the embedder's
    arguments; the encoder's tensors checked against them."""
    assumed = False
    if backbone_params is not None:
        args = ModelArgs.from_dict(_read_json(Path(backbone_params)), str(backbone_params))
    elif ckpt.model_args is not None:
        args = ModelArgs.from_dict(ckpt.model_args, where)
    else:
        args, assumed = LLAMA_3_2_3B, True
    embedder_args = dict(ckpt.embedder_args or {})
    indices = {int(_LAYER.fullmatch(k).group(1)) for k in ckpt.encoder if k.startswith("layers.")}
    if "n_truncated_layers" in embedder_args:
        kept = args.n_layers - int(embedder_args["n_truncated_layers"])
    else:
        kept = max(indices) + 1 if indices else 0
    if kept < 1:
        raise ValueError(
            f"{where}: the configuration keeps no encoder block "
            f"(n_layers={args.n_layers}, n_truncated_layers="
            f"{embedder_args.get('n_truncated_layers')})"
        )
    hint = (
        (
            "\n  (the checkpoint records no model arguments, so Llama-3.2-3B's were assumed; "
            "pass --backbone-params with the backbone's params.json)"
        )
        if assumed
        else ""
    )
    check_tensors(ckpt.encoder, official_encoder_shapes(args, kept), f"{where} encoder", hint)
    return args, kept, embedder_args


def _official_pooling(embedder_args: dict, pooling_factor: int | None, kept: int, where: str):
    """(pooling mode, factor per block, causal) of an official encoder."""
    if pooling_factor is not None:
        if pooling_factor < 1:
            raise ValueError(f"pooling factor must be >= 1, got {pooling_factor}")
        rates = embedder_args.get("compress_rates")
        if rates is not None and len(rates) > 1:
            raise ValueError(
                f"{where} pools in {len(rates)} blocks ({rates}); a single pooling "
                "factor can only override a one-block schedule"
            )
        embedder_args["compress_rates"] = [-pooling_factor]
    elif "compress_rates" not in embedder_args:
        raise ValueError(
            f"{where} does not record its pooling (embedder compress_rates); pass "
            "--pooling-factor (8 for ARC8_*, 4 for ARC4_*)"
        )
    mode, factors = pooling_from_official(embedder_args)
    if len(factors) > kept:
        raise ValueError(f"{where}: {len(factors)} compress rates for {kept} encoder blocks")
    causal = bool(embedder_args.get("causal_embedder", False))
    if causal and any(f > 1 for f in factors):
        warnings.warn(
            "this checkpoint was trained with a causal encoder; the official pooled block lets "
            "pooled query j see keys 0..j only (method.md §2.3, a bug), while this library lets it see "
            "keys up to the end of its group, so outputs of the pooled block will differ",
            stacklevel=3,
        )
    return mode, factors, causal


def _official_projectors(ckpt, dim: int, embedder_args: dict, where: str) -> tuple[int, list[int], list[str]]:
    """(bottleneck width, output width per decoder slot, special-token kinds); shapes checked."""
    slots = ckpt.slots
    bottleneck = ckpt.bridges.get(("layer1", 0), torch.empty(0, dim)).shape[0]
    bridge_shapes, dims = {}, []
    for k in range(slots):
        layer2 = ckpt.bridges.get(("layer2", k))
        out = layer2.shape[0] if layer2 is not None and layer2.ndim == 2 else 0
        dims.append(out)
        bridge_shapes[f"{k}.layer1.weight"] = (bottleneck, dim)
        bridge_shapes[f"{k}.layer2.weight"] = (out, bottleneck)
    check_tensors(
        {f"{k}.{name}.weight": v for (name, k), v in ckpt.bridges.items()}, bridge_shapes, f"{where} projectors"
    )
    if ckpt.bridge_args:
        for name, want in (("in_dim", dim), ("hidden_dim", bottleneck), ("out_dim", dims[0])):
            have = ckpt.bridge_args.get(name)
            if have is not None and have != want:
                raise ValueError(f"{where}: bridge {name}={have} in the configuration, but the weights say {want}")
    kinds = sorted({kind for kind, _ in ckpt.special})
    for kind, flag in (("rec", "rec_tok"), ("cont", "cont_tok")):
        if embedder_args.get(flag) is True and kind not in kinds:
            raise ValueError(f"{where}: the configuration sets {flag} but the weights hold no {flag} tensors")
    special_shapes = {f"{kind}_tok.{k}.weight": (1, dim) for kind in kinds for k in range(slots)}
    check_tensors(
        {f"{kind}_tok.{k}.weight": v for (kind, k), v in ckpt.special.items()},
        special_shapes,
        f"{where} special tokens",
    )
    return bottleneck, dims, kinds


def _slot_decoders(decoders: list[str] | None, ckpt, src: Path, dims: list[int], where: str) -> list[str]:
    """The decoder of each projector slot: as given, or as recorded; widths checked."""
    slots = ckpt.slots
    if decoders:
        # local folders are recorded as absolute paths: the model may be loaded from elsewhere
        decoders = [str(Path(d).expanduser().resolve()) if Path(d).expanduser().is_dir() else str(d) for d in decoders]
        if len(decoders) != slots:
            raise ValueError(
                f"{where} has {slots} projector(s), one per decoder; got {len(decoders)} --decoder value(s)"
            )
    else:
        decoders = list(ckpt.extra.get("decoders") or []) or _default_decoders(src, slots)
        if len(decoders) != slots:
            raise ValueError(f"{where} records {len(decoders)} decoder(s) for {slots} projector(s)")
    for k, (decoder, width) in enumerate(zip(decoders, dims)):
        have = _decoder_width(decoder)
        if have is not None and have != width:
            raise ValueError(f"decoder {k} ({decoder}) has width {have}, but projector {k} of {where} outputs {width}")
    return decoders


def import_kyutai(
    src: str | Path,
    dst: str | Path,
    tokenizer: str | Path,
    decoders: list[str] | None = None,
    backbone_params: str | Path | None = None,
    pooling_factor: int | None = None,
    unscaled_rope: bool = False,
) -> dict:
    """Convert an official ARC-Encoder checkpoint into a folder `ARCModel.from_pretrained` loads.

    tokenizer: a Hugging Face tokenizer folder for the encoder (Llama-3.2-3B's for the releases).
    decoders: decoder name or folder per projector slot (multi: Llama-3.1-8B, then Mistral-7B).
    backbone_params: the backbone's model arguments (official or Meta params.json) when the
        checkpoint does not record them; the Llama-3.2-3B values are assumed otherwise.
    pooling_factor: pool by this factor in the last block, overriding the recorded rates (the
        official `comp_rate` inference override).
    unscaled_rope: write, for each local decoder folder with Llama-3 RoPE scaling, a view of it
        without that scaling (method.md §9.3) and record the view as the decoder.
    Returns a summary of what was written.
    """
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    ckpt = read_official(src)
    where = f"{src} ({ckpt.layout} layout)"

    args, kept, embedder_args = _official_depth(ckpt, backbone_params, where)
    mode, factors, causal = _official_pooling(embedder_args, pooling_factor, kept, where)
    slots, dim = ckpt.slots, args.dim
    bottleneck, dims, kinds = _official_projectors(ckpt, dim, embedder_args, where)
    decoders = _slot_decoders(decoders, ckpt, src, dims, where)

    # ---- tokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer), split_special_tokens=True)
    if len(tok) > args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer} has {len(tok)} tokens, more than the encoder's {args.vocab_size} embeddings"
        )

    # ---- our weights
    state = {"encoder.embed_tokens.weight": ckpt.encoder["tok_embeddings.weight"]}
    for i in range(kept):
        for official, hf in BLOCK_NAMES.items():
            w = ckpt.encoder[f"layers.{i}.{official}"]
            if official == "attention.wq.weight":
                w = interleaved_to_half(w, args.n_heads)
            elif official == "attention.wk.weight":
                w = interleaved_to_half(w, args.n_kv_heads)
            state[f"encoder.layers.{i}.{hf}"] = w.contiguous()
    for k in range(slots):
        state[f"adapters.{k}.down.weight"] = ckpt.bridges[("layer1", k)]
        state[f"adapters.{k}.up.weight"] = ckpt.bridges[("layer2", k)]
        for kind in ("rec", "cont"):  # [1, dim] official embedding -> our [dim] vector
            ones = torch.ones(1, dim, dtype=ckpt.bridges[("layer1", k)].dtype)  # our init, unused
            state[f"adapters.{k}.{kind}"] = ckpt.special.get((kind, k), ones)[0].contiguous()

    backbone = (
        RELEASED_BACKBONE if args == LLAMA_3_2_3B else str(ckpt.extra.get("backbone") or Path(tokenizer).resolve())
    )
    _refuse_non_empty(dst)

    def write(staging: Path) -> None:
        if unscaled_rope:
            for k, decoder in enumerate(decoders):
                folder = Path(decoder).expanduser()
                if not (folder / "config.json").is_file():
                    raise ValueError(f"--unscaled-rope needs local decoder folders; {decoder!r} is not one")
                if _rope_is_llama3(_read_json(folder / "config.json")):
                    unscaled_rope_view(folder, staging / "decoders" / str(k))
                    decoders[k] = str((dst / "decoders" / str(k)).resolve())
        config = ARCConfig(
            backbone=backbone,
            drop_layers=args.n_layers - kept,
            causal=causal,
            pooling=mode,
            pooling_factors=factors,
            decoders=decoders,
            bottleneck=bottleneck,
            special_tokens=bool(kinds),
        )
        write_saved_model(staging, state, config, dims, _encoder_hf_config(args, kept, tok), tok)

    write_folder(dst, write)
    return {
        "dst": str(dst),
        "layout": ckpt.layout,
        "decoders": decoders,
        "encoder_blocks": kept,
        "drop_layers": args.n_layers - kept,
        "pooling": mode,
        "pooling_factors": factors,
        "causal": causal,
        "bottleneck": bottleneck,
        "decoder_dims": dims,
        "dtype": str(ckpt.encoder["tok_embeddings.weight"].dtype).removeprefix("torch."),
    }


# --------------------------------------------------------------------------------- export
def _check_exportable(src: Path, hf, config: ARCConfig, dims: list[int]) -> None:
    """Refuse what the official encoder cannot express, naming it."""
    if hf.model_type not in ("llama", "mistral"):
        raise ValueError(
            f"the official ARC-Encoder code runs Llama-architecture encoders only; "
            f"{src} has a {hf.model_type!r} backbone"
        )
    if hf.model_type == "mistral" and getattr(hf, "sliding_window", None):
        raise ValueError(f"{src}: the official encoder has no sliding-window attention")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError(f"{src}: the official encoder has no attention or MLP biases")
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ValueError(f"{src}: the official encoder uses SiLU, this one {hf.hidden_act!r}")
    rope = getattr(hf, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{src}: the official encoder has plain RoPE only, this one uses {rope.get('rope_type')!r} scaling"
        )
    if config.pooling not in ("mean", "last"):
        raise ValueError(
            f"{src}: pooling {config.pooling!r} cannot be exported; the official "
            "format here covers mean and last pooled queries"
        )
    if config.causal and any(f > 1 for f in config.pooling_factors):
        raise ValueError(
            f"{src}: a causal encoder with pooling cannot be exported faithfully: the "
            "official pooled block masks keys differently (method.md §2.3)"
        )
    if config.bottleneck is None:
        raise ValueError(
            f"{src}: the official projector is a two-layer bottleneck; this model has one linear map (bottleneck: null)"
        )
    recipe = {"pooled_receptive_field": None, "pooled_positions": "index", "projector_input": "raw"}
    changed = {k: getattr(config, k) for k, v in recipe.items() if getattr(config, k) != v}
    if changed:
        raise ValueError(f"{src}: the official encoder has no equivalent of {changed}; only {recipe} can be exported")
    if len(set(dims)) > 1:
        raise ValueError(
            f"{src}: the official multi-decoder projector has one output width, these decoders differ ({dims})"
        )


def export_kyutai(src: str | Path, dst: str | Path) -> dict:
    """Write one of our Llama-family encoders in the official converted-folder layout.

    The official loader reads `params.json` (pipeline arguments) and the two consolidated files;
    it takes the backbone's model arguments from the backbone folder, so we also record them under
    `model_args` (ignored there, read back by `import_kyutai`).
    """
    from transformers import AutoConfig

    src, dst = Path(src), Path(dst)
    meta, config = read_saved_config(src)
    hf = AutoConfig.from_pretrained(src / ENCODER_DIR)
    hf = getattr(hf, "text_config", None) or hf

    dims = list(meta["decoder_dims"])
    _check_exportable(src, hf, config, dims)
    rope = getattr(hf, "rope_parameters", None) or {}

    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv_heads = hf.num_key_value_heads or hf.num_attention_heads
    kept = hf.num_hidden_layers
    args = ModelArgs(
        dim=hf.hidden_size,
        n_layers=kept + config.drop_layers,
        head_dim=head_dim,
        hidden_dim=hf.intermediate_size,
        n_heads=hf.num_attention_heads,
        n_kv_heads=kv_heads,
        norm_eps=float(hf.rms_norm_eps),
        vocab_size=hf.vocab_size,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
    )
    slots = len(config.decoders)

    state = read_weights(src / WEIGHTS_FILE)
    expected = {"encoder.embed_tokens.weight": (args.vocab_size, args.dim)}
    for name, shape in official_encoder_shapes(args, kept).items():
        layer = _LAYER.fullmatch(name)
        if layer:
            expected[f"encoder.layers.{layer.group(1)}.{BLOCK_NAMES[layer.group(2)]}"] = shape
    for k in range(slots):
        expected[f"adapters.{k}.down.weight"] = (config.bottleneck, args.dim)
        expected[f"adapters.{k}.up.weight"] = (dims[k], config.bottleneck)
        expected[f"adapters.{k}.rec"] = (args.dim,)
        expected[f"adapters.{k}.cont"] = (args.dim,)
    check_tensors(state, expected, f"{src / WEIGHTS_FILE}")

    embedder = {"tok_embeddings.weight": state["encoder.embed_tokens.weight"]}
    for i in range(kept):
        for hf_name, official in HF_BLOCK_NAMES.items():
            w = state[f"encoder.layers.{i}.{hf_name}"]
            if official == "attention.wq.weight":
                w = half_to_interleaved(w, args.n_heads)
            elif official == "attention.wk.weight":
                w = half_to_interleaved(w, args.n_kv_heads)
            embedder[f"layers.{i}.{official}"] = w.contiguous()
    bridge = {}
    for k in range(slots):
        if config.special_tokens:
            embedder[f"rec_tok.{k}.weight"] = state[f"adapters.{k}.rec"][None].clone()
            embedder[f"cont_tok.{k}.weight"] = state[f"adapters.{k}.cont"][None].clone()
        prefix = f"{k}." if slots > 1 else ""
        bridge[f"{prefix}layer1.weight"] = state[f"adapters.{k}.down.weight"]
        bridge[f"{prefix}layer2.weight"] = state[f"adapters.{k}.up.weight"]

    dtype = str(state["encoder.embed_tokens.weight"].dtype).removeprefix("torch.")
    params = {
        "param_dtype": dtype,
        "embedder_params": {
            "n_truncated_layers": config.drop_layers,
            "pooling_module": {"pool_type": f"{config.pooling}_pooled_queries", "where": "before"},
            "memory_tokens": 0,
            "rec_tok": config.special_tokens,
            "cont_tok": config.special_tokens,
            "compress_rates": [-f for f in config.pooling_factors],
            "trained_layers": kept,  # every block is in the file
            "causal_embedder": config.causal,
            "train_embedding_mtx": True,
        },
        "bridge_module": {
            "bridge_type": "multi_module" if slots > 1 else "mlp",
            "in_dim": args.dim,
            "hidden_dim": config.bottleneck,
            "out_dim": dims[0],
        },
        "model_args": asdict(args),
        "arc_encoder": {"backbone": config.backbone, "decoders": config.decoders},
    }
    _refuse_non_empty(dst)

    def write(staging: Path) -> None:
        (staging / EMBEDDER_FILE.parent).mkdir()
        (staging / BRIDGE_FILE.parent).mkdir()
        save_file(embedder, str(staging / EMBEDDER_FILE))
        save_file(bridge, str(staging / BRIDGE_FILE))
        write_json(staging / PARAMS_FILE, params, indent=4)

    write_folder(dst, write)
    return {
        "dst": str(dst),
        "encoder_blocks": kept,
        "decoders": config.decoders,
        "compress_rates": params["embedder_params"]["compress_rates"],
        "dtype": dtype,
    }
