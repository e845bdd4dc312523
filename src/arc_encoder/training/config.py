"""Training configuration: typed dataclasses, read from YAML, overridable from the command line.

    arc-encoder train configs/smollm2-arc4-default.yaml optim.lr_encoder=1e-4 steps=200

Every section is a dataclass; a key that is not a field is an error naming the key and its section,
and every value is checked against the field's type. The `data` section (and each `data_mix` entry)
is the exception: it is a plain mapping handed to the data pipeline of its `kind`, which validates
it. `${VAR}` and `${VAR:-default}` inside strings are replaced by environment variables when the
file is read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..atomic import write_text
from ..config import PRESETS, ARCConfig, build, coerce, typed_fields
from ..data import FinetuneDataConfig, PretrainDataConfig
from ..data.batch import TASKS

DATA_CONFIGS = {"pretrain": PretrainDataConfig, "finetune": FinetuneDataConfig}  # data.kind -> its config
DATA_KINDS = tuple(DATA_CONFIGS)


@dataclass
class ModelConfig:
    # Start from a preset (see arc_encoder.config.PRESETS) ...
    preset: str | None = None
    # ... or from a saved model folder: its config, and its weights as the starting point. The
    # pooling factor (and the decoders) may differ from the saved model's: pooling has no weights.
    init_from: str | None = None
    # ARCConfig fields set on top of the preset / the saved model's config.
    arc: dict[str, Any] = field(default_factory=dict)
    # Decoders the saved model does not have start with fresh projectors; their <Rec>/<Cont> are
    # copied from this decoder index of the saved model (paper 7.5: 0), or start at ones if None.
    new_special_from: int | None = None
    # ... and their projectors start from this saved decoder's, carried into the new decoder's
    # embedding space through the tokens both vocabularies spell alike (projector_init.py), times
    # `new_projector_scale`; None: a fresh random projector.
    new_projector_from: int | None = None
    new_projector_scale: float = 1.0
    # ... or start them from the adapters of the same decoders in this other saved model (matched by
    # name): a previous version's adapter for a second decoder, carried onto a retrained encoder and
    # trained on from there instead of from scratch.
    adapters_from: str | None = None
    # False: random backbone and decoder weights (tests, dry runs).
    pretrained: bool = True

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; presets: {sorted(PRESETS)}")
        hints = typing.get_type_hints(ARCConfig)
        unknown = sorted(set(self.arc) - set(hints))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in section 'model.arc'; known keys: {sorted(hints)}")
        self.arc = {k: coerce(v, hints[k], f"model.arc.{k}") for k, v in self.arc.items()}
        for key in ("new_special_from", "new_projector_from", "adapters_from"):
            if getattr(self, key) is not None and self.init_from is None:
                raise ValueError(f"model.{key} needs model.init_from")
        if not (math.isfinite(self.new_projector_scale) and self.new_projector_scale > 0):
            raise ValueError(f"model.new_projector_scale must be a finite number > 0, got {self.new_projector_scale}")


@dataclass
class OptimConfig:
    # Peak learning rates of the three AdamW parameter groups (method.md §13.3).
    lr_encoder: float = 1e-5
    lr_projector: float = 5e-5
    lr_special: float = 1e-5  # <Rec>/<Cont> (and memory tokens)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Warm-up from 0 to the peak over `warmup_steps`, then cosine decay to exactly `final_lr`.
    warmup_steps: int = 0
    warmup: Literal["linear", "cosine"] = "linear"
    final_lr: float = 0.0
    decay: Literal["cosine", "none"] = "cosine"  # "none": hold the peak after the warm-up
    grad_clip: float = 1.0  # global L2 norm; 0 turns clipping off
    grad_accum: int = 1  # micro-batches per optimizer step

    def __post_init__(self):
        numbers = {
            "lr_encoder": self.lr_encoder,
            "lr_projector": self.lr_projector,
            "lr_special": self.lr_special,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "final_lr": self.final_lr,
            "grad_clip": self.grad_clip,
            **{f"betas[{i}]": b for i, b in enumerate(self.betas)},
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"optim.{name} must be a finite number, got {value}")
        for name in ("lr_encoder", "lr_projector", "lr_special"):
            if getattr(self, name) <= 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.final_lr < 0 or self.eps <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.final_lr, weight_decay and grad_clip must be >= 0 and eps > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")


@dataclass
class DistillConfig:
    # Weight of the KL to the frozen decoder reading the documents as text (model/distill.py);
    # 0 turns distillation off. xRAG uses 2.0 at temperature 1.
    weight: float = 0.0
    temperature: float = 1.0
    # Batches of these tasks are distilled. Reconstruction is left out by default: the teacher
    # there only copies text it has just read, which the cross-entropy already asks for.
    tasks: list[str] = field(default_factory=lambda: ["continuation", "finetune"])
    # A folder of the teacher's top-k logits (model/teacher_cache.py, `arc-encoder distill-cache`)
    # read instead of running the teacher each step; the KL is then over those k tokens.
    cache: str | None = None
    k: int = 32  # top-k logits the cache stores (building) or the KL uses (training, <= stored)

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"distill.weight must be a finite number >= 0, got {self.weight}")
        if self.k < 1:
            raise ValueError(f"distill.k must be >= 1, got {self.k}")
        if self.cache is not None and not self.cache.strip():
            raise ValueError("distill.cache must be a folder path or null, got an empty string")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"distill.temperature must be a finite number > 0, got {self.temperature}")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"distill.tasks: unknown task(s) {unknown}; tasks: {list(TASKS)}")


@dataclass
class ContrastConfig:
    # Weight of a hinge on the content gap (model/contrast.py): every batch is read a second time
    # with each sample's document swapped for another's, and the loss pays while the right
    # document is worth less than `margin` nats per supervised token. 0 turns it off.
    weight: float = 0.0
    margin: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"contrast.weight must be a finite number >= 0, got {self.weight}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"contrast.margin must be a finite number > 0 (nats per token), got {self.margin}")


@dataclass
class LoraConfig:
    # LoRA on the encoder (training/lora.py, through peft): the blocks stay frozen and each
    # targeted linear layer learns a rank-`rank` update scaled by alpha / rank. 0 turns it off.
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    blocks: int | None = None  # adapt only the last k blocks (None: all); no backward below them
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"encoder_lora.rank must be >= 0 (0: off), got {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"encoder_lora.alpha must be a finite number > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"encoder_lora.dropout must be in [0, 1), got {self.dropout}")
        if self.blocks is not None and self.blocks < 1:
            raise ValueError(f"encoder_lora.blocks must be None or >= 1, got {self.blocks}")
        if not self.targets:
            raise ValueError("encoder_lora.targets must name at least one linear layer (e.g. q_proj)")


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (0: only at the end)
    keep: int = 3  # newest checkpoints kept

    def __post_init__(self):
        if self.every < 0 or self.keep < 1:
            raise ValueError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")


@dataclass
class EvalConfig:
    every: int = 0  # steps between held-out evaluations (0: never)
    batches: int = 10  # held-out batches per decoder, drawn once at the start
    # Keys replacing those of the `data` section to build the held-out pipeline (its files/split).
    data: dict[str, Any] = field(default_factory=dict)
    # Also let the decoder write the supervised tokens greedily from the vectors (evaluation/
    # content.py: tokens written at their place, exact spans, ROUGE-L; answers' EM/F1). Teacher
    # forcing overstates what it can copy. Not under FSDP, whose ranks must run as many forwards.
    greedy: bool = True

    def __post_init__(self):
        if self.every < 0 or self.batches < 1:
            raise ValueError("eval.every must be >= 0 and eval.batches >= 1")


@dataclass
class LogConfig:
    every: int = 10  # steps between metric records
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = False  # needs the `tensorboard` package
    plot: bool = True  # curves.png at the end

    def __post_init__(self):
        if self.every < 1:
            raise ValueError("log.every must be >= 1")


def check_pooling_schedule(schedule: list[list[int]], steps: int) -> None:
    """[[factor, until_step], ...] with factors >= 1 and until_steps increasing within (0, steps]."""
    last = 0
    for i, entry in enumerate(schedule):
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and all(isinstance(v, int) for v in entry)):
            raise ValueError(f"pooling_schedule[{i}] must be [factor, until_step] (two integers), got {entry!r}")
        factor, until = entry
        if factor < 1:
            raise ValueError(f"pooling_schedule[{i}]: factor must be >= 1, got {factor}")
        if not last < until <= steps:
            raise ValueError(
                f"pooling_schedule[{i}]: until_step {until} must be after the previous one ({last}) "
                f"and <= steps ({steps})"
            )
        last = until


def pooling_factor_at(schedule: list[list[int]], step: int) -> int | None:
    """The factor the schedule sets for optimizer step `step` (0-based), None past its end."""
    for factor, until in schedule:
        if step < until:
            return factor
    return None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Handed to the data pipeline of `kind` (pretrain | finetune); the trainer adds batch_size and seed.
    data: dict[str, Any] = field(default_factory=lambda: {"kind": "pretrain"})
    # More pipelines, each a data section with a `share` of the batches; `data` takes the rest
    # (data/mixture.py). E.g. reading batches of the same paragraphs beside the answers:
    # [{kind: pretrain, share: 0.2, sources: [...], objectives: {lookup: 1.0}}]. Held-out data
    # (`eval.data`) stays `data`'s.
    data_mix: list[dict[str, Any]] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # samples per micro-batch on each rank
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    # What the frozen decoders are stored in. auto: bf16 where bf16 autocast runs on a GPU (an 8B
    # decoder then takes 16 GB, not 32), fp32 elsewhere (a CPU computes fp32 faster). The trained
    # weights and their AdamW moments are fp32 whatever this says.
    decoder_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    activation_checkpointing: bool = False
    # torch.compile each encoder and decoder block (its forward; FSDP2's hooks stay outside). The
    # first steps pay the compilation; the numbers do not change beyond float reassociation.
    compile: bool = False
    # On a GPU, float32 matmuls outside bf16 autocast use TF32 tensor cores (10-bit mantissa, as
    # PyTorch's "high" float32 matmul precision); false keeps them exact. No effect on a CPU.
    tf32: bool = True
    # New-decoder adaptation: the encoder is frozen; projectors and special tokens train.
    freeze_encoder: bool = False
    # Train only the encoder's last k blocks (None: all). The embeddings and the blocks below stay
    # frozen, so the backward pass stops at block n-k: on CPU this buys steps.
    train_encoder_blocks: int | None = None
    encoder_lora: LoraConfig = field(default_factory=LoraConfig)  # instead of training the blocks
    # Keep the frozen lower encoder blocks' outputs per segment, up to this many MB (0: off), so a
    # document read again (SQuAD: ~5 questions per paragraph, plus the shots) runs only the trained
    # blocks (model/frozen_cache.py). Needs train_encoder_blocks, freeze_encoder or LoRA on the upper
    # blocks only; the numbers change by float rounding at most.
    frozen_block_cache_mb: float = 0.0
    # Pooling-factor curriculum: [[factor, until_step], ...], e.g. [[1, 25], [2, 50]] trains steps
    # 0-24 at x1, 25-49 at x2, then at the model's own factor. Content is easy to carry at a low
    # factor; the vectors then learn to pack more tokens without ever losing it. Evaluation and the
    # saved model always use the model's factor. Needs a model with one pooling block.
    pooling_schedule: list[list[int]] = field(default_factory=list)
    # How fresh projectors start (all of a fresh run's; under model.init_from those of decoders the
    # saved model does not know): "random" (paper), or "lstsq": the least-squares map, at pooling
    # factor 1, from the encoder's output at each token to the decoder's embedding of it (for
    # another vocabulary: of the token spelled alike), fitted on training batches before step 0
    # (training/projector_init.py). With pooling_schedule starting at x1 this is what makes
    # CPU-scale runs carry the document.
    projector_init: Literal["random", "lstsq"] = "random"
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used when WORLD_SIZE > 1
    # Under parallel: fsdp, the frozen decoders' blocks are sharded like the encoder's ("shard":
    # each GPU holds 1/N of them, gathered block by block), or every GPU keeps a whole copy
    # ("replicate": no gathers for them, at the memory of a full decoder per GPU).
    fsdp_decoders: Literal["shard", "replicate"] = "shard"
    # Which decoder a step trains (method.md §13.6): sampled with these weights (None: uniform),
    # or in turn with "round_robin". A weight of 0 leaves that decoder out.
    decoder_weights: list[float] | None = None
    decoder_order: Literal["sample", "round_robin"] = "sample"
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    out_dir: str = "runs/arc"
    # Stop early, with a checkpoint, once training has run this long (the schedule still spans
    # `steps`). For fixed wall-time budgets such as the quickstart. Distributed runs decide it
    # together at log steps (log.every), so they may run up to log.every - 1 steps over.
    time_limit_minutes: float | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.time_limit_minutes is not None and not 0 < self.time_limit_minutes < math.inf:
            raise ValueError(f"time_limit_minutes must be a positive number or null, got {self.time_limit_minutes}")
        if self.optim.warmup_steps >= self.steps:
            raise ValueError(f"optim.warmup_steps ({self.optim.warmup_steps}) must be < steps ({self.steps})")
        for section, values in self.data_sections():
            if values.get("kind") not in DATA_KINDS:
                raise ValueError(f"{section}.kind must be one of {DATA_KINDS}, got {values.get('kind')!r}")
        shares = [part.get("share") for part in self.data_mix]
        if any(not isinstance(s, int | float) or isinstance(s, bool) or not 0 < s < 1 for s in shares):
            raise ValueError(f"every data_mix entry needs a share in (0, 1), got {shares}")
        if shares and sum(shares) >= 1:
            raise ValueError(f"data_mix shares sum to {sum(shares)}: they must leave `data` a share > 0")
        if self.contrast.weight > 0 and self.distill.weight > 0:
            raise ValueError("contrast.weight and distill.weight are both set: a run trains with one of them")
        if self.contrast.weight > 0 and self.batch_size < 2:
            raise ValueError("contrast.weight needs batch_size >= 2: a sample's document is swapped for another's")
        starts = {  # the ways a new decoder's projector can start
            "projector_init=lstsq": self.projector_init == "lstsq",
            "model.new_projector_from": self.model.new_projector_from is not None,
            "model.adapters_from": self.model.adapters_from is not None,
        }
        starts = [key for key, chosen in starts.items() if chosen]
        if len(starts) > 1:
            raise ValueError(f"{', '.join(starts)}: each starts the new projectors; set one of them")
        # Checked now, not after the models have loaded: a typo costs a second, not a minute.
        if self.model.init_from is None:  # (a warm start's config is known once its folder is read)
            self.arc_config()
        for section, values in self.data_sections():
            self.data_config(section=section, check_only=True, values=values)
        if self.eval.every:
            self.data_config({"loop": False, **self.eval.data}, section="eval.data", check_only=True)
        if self.train_encoder_blocks is not None and self.train_encoder_blocks < 0:
            raise ValueError(f"train_encoder_blocks must be None or >= 0, got {self.train_encoder_blocks}")
        if not 0 <= self.frozen_block_cache_mb < math.inf:
            raise ValueError(
                f"frozen_block_cache_mb must be a finite number >= 0 (0: off), got {self.frozen_block_cache_mb}"
            )
        if self.frozen_block_cache_mb and not (
            self.freeze_encoder or self.train_encoder_blocks is not None or self.encoder_lora.rank
        ):
            raise ValueError(
                "frozen_block_cache_mb caches frozen encoder blocks: set train_encoder_blocks (or freeze_encoder) too"
            )
        if self.encoder_lora.rank:
            if self.freeze_encoder or self.train_encoder_blocks is not None:
                raise ValueError(
                    "encoder_lora trains low-rank updates of a frozen encoder: leave freeze_encoder false "
                    "and train_encoder_blocks unset (encoder_lora.blocks picks the adapted blocks)"
                )
            if self.parallel == "fsdp":
                raise ValueError("encoder_lora runs with parallel: ddp (its checkpoints merge unsharded weights)")
        check_pooling_schedule(self.pooling_schedule, self.steps)
        if self.decoder_weights is not None:
            if any(w < 0 for w in self.decoder_weights) or sum(self.decoder_weights) <= 0:
                raise ValueError(f"decoder_weights must be >= 0 with a positive sum, got {self.decoder_weights}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def uses_bf16(self, device_type: str) -> bool:
        """Whether the step runs under bf16 autocast on this device type (method.md §13.5: bf16
        autocast over fp32 master weights on GPU; fp32 on CPU unless asked)."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def frozen_decoder_dtype(self, device_type: str) -> str:
        """'fp32' or 'bf16': what `decoder_dtype` resolves to on this device type."""
        if self.decoder_dtype != "auto":
            return self.decoder_dtype
        return "bf16" if device_type == "cuda" and self.uses_bf16(device_type) else "fp32"

    def data_sections(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, section) of every pipeline the run trains on: `data`, then `data_mix`'s."""
        return [("data", self.data)] + [(f"data_mix[{i}]", part) for i, part in enumerate(self.data_mix)]

    def data_config(
        self,
        overrides: dict[str, Any] | None = None,
        section: str = "data",
        check_only: bool = False,
        values: dict[str, Any] | None = None,
    ):
        """The typed config of the `data` section's pipeline (PretrainDataConfig or
        FinetuneDataConfig), or of another data section `values` (a `data_mix` entry):
        `overrides` on top, the trainer's batch size and seed where unset.

        `check_only`: only check the section; without `sources` (code that hands the trainer its
        own data) only the names and types of its keys."""
        values = self.data if values is None else values
        kind = DATA_CONFIGS[values["kind"]]
        values = {k: v for k, v in values.items() if k not in ("kind", "share")}
        values.update(overrides or {})
        values.setdefault("batch_size", self.batch_size)
        values.setdefault("seed", self.seed)
        if check_only and "sources" not in values:
            return typed_fields(kind, values, section)
        return kind.from_dict(values, section)

    def arc_config(self, saved: dict[str, Any] | None = None) -> ARCConfig:
        """The model's ARCConfig: preset (or the saved model's config), then `model.arc` on top."""
        if saved is not None:
            base = dict(saved)
        elif self.model.preset is not None:
            base = PRESETS[self.model.preset].to_dict()
        else:
            base = ARCConfig().to_dict()
        base.update(self.model.arc)
        return ARCConfig.from_dict(base)


# ------------------------------------------------------------------------- files and overrides
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string of a parsed YAML tree, VAR read from `env`
    (default: the process environment)."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is None:
            raise ValueError(f"environment variable {name} is not set (used as ${{{name}}} in the config)")
        return default

    return _ENV.sub(replace, value)


def apply_override(tree: dict[str, Any], override: str) -> None:
    """`optim.lr_encoder=1e-4`: set one dotted key; the value is parsed as YAML (numbers, lists)."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key=value (e.g. optim.lr_encoder=1e-4)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {override!r} has an empty key part")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


class UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently, so a setting written twice would be half ignored)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_config_tree(path: str | Path) -> dict[str, Any]:
    """A training YAML file as its mapping of sections, ${VAR} references not yet expanded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        tree = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML file (or start from defaults), apply dotted overrides, validate."""
    tree = read_config_tree(path) if path is not None else {}
    for override in overrides:
        apply_override(tree, override)
    return config_from_dict(expand_env(tree))


def config_from_dict(tree: dict[str, Any]) -> TrainConfig:
    return build(TrainConfig, tree)


def save_config(config: TrainConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------- resume compatibility
# Keys that may change when a run resumes: they move no weights and no data position.
RESUME_SAFE = (
    "steps",
    "time_limit_minutes",
    "out_dir",
    "activation_checkpointing",
    "compile",
    "tf32",
    "fsdp_decoders",
    "frozen_block_cache_mb",
    "checkpoint.",
    "eval.",
    "log.",
)
# Sections added after runs were already saved without them.
NEWER_KEYS = (
    "encoder_lora.",
    "distill.cache",
    "distill.k",
    "decoder_dtype",
    "frozen_block_cache_mb",
    "data_mix",
    "contrast.",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Differences between a checkpoint's config and this run's that resuming cannot honour."""
    old, new = _flatten(saved), _flatten(current)
    # a key newer than the checkpoint counts as its default: older runs resume while it is unused
    defaults = {k: v for k, v in _flatten(dataclasses.asdict(TrainConfig())).items() if k.startswith(NEWER_KEYS)}
    diffs = []
    for key in sorted(set(old) | set(new)):
        if any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE):
            continue
        before = old.get(key, defaults.get(key, "<absent>"))
        if before != new.get(key, "<absent>"):
            diffs.append(f"{key}: {before!r} -> {new.get(key, '<absent>')!r}")
    return diffs
