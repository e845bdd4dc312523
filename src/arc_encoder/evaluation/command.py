"""`arc-encoder eval`: score methods on a task with one or more models, write JSON (+ a plot)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from arc_encoder.evaluation.content import content_report, describe, text_batches
from arc_encoder.evaluation.methods import DEFAULT_TOP_K, check_methods
from arc_encoder.evaluation.report import markdown_table, plot_scores
from arc_encoder.evaluation.runner import add_gain_kept, evaluate, evaluate_haystack
from arc_encoder.evaluation.tasks import HAYSTACK, load_task, metric_for_task

from ..atomic import write_json
from ..loading import DECODER_HELP, DEFAULT_MODEL, DEVICE_HELP, DTYPE_HELP, MODEL_HELP, load_model_on, placement

REPORT_VERSION = 1
# Methods that read no compressed vectors: with several models sharing a decoder they are run
# once, for the first model, and their results shared.
DECODER_ONLY = ("closed", "open")
DEFAULT_METHODS = "closed,open,arc,truncate"
HAYSTACK_METHODS = "closed,open,truncate-window,arc,rag,rag-arc"


def eval_command(
    model: list[str] = typer.Option(
        [DEFAULT_MODEL], "--model", help=f"{MODEL_HELP}; repeat to compare models (e.g. x4 and x8)"
    ),
    task: str = typer.Option(
        ..., help="squad, nq, triviaqa, hotpotqa, jsonl, cnn, flores-<language>, or haystack (long documents)"
    ),
    data: str = typer.Option(..., help="data file (flores: a FLORES-200 dev directory; haystack: a SQuAD file)"),
    methods: str | None = typer.Option(
        None,
        help=f"comma-separated: closed, open, arc, mismatched, truncate, llmlingua, truncate-window, rag, rag-arc "
        f"(default {DEFAULT_METHODS}; for haystack {HAYSTACK_METHODS})",
    ),
    shots: int = typer.Option(5, help="fixed in-context examples, drawn from the data and never scored"),
    limit: int | None = typer.Option(None, help="score only the first N remaining examples"),
    shuffle: bool = typer.Option(False, help="shuffle the scored examples (with --seed) before --limit"),
    seed: int = typer.Option(0, help="seed of the shot draw and of --shuffle"),
    decoder: str = typer.Option(
        "0", "--decoder", help=f"{DECODER_HELP}, to evaluate (each --model's by that name); default the first"
    ),
    batch_size: int = typer.Option(8, help="prompts generated together"),
    max_new_tokens: int | None = typer.Option(None, help="default 64 (256 for cnn)"),
    chunk_size: int | None = typer.Option(
        None, help="compress documents longer than this many encoder tokens in chunks"
    ),
    max_chunks: int | None = typer.Option(None, help="most chunks per document"),
    n_passages: int = typer.Option(1, help="retrieved passages per question (nq, triviaqa)"),
    window: int | None = typer.Option(
        None,
        help="decoder positions a prompt and its answer may take: methods beyond it are reported not applicable "
        "(never cut); required for haystack",
    ),
    multiple: int = typer.Option(1, help="haystack: the open-book sequence takes this many windows (1, 2, 4, 8)"),
    top_k: int = typer.Option(DEFAULT_TOP_K, help="paragraphs rag and rag-arc read (BM25 over the passages)"),
    llmlingua_rate: float | None = typer.Option(
        None, help="share of tokens LLMLingua keeps (default 1 / pooling factor)"
    ),
    llmlingua_scorer: str | None = typer.Option(
        None, help="causal LM scoring tokens for LLMLingua-1 (default: the embedded SmolLM2)"
    ),
    llmlingua2_model: str | None = typer.Option(
        None, help="LLMLingua-2 token-classifier folder (switches to LLMLingua-2)"
    ),
    content: bool = typer.Option(
        False,
        help="also measure how much of each document the vectors carry: held-out losses with the right, "
        "a mismatched, no and the raw document on the task's passages (evaluation/content.py)",
    ),
    content_span: int = typer.Option(32, help="decoder tokens per reconstruction/continuation span for --content"),
    out: Path | None = typer.Option(None, help="JSON result file; with several models a PNG plot beside it"),
    threads: int | None = typer.Option(None, help="CPU threads for torch (1 is often fastest on a busy machine)"),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}; LLMLingua's scorer runs there too"),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    progress: bool = typer.Option(True, help="show progress bars"),
):
    """Few-shot evaluation: closed-book, open-book, ARC, truncation and LLMLingua on one decoder."""
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    try:
        placement(device, dtype)  # a GPU that is not there is refused before anything loads
        metric_for_task(task)
        haystack = task.lower() == HAYSTACK
        names = check_methods(methods or (HAYSTACK_METHODS if haystack else DEFAULT_METHODS))
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        if window is not None and window < 1:
            raise ValueError(f"--window must be at least 1 position, got {window}")
        if haystack and window is None:
            raise ValueError("--task haystack needs --window: the decoder positions the haystacks are sized by")
        if multiple < 1 or top_k < 1:
            raise ValueError(f"--multiple and --top-k must be at least 1, got {multiple} and {top_k}")
        examples = load_task(task, data, n_passages=n_passages)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from None

    runs = []
    for name in model:
        arc = load_model_on(name, device, dtype)
        if chunk_size is not None:
            arc.config.chunk_tokens = chunk_size
        if max_chunks is not None:
            arc.config.max_chunks = max_chunks
        try:
            index = arc.decoder_index(decoder)  # a name may stand at another index in each model
        except ValueError as err:
            raise typer.BadParameter(f"--model {name}: {err}") from None
        shared = None
        if runs and arc.config.decoders[index] == runs[0]["config"]["decoder_name"]:
            shared = runs[0]
        todo = [m for m in names if shared is None or m not in DECODER_ONLY]
        start = time.perf_counter()
        settings = dict(
            shots=shots,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            decoder=index,
            max_new_tokens=max_new_tokens,
            llmlingua_rate=llmlingua_rate,
            llmlingua_scorer=llmlingua_scorer,
            llmlingua2_model=llmlingua2_model,
            shuffle=shuffle,
            progress=progress,
            top_k=top_k,
        )
        try:
            if haystack:
                run = evaluate_haystack(arc, examples, todo, window, multiple, **settings)
            else:
                run = evaluate(arc, task, examples, todo, window=window, **settings)
        except (ValueError, ImportError) as err:
            raise typer.BadParameter(str(err)) from None
        if shared is not None:
            run = _with_shared(run, shared, names, task)
        run["config"].update(model=name, data=str(data), seconds=time.perf_counter() - start)
        if content:
            run["content"] = measure_content(arc, examples, content_span, index, limit)
            for line in describe(run["content"]["tasks"]):
                typer.echo(f"{name}: {line}")
        runs.append(run)
        del arc

    typer.echo(markdown_table(runs))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"version": REPORT_VERSION, "runs": runs}
        if len(runs) > 1:
            result["plot"] = str(plot_scores(runs, out.with_suffix(".png")))
            typer.echo(f"plot: {result['plot']}")
        write_json(out, result, indent=1)
        typer.echo(f"results: {out}")


def measure_content(arc, examples, span: int, decoder: int, limit: int | None) -> dict:
    passages = [p for e in examples[: limit or len(examples)] for p in e.passages[:1]]
    return content_report(
        arc, text_batches(arc, passages, span, decoder), decoder, reconstruct=list(dict.fromkeys(passages))[:3]
    )


def _with_shared(run: dict, shared: dict, order: list[str], task: str) -> dict:
    """Add the decoder-only methods of an earlier run with the same decoder, in the asked order."""
    metrics, predictions = {}, {}
    for m in order:
        source = shared if m in DECODER_ONLY else run
        metrics[m] = dict(source["metrics"][m])
        predictions[m] = source["predictions"][m]
        if m in DECODER_ONLY:
            metrics[m]["shared_from"] = shared["config"]["model"]
    add_gain_kept(metrics, task)
    run["config"]["methods"] = order
    return {"config": run["config"], "metrics": metrics, "predictions": predictions}
