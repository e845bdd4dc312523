"""Model architectures known without their weights: a local model folder's config.json, or a
committed description (configs/architectures/<hub name>.json: the fields of that model's
published config.json). Anything else is refused by name, never fetched."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CONFIG_MAPPING, PretrainedConfig

from ..model.registry import ALIASES

ARCHITECTURES = "architectures"  # the folder of descriptions, beside the configs that use them


def find_architectures(config_path: Path) -> Path | None:
    """The `architectures` folder nearest above a training config (configs/paper/x.yaml ->
    configs/architectures), or None."""
    for folder in config_path.resolve().parents:
        if (folder / ARCHITECTURES).is_dir():
            return folder / ARCHITECTURES
    return None


def known_names(folder: Path | None) -> list[str]:
    if folder is None:
        return []
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.json"))


def architecture(name: str, folder: Path | None) -> PretrainedConfig:
    """The HF config of model `name`: its folder's config.json when `name` is a local model
    folder, else the description `folder/<name>.json` (hub names keep their owner: meta-llama/...)."""
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        return config_from_fields(json.loads((local / "config.json").read_text(encoding="utf-8")), str(local))
    key = ALIASES.get(name, name)
    described = folder / f"{key}.json" if folder is not None else None
    if described is None or not described.is_file():
        where = f"in {folder}" if folder is not None else "(no architectures folder was found)"
        raise LookupError(
            f"unknown architecture {name!r}: no local model folder and no description {where}; "
            f"known: {', '.join(known_names(folder)) or 'none'}. Add its config.json fields as "
            f"{ARCHITECTURES}/{key}.json, or point the config at a folder holding its config.json"
        )
    return config_from_fields(json.loads(described.read_text(encoding="utf-8")), str(described))


def config_from_fields(fields: dict, source: str) -> PretrainedConfig:
    model_type = fields.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{source}: model_type {model_type!r} is not one transformers knows")
    config = CONFIG_MAPPING[model_type].from_dict(fields)
    return getattr(config, "text_config", None) or config  # multimodal wrappers (Gemma3)
