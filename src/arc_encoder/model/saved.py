"""Saved models: the one format, and the one way to load one.

    FOLDER/arc_config.json     format version, ARCConfig, decoder widths (a delta: its weights' SHA-256)
    FOLDER/model.safetensors   encoder + adapter tensors; a delta (model/delta.py) holds only those
                               that differ from the backbone
    FOLDER/encoder/            the truncated backbone's HF config and tokenizer (not in a delta)

A training run folder holds saved models as checkpoints: OUT_DIR/checkpoints/step_N/ (with the
trainer's state beside them, training/checkpoint.py). `load(name_or_path)` reads a shipped model's
name, a saved folder or a run folder (its latest complete checkpoint): `ARCModel.from_pretrained`,
warm starts (training/model_init.py) and every command go through it. `load_state` is the one
check that a file holds every tensor a model expects, with its shape; resuming a run uses it too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ARCConfig
from .delta import BACKBONE_PREFIXES, SHIPPED, check_checksum, delta_of, shipped_folder
from .encoder import Encoder
from .registry import resolve_model, sha256_of
from .weights import check_tensors, copy_into, read_weights

FORMAT_VERSION = 1
CONFIG_FILE = "arc_config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_DIR = "encoder"  # the truncated backbone's HF config and tokenizer
CHECKPOINTS = "checkpoints"  # a run folder's saved models, one step_N folder each
STATE_FILE = "trainer_state.pt"  # beside a checkpoint's model: what resuming needs
_STEP = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------------- writing
def write_saved_model(
    path: str | Path,
    state: dict[str, torch.Tensor],
    config: ARCConfig,
    decoder_dims: list[int],
    encoder_hf_config,
    encoder_tokenizer,
) -> None:
    """The saved-model format, the one place that writes it: encoder + adapter tensors, config
    and decoder widths, and the truncated backbone's HF config and tokenizer. `state` holds the
    trained tensors only (ARCModel.trained_state).

    Without a tokenizer the tensors are a delta (model/delta.py): no encoder/ folder (the backbone
    provides it), and arc_config.json records the weights file's SHA-256 for loading to check."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "decoder_dims": list(decoder_dims),
        "encoder_dim": encoder_hf_config.hidden_size,
    }
    if encoder_tokenizer is None:
        meta.update(weights="delta", sha256=sha256_of(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if encoder_tokenizer is not None:
        encoder_hf_config.save_pretrained(path / ENCODER_DIR)
        encoder_tokenizer.save_pretrained(path / ENCODER_DIR)


def save_pretrained(model, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """`model` as a full saved folder; `state` replaces its trained tensors (the trainer passes
    full tensors gathered from sharded FSDP parameters)."""
    state = model.trained_state() if state is None else state
    write_saved_model(path, state, model.config, model.decoder_widths, model.encoder.hf_config, model.encoder_tokenizer)


def save_delta(model, path: str | Path, max_mb: float | None = None, dtype: torch.dtype | None = None) -> int:
    """`model` as a delta folder: only what differs from the backbone (model/delta.py), the
    tensors rounded to `dtype` if given. Refuses (before writing) a delta larger than `max_mb`.
    Returns its size in bytes."""
    backbone = Encoder.from_backbone(resolve_model(model.config.backbone), model.config).state_dict()
    delta = delta_of(model.trained_state(), {f"encoder.{k}": v for k, v in backbone.items()})
    if dtype is not None:
        delta = {k: v.to(dtype) if v.is_floating_point() else v for k, v in delta.items()}
    size = sum(v.numel() * v.element_size() for v in delta.values())
    if max_mb is not None and size > max_mb * 2**20:
        changed = sorted({k.split(".")[2] for k in delta if k.startswith("encoder.layers.")}, key=int)
        raise ValueError(
            f"the delta is {size / 2**20:.1f} MB, over the {max_mb} MB asked for: encoder blocks {changed} "
            "differ from the backbone (train fewer with train_encoder_blocks)"
        )
    write_saved_model(path, delta, model.config, model.decoder_widths, model.encoder.hf_config, None)
    return size


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's trained tensors (names and bytes): stores refuse vectors made by
    another model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- finding
def read_saved_config(path: str | Path) -> tuple[dict, ARCConfig]:
    """The metadata and ARCConfig of a saved model folder; a missing, corrupt or mistyped
    arc_config.json is an error naming the file and what is wrong with it."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not a saved ARC model")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r} (expected {FORMAT_VERSION})")
        for key, kind in (("config", dict), ("decoder_dims", list)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"'{key}' is missing or not a {kind.__name__}")
        config = ARCConfig.from_dict(meta["config"], "config")
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{file}: {e}") from None
    return meta, config


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """A run folder's complete checkpoints (step, folder), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP.match(path.name)
        if match and (path / STATE_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


@dataclass
class SavedModel:
    folder: Path
    meta: dict  # arc_config.json
    config: ARCConfig  # the config it was saved with
    pinned: str | None  # a shipped model's SHA-256, pinned in this package

    @property
    def delta(self) -> bool:
        return self.meta.get("weights") == "delta"

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    def tensors(self) -> dict[str, torch.Tensor]:
        """The saved tensors; a delta's only once its checksum is the one recorded (and pinned)."""
        if self.delta:
            check_checksum(self.weights, self.meta.get("sha256"), self.pinned)
        return read_weights(self.weights)


def locate(name_or_path: str | Path, role: str = "model") -> SavedModel:
    """A shipped model's name, a saved model folder, or a training run folder (its latest
    complete checkpoint). `role` names the setting the path came from in the error."""
    folder = shipped_folder(str(name_or_path)) or Path(name_or_path)
    if not (folder / CONFIG_FILE).is_file():
        folder = latest_checkpoint(folder)
        if folder is None:
            raise FileNotFoundError(
                f"{role}: {name_or_path} is neither a saved model folder nor a shipped model "
                f"({', '.join(sorted(SHIPPED))}), nor a training run folder with a complete checkpoint"
            )
    meta, config = read_saved_config(folder)
    return SavedModel(folder, meta, config, SHIPPED.get(str(name_or_path)))


# ----------------------------------------------------------------------------- loading
def load(
    model_class,
    name_or_path: str | Path | SavedModel,
    decoders: list[str] | None = None,
    decoder_dtype: torch.dtype = torch.float32,
    config: ARCConfig | None = None,
    sources: Callable[[object, SavedModel], dict[str, str]] | None = None,
    pretrained: bool = True,
    role: str = "model",
    deferred: bool = False,
):
    """The model `name_or_path` holds (see `locate`; or one already located), as a `model_class`
    (ARCModel). `deferred`: read each decoder when first used (model/deferred.py), its width
    checked then against the recorded one.

    `decoders` replaces the recorded decoder names or paths (same count and widths), e.g. local
    copies. A warm start builds from its own `config` instead (other decoders, another pooling
    factor) and reads only the tensors `sources(model, saved)` names, {model key: saved key}.
    `decoder_dtype`: what the frozen decoders are read into; `pretrained=False` builds them and a
    delta's backbone randomly (tests)."""
    saved = name_or_path if isinstance(name_or_path, SavedModel) else locate(name_or_path, role)
    if config is None:
        config = saved.config
        if decoders is not None:
            if len(decoders) != len(config.decoders):
                raise ValueError(
                    f"{saved.folder} was trained for {len(config.decoders)} decoder(s), "
                    f"got {len(decoders)} replacement(s)"
                )
            config.decoders = list(decoders)
    # a delta's encoder is the backbone's own blocks, overwritten where the delta has them
    # (a full save's encoder config already has the truncated depth: no backbone weights are read)
    encoder_dir = None if saved.delta else saved.folder / ENCODER_DIR
    if deferred and sources is None:
        widths = saved.meta["decoder_dims"]
        if len(widths) != len(config.decoders):
            raise ValueError(f"{saved.folder}: {len(widths)} decoder widths for {len(config.decoders)} decoders")
        return _load_tensors(
            model_class.from_config(config, pretrained, decoder_dtype, encoder_dir, widths), saved, role
        )
    model = model_class.from_config(config, pretrained, decoder_dtype, encoder_dir)
    if sources is None:
        for i, (dec, dim) in enumerate(zip(model.decoders, saved.meta["decoder_dims"])):
            if dec.config.hidden_size != dim:
                raise ValueError(
                    f"decoder {i} ({config.decoders[i]}) has width "
                    f"{dec.config.hidden_size}, but {saved.folder} was trained for width {dim}"
                )
    return _load_tensors(model, saved, role, None if sources is None else sources(model, saved))


def _load_tensors(model, saved: SavedModel, role: str, sources: dict[str, str] | None = None):
    load_state(model, saved.tensors(), f"{role}: {saved.weights} (against this model)", sources, saved.delta)
    return model


@torch.no_grad()
def load_state(
    model, state: dict[str, torch.Tensor], where: str, sources: dict[str, str] | None = None, delta: bool = False
) -> None:
    """Copy saved tensors into `model`'s trained tensors (which may be sharded DTensors), after
    checking that every one is there with its shape: the one such check.

    `sources` ({model key: saved key}) reads only those tensors, and the file may hold others;
    without it the file must hold exactly the model's trained tensors. A `delta` may leave out
    backbone tensors: they keep the values the model was built with."""
    own = model.trained_state()
    strict = sources is None
    sources = {k: k for k in own} if strict else sources
    if delta:
        sources = {k: s for k, s in sources.items() if s in state or not s.startswith(BACKBONE_PREFIXES)}
    found = {k: state[s] for k, s in sources.items() if s in state}
    if strict:  # a tensor this model does not have is an error too
        found.update({k: v for k, v in state.items() if k not in own})
    check_tensors(found, {k: tuple(own[k].shape) for k in sources}, where)
    for key in sources:
        copy_into(own[key], found[key])
