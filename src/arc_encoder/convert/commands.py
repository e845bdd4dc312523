"""`arc-encoder convert ...`: move checkpoints between the official Kyutai format and ours,
shrink a saved model to a delta against its backbone, and average models of one architecture."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..model.arc import ARCModel
from ..model.average import average_models
from .kyutai import export_kyutai, import_kyutai

convert_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Convert between the official Kyutai ARC-Encoder checkpoints and this library's format.",
)


def _run(job):
    """Bad input is the user's to fix: one clear line and exit code 1, not a traceback."""
    try:
        return job()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@convert_app.command("kyutai")
def kyutai(
    src: Path = typer.Argument(
        ...,
        help="official checkpoint: the hub download (config.json + "
        "model.safetensors) or a converted folder (params.json)",
    ),
    dst: Path = typer.Argument(..., help="new folder for the converted model"),
    tokenizer: Path = typer.Option(
        ...,
        "--tokenizer",
        help="Hugging Face tokenizer folder of the encoder backbone (Llama-3.2-3B for the released encoders)",
    ),
    decoder: list[str] | None = typer.Option(
        None, "--decoder", help="decoder folder or hub name, once per projector (multi: Llama-3.1-8B then Mistral-7B)"
    ),
    backbone_params: Path | None = typer.Option(
        None,
        "--backbone-params",
        help="the backbone's params.json, when the checkpoint does not record its model arguments",
    ),
    pooling_factor: int | None = typer.Option(
        None, "--pooling-factor", help="pool by this factor, overriding the recorded rate"
    ),
    unscaled_rope: bool = typer.Option(
        False,
        "--unscaled-rope",
        help="load Llama-3.x decoders without Llama-3 RoPE scaling, as "
        "the official code trained them (needs local folders)",
    ),
):
    """Import a released Kyutai ARC-Encoder (kyutai/ARC8_Encoder_Llama, ...)."""
    quiet()
    summary = _run(
        lambda: import_kyutai(src, dst, tokenizer, decoder or None, backbone_params, pooling_factor, unscaled_rope)
    )
    typer.echo(json.dumps(summary))


@convert_app.command("to-kyutai")
def to_kyutai(
    src: Path = typer.Argument(..., help="a saved arc-encoder model folder (Llama-family encoder)"),
    dst: Path = typer.Argument(..., help="new folder in the official converted layout"),
):
    """Export one of our models to the official layout (params.json, embedder/, bridge_module/)."""
    quiet()
    summary = _run(lambda: export_kyutai(src, dst))
    typer.echo(json.dumps(summary))


@convert_app.command("delta")
def delta(
    src: Path = typer.Argument(..., help="a saved arc-encoder model folder, or a training run (its latest checkpoint)"),
    dst: Path = typer.Argument(..., help="new folder for the delta"),
    max_mb: float | None = typer.Option(None, "--max-mb", help="refuse a delta larger than this"),
    float16: bool = typer.Option(False, "--float16", help="store tensors in float16: half the size, rounded"),
):
    """Keep only what differs from the backbone (trained blocks, projectors, special tokens): a
    small folder that loads with ARCModel.from_pretrained like the full one (bit for bit, unless
    --float16)."""
    quiet()

    def job():
        if dst.exists() and any(dst.iterdir()):
            raise FileExistsError(f"{dst} is not empty")
        import torch

        dtype = torch.float16 if float16 else None
        size = ARCModel.from_pretrained(src).save_delta(dst, max_mb, dtype)
        return {"source": str(src), "delta": str(dst), "megabytes": round(size / 2**20, 2)}

    typer.echo(json.dumps(_run(job)))


@convert_app.command("average")
def average(
    dst: Path = typer.Argument(..., help="new folder for the averaged model"),
    sources: list[str] = typer.Argument(
        ..., help="two or more models of one architecture: shipped names, saved or run folders"
    ),
):
    """Average the trained tensors of models that started from one model (checkpoints of one run,
    or runs from one warm start): a full saved folder; `convert delta` shrinks it."""
    quiet()

    def job():
        if dst.exists() and any(dst.iterdir()):
            raise FileExistsError(f"{dst} is not empty")
        average_models(ARCModel, sources).save_pretrained(dst)
        return {"sources": sources, "model": str(dst)}

    typer.echo(json.dumps(_run(job)))


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
