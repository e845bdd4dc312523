"""`arc-encoder` command line: one verb per job."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from .loading import DECODER_HELP, DEFAULT_MODEL, MODEL_HELP, UNTRAINED, load_model, quiet_transformers
from .planning.command import plan_command
from .prompt import QA, as_text, qa_prompt
from .quickstart import QuickstartConfig, run_quickstart
from .records import command_line_text, read_text
from .training.command import train_command
from .training.distill_cache import distill_cache_command

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="ARC-Encoder: compress contexts for frozen Hugging Face LLMs."
)

# What a user's mistake raises (a missing file, an empty text, a bad value): one line, exit code 2.
USER_ERRORS = (ValueError, TypeError, OSError, UnicodeError, LookupError)
_options = {"debug": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="show the full traceback of an error", envvar="ARC_ENCODER_DEBUG"
    ),
):
    _options["debug"] = debug


DEMO_DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed 'La dame de fer', it was constructed as the centrepiece "
    "of the 1889 World's Fair. It is 330 metres tall and was the tallest man-made structure in the "
    "world until the Chrysler Building in New York City was finished in 1930."
)


@app.command()
def demo(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    question: str = typer.Option("Who is the tower named after?"),
    decoder: str = typer.Option("0", "--decoder", help=f"{DECODER_HELP}; default the first"),
):
    """Compress a document and answer a question about it, next to the open-book answer."""

    t0 = time.perf_counter()
    arc = load_model(model)
    index = arc.decoder_index(decoder)
    print(
        f"loaded {model} in {time.perf_counter() - t0:.1f}s "
        f"(encoder {sum(p.numel() for p in arc.encoder.parameters()) / 1e6:.0f}M parameters, "
        f"decoder {arc.config.decoders[index]})"
    )
    compressed = arc.compress([DEMO_DOCUMENT], decoder=index)[0]
    print(
        f"document: {compressed.document_tokens} decoder tokens -> {compressed.n_vectors} vectors "
        f"of width {compressed.chunks[0].shape[-1]} (x{compressed.compression_ratio:.1f})"
    )
    asks = {
        "closed-book": qa_prompt([], QA([], question)),
        "open-book": [as_text(qa_prompt([], QA([DEMO_DOCUMENT], question)), str)],
        "compressed": qa_prompt([], QA([compressed], question)),
    }
    for name, prompt in asks.items():
        t = time.perf_counter()
        out = arc.generate(prompt, decoder=index, max_new_tokens=24, stop=["\n"])[0]
        print(f"{name:>12}: {out.text.strip()!r}  ({out.prompt_length} positions, {time.perf_counter() - t:.2f}s)")
    if model.endswith(UNTRAINED):
        print(f"note: {model} is untrained; drop --model for the shipped {DEFAULT_MODEL}.")


@app.command()
def compress(
    text: str = typer.Argument(..., help="text to compress, or @FILE to read it from a file"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="safetensors file for the vectors"),
    decoder: str = typer.Option("0", "--decoder", help=f"{DECODER_HELP}; default the first"),
):
    """Compress a text into bottleneck vectors saved as safetensors."""
    from safetensors.torch import save_file

    text = read_text(text[1:]) if text.startswith("@") else command_line_text(text, "the text")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    arc = load_model(model)
    index = arc.decoder_index(decoder)
    c = arc.compress([text], decoder=index)[0]
    metadata = {"decoder": str(index), "decoder_name": arc.config.decoders[index]}
    metadata.update(document_tokens=str(c.document_tokens), fingerprint=arc.fingerprint())
    save_file({f"chunk_{i}": v.contiguous() for i, v in enumerate(c.chunks)}, str(out), metadata=metadata)
    print(
        json.dumps(
            {
                "vectors": c.n_vectors,
                "document_tokens": c.document_tokens,
                "compression_ratio": round(c.compression_ratio, 2),
                "out": str(out),
            }
        )
    )


@app.command()
def train(
    config: Path = typer.Argument(..., help="training YAML (see configs/)"),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides: optim.lr_encoder=1e-4 steps=200"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in out_dir"),
):
    """Train or fine-tune an ARC-Encoder; the same command runs under torchrun --nproc-per-node N."""
    quiet_transformers()
    raise typer.Exit(train_command(config, overrides or [], resume))


@app.command("distill-cache")
def distill_cache(
    config: Path = typer.Argument(..., help="the training YAML of the run to distill (distill.cache: the folder)"),
    overrides: list[str] | None = typer.Argument(
        None, help="dotted overrides: distill.cache=runs/teacher distill.k=32"
    ),
    steps: int | None = typer.Option(None, help="optimizer steps to cache the batches of (default: the config's)"),
    world_size: int = typer.Option(1, help="ranks the run will train on (each reads its own share of the data)"),
):
    """Cache the frozen decoder's top-k logits (reading the raw documents) for every sample a run
    will draw, so that `distill.cache` trains without running the teacher each step."""
    quiet_transformers()
    raise typer.Exit(distill_cache_command(config, overrides or [], steps, world_size))


@app.command()
def plan(
    config: Path = typer.Argument(..., help="training YAML (see configs/paper/)"),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides: batch_size=8 data.max_doc_tokens=512"),
    gpus: int = typer.Option(8, "--gpus", help="GPUs the run shares (data parallel)"),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="memory of one GPU, GiB"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    architectures: Path | None = typer.Option(
        None, help="folder of model descriptions (default: the architectures/ folder nearest above CONFIG)"
    ),
    init_preset: str | None = typer.Option(
        None,
        help="the preset a model.init_from that is not on this machine is planned as "
        "(default: llama3-arc8 where the config names its decoders)",
    ),
):
    """Memory per GPU of a training config under DDP and FSDP2, with and without activation
    checkpointing, and whether it fits; from architecture descriptions, no weights downloaded."""
    quiet_transformers()
    raise typer.Exit(plan_command(config, overrides or [], gpus, gpu_memory, as_json, architectures, init_preset))


from .convert.commands import convert_app  # noqa: E402

app.add_typer(convert_app, name="convert")

from .serving.commands import register as _register_serving  # noqa: E402

_register_serving(app)  # index, store-info, ask, serve

from .evaluation.command import eval_command  # noqa: E402

app.command("eval")(eval_command)


@app.command()
def quickstart(
    budget_minutes: float = typer.Option(30.0, help="total wall-time budget for all stages"),
    out: Path = typer.Option(Path("runs/quickstart"), help="output folder (must be new or empty)"),
    data: Path | None = typer.Option(
        None, help="folder with prose/wiki.txt and squad/*.jsonl (default: $ARC_ENCODER_DATA, then ../shared/data)"
    ),
    finetune_shots: int | None = typer.Option(
        None, help="in-context examples in fine-tuning prompts (default: the fine-tuning config's)"
    ),
    eval_shots: int = typer.Option(5, help="in-context examples in evaluation prompts"),
    finetune_distill: float | None = typer.Option(
        None,
        help="weight of the distillation to the decoder reading the documents as text in fine-tuning "
        "(0: off; default: the fine-tuning config's)",
    ),
    eval_questions: int | None = typer.Option(None, help="held-out questions (default: what the budget allows)"),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out: reuse its finished training stages"),
    start_from: str = typer.Option(
        DEFAULT_MODEL, help="shipped encoder or saved folder to evaluate first, then fine-tune further"
    ),
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="ignore --start-from: pretrain a fresh encoder, then fine-tune it"
    ),
):
    """Show ARC-Encoder working on held-out SQuAD questions, then what further training adds.

    By default: evaluate the shipped encoder (first table within minutes), then fine-tune it with
    the rest of the budget. With --from-scratch: pretrain and fine-tune a fresh encoder instead.
    Training runs configs/smollm2-arc4-default.yaml and configs/smollm2-arc4-default-finetune.yaml,
    sized to the budget."""
    quiet_transformers()
    try:
        run_quickstart(
            QuickstartConfig(
                budget_minutes=budget_minutes,
                out=str(out),
                data=str(data) if data else None,
                finetune_shots=finetune_shots,
                eval_shots=eval_shots,
                finetune_distill=finetune_distill,
                eval_questions=eval_questions,
                resume=resume,
                start_from=start_from,
                from_scratch=from_scratch,
            )
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def main() -> None:
    """The `arc-encoder` command (also `python -m arc_encoder`)."""
    try:
        app(prog_name="arc-encoder")
    except USER_ERRORS as e:
        if _options["debug"]:
            raise
        print(f"error: {e} (arc-encoder --debug ... shows the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
