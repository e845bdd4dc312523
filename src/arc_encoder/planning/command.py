"""`arc-encoder plan CONFIG [--gpus N] [--gpu-memory GIB] [--json] [key=value ...]`: the memory a
training config needs per GPU, under DDP and FSDP2, with and without activation checkpointing,
before any weight is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from ..training.config import load_config
from .architectures import find_architectures
from .memory import FIT_FRACTION, GIB, Plan, make_plans, trained_and_frozen
from .meta_model import build_meta_model
from .shapes import step_shapes


def plan_report(
    config_path: Path,
    overrides: list[str],
    gpus: int = 8,
    gpu_memory: float = 80.0,
    architectures: Path | None = None,
    init_preset: str | None = None,
    device_type: str = "cuda",
) -> dict:
    """Everything `plan` prints, as a JSON-ready dict. `per_gpu_gib` and `fits` are those of the
    config's own `parallel` and `activation_checkpointing`; `plans` holds all four."""
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if not gpu_memory > 0:
        raise ValueError(f"--gpu-memory must be > 0 GiB, got {gpu_memory}")
    config = load_config(config_path, overrides)
    folder = architectures if architectures is not None else find_architectures(Path(config_path))
    planned = build_meta_model(config, folder, init_preset)
    shapes = step_shapes(config, planned.config)
    plans = make_plans(planned, shapes, config, gpus, device_type)
    budget = FIT_FRACTION * gpu_memory

    def entry(plan: Plan) -> dict:
        t = plan.terms
        parts = {"weights": t.weights, "gradients": t.gradients, "optimizer": t.optimizer, "buffers": t.buffers}
        parts |= {"activations": t.activations, **t.detail}
        return {
            "strategy": plan.strategy,
            "activation_checkpointing": plan.checkpointing,
            "task": plan.task,
            "per_gpu_gib": round(plan.gib, 3),
            "fits": plan.gib <= budget,
            "bytes": parts,
        }

    own = next(p for p in plans if p.strategy == config.parallel and p.checkpointing == config.activation_checkpointing)
    trained, frozen = trained_and_frozen(planned)
    return {
        "config": str(config_path),
        "trainable_params": trained,
        "frozen_params": frozen,
        "gpus": gpus,
        "gpu_memory_gib": gpu_memory,
        "usable_gib": round(budget, 3),
        "batch_size_per_gpu": config.batch_size,
        "bf16": config.uses_bf16(device_type),
        "decoder_dtype": config.frozen_decoder_dtype(device_type),
        "strategy": config.parallel,
        "activation_checkpointing": config.activation_checkpointing,
        "per_gpu_gib": round(own.gib, 3),
        "fits": own.gib <= budget,
        "shapes": [
            {
                "task": s.task,
                "encoder_segments": s.segments,
                "segment_tokens": s.segment_tokens,
                "decoder_rows": s.rows,
                "decoder_length": s.length,
                "loss_tokens": s.loss_tokens,
            }
            for s in shapes
        ],
        "plans": [entry(p) for p in plans],
        "notes": planned.notes,
    }


def format_report(report: dict) -> str:
    lines = [
        f"{report['config']}: {report['trainable_params'] / 1e9:.3f}B trained, "
        f"{report['frozen_params'] / 1e9:.3f}B frozen parameters",
        *[f"note: {n}" for n in report["notes"]],
    ]
    for s in report["shapes"]:
        lines.append(
            f"{s['task']} micro-batch per GPU: encoder {s['encoder_segments']} x {s['segment_tokens']} tokens, "
            f"decoder {s['decoder_rows']} x {s['decoder_length']} positions, loss at {s['loss_tokens']}"
        )
    lines.append(
        f"{report['gpus']} GPU(s) x {report['gpu_memory_gib']:g} GiB (fits: <= {report['usable_gib']:g} GiB), "
        f"{'bf16 autocast' if report['bf16'] else 'fp32'}, frozen decoders in {report['decoder_dtype']}; GiB per GPU:"
    )
    header = ["strategy", "ckpt", "weights", "grads", "AdamW", "buffers", "activations", "per GPU", "fits"]
    rows = [header]
    for p in report["plans"]:
        b = p["bytes"]
        own = (p["strategy"], p["activation_checkpointing"]) == (report["strategy"], report["activation_checkpointing"])
        rows.append(
            [
                p["strategy"] + (" *" if own else ""),
                "on" if p["activation_checkpointing"] else "off",
                *[f"{b[k] / GIB:.1f}" for k in ("weights", "gradients", "optimizer", "buffers", "activations")],
                f"{p['per_gpu_gib']:.1f}",
                "yes" if p["fits"] else "NO",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append("* the config's own parallel / activation_checkpointing")
    return "\n".join(lines)


def plan_command(
    config_path: Path,
    overrides: list[str],
    gpus: int,
    gpu_memory: float,
    as_json: bool,
    architectures: Path | None,
    init_preset: str | None,
) -> int:
    """Print the plan (whether it fits is in it, not in the exit status)."""
    report = plan_report(config_path, overrides, gpus, gpu_memory, architectures, init_preset)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0
