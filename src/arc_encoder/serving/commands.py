"""CLI verbs for stores and serving: index, store-info, ask, serve (registered in cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..loading import DECODER_HELP, DEFAULT_MODEL, DEVICE_HELP, DTYPE_HELP, MODEL_HELP, load_model_on, placement
from ..records import command_line_text
from ..storage.indexing import index_corpus, open_store, scan_corpus, store_report
from .ask import ask as ask_store
from .cache import DEFAULT_CACHE_MB
from .vllm_backend import import_vllm, vllm_backend_factory

API_KEY_ENV = "ARC_ENCODER_API_KEY"


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def index(
    corpus: Path = typer.Argument(..., help='JSONL file, one {"id": ..., "text": ...} per line'),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    store: Path = typer.Option(..., "--store", help="vector store folder (created if missing)"),
    codec: str = typer.Option("float32", help="float32, float16, pq2, pq1, pq0.5 or pq0.25 (PQ bits per dimension)"),
    batch_size: int = typer.Option(16, help="chunks per encoder batch"),
    decoder: str | None = typer.Option(
        None, "--decoder", help=f"{DECODER_HELP}, whose projector makes the vectors (default the first, or the store's)"
    ),
    chunk_tokens: int | None = typer.Option(
        None, help="encoder tokens per chunk (default: the model config's chunk_tokens, else 256)"
    ),
    replace: bool = typer.Option(False, "--replace", help="recompress documents already stored"),
    write_every: int = typer.Option(256, help="documents per store transaction (what an interruption can lose)"),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}; vectors are computed in float32"),
):
    """Compress a JSONL corpus into a vector store; rerun the same command to resume."""
    try:
        scan_corpus(corpus)  # bad input is reported before the model loads
        arc = load_model_on(model, device, "float32")
        report = index_corpus(
            arc,
            corpus,
            store,
            codec=codec,
            batch_size=batch_size,
            decoder=decoder,
            chunk_tokens=chunk_tokens,
            replace=replace,
            write_every=write_every,
            progress=sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: documents already written are kept; rerun the same command to continue", err=True)
        raise typer.Exit(130) from None
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        _fail(str(e))
    typer.echo("\n".join(report.lines()))


def store_info(path: Path = typer.Argument(..., help="vector store folder")):
    """Describe a vector store: model, codec, counts, bytes per token."""
    try:
        typer.echo("\n".join(store_report(path)))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))


def ask(
    question: str = typer.Argument(..., help="the question"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="the model the store was built with"),
    store: Path = typer.Option(..., "--store", help="vector store folder"),
    k: int = typer.Option(3, help="chunks to retrieve"),
    max_new_tokens: int = typer.Option(64),
    decoder: str | None = typer.Option(
        None, "--decoder", help=f"{DECODER_HELP}; the store's vectors feed only the decoder it was built for"
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
):
    """Answer a question from the store: BM25 top-k chunks, their stored vectors in the prompt."""
    try:
        question = command_line_text(question, "the question")
        arc = load_model_on(model, device, dtype)
        vectors, settings = open_store(store, arc, decoder, create=False)
        with vectors:
            answer = ask_store(arc, vectors, question, settings.decoder, k=k, max_new_tokens=max_new_tokens)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(str(e))
    typer.echo(answer.text or "(empty answer: the model stopped at once)")
    if not answer.sources:
        typer.echo("sources: none matched the question (answered closed-book)")
        return
    typer.echo(f"sources ({answer.generation.compressed_vectors} stored vectors in the prompt):")
    for rank, s in enumerate(answer.sources, 1):
        preview = " ".join(s.text.split())
        preview = preview if len(preview) <= 80 else preview[:77] + "..."
        typer.echo(f"  {rank}. {s.doc_id} chunk {s.chunk_index}  score {s.score:.2f}  {preview!r}")


def serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    store: Path = typer.Option(..., "--store", help="vector store folder (created if missing)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar=API_KEY_ENV, help=f"require this key (or set {API_KEY_ENV})"
    ),
    decoder: str | None = typer.Option(
        None, "--decoder", help=f"{DECODER_HELP}, served by default (default: the store's, else the first)"
    ),
    chunk_tokens: int | None = typer.Option(None, help="chunk size for a new store"),
    backend: str = typer.Option("hf", help="hf (PyTorch decoder) or vllm (GPU)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    max_batch: int = typer.Option(8, help="most requests answered by one model call"),
    batch_window_ms: float = typer.Option(10.0, help="how long the first request waits for batch-mates"),
    max_texts: int = typer.Option(32, help="texts per compress request / documents per add request"),
    max_chars: int = typer.Option(100_000, help="characters per text"),
    max_new_tokens: int = typer.Option(512, help="cap on a request's max_new_tokens"),
    cache_mb: float = typer.Option(
        DEFAULT_CACHE_MB,
        help="memory for the cache of compressed documents, in MB (0: none): a document asked about again "
        "is not compressed again",
    ),
    compress_batch: int | None = typer.Option(
        None,
        help="chunks per encoder call (default 16 on a GPU, 4 on the CPU); a request whose client has left "
        "stops being compressed at the next call",
    ),
    gpu_memory_utilization: float = typer.Option(0.5, help="vLLM's share of GPU memory"),
    served_model_name: str | None = typer.Option(
        None, help="the model id of the OpenAI-compatible routes (default: the --model folder's name)"
    ),
    log_level: str = typer.Option("info"),
):
    """HTTP service: compress, generate, store documents and answer questions, plus OpenAI-compatible
    chat and completions with compressed documents (docs at /docs)."""
    # the `serve` extra (fastapi, uvicorn; pydantic comes with fastapi) is optional: imported here,
    # so that the other commands work without it
    import uvicorn

    from .app import create_app
    from .schemas import ServeLimits

    if backend not in ("hf", "vllm"):
        _fail(f"--backend must be hf or vllm, got {backend!r}")
    if not cache_mb >= 0:
        _fail(f"--cache-mb must be >= 0, got {cache_mb}")
    if compress_batch is not None and compress_batch < 1:
        _fail(f"--compress-batch must be >= 1, got {compress_batch}")
    try:
        _, torch_dtype = placement(device, dtype)  # before vLLM's import and minutes of loading
    except ValueError as e:
        _fail(str(e))
    factory = None
    if backend == "vllm":
        try:
            import_vllm()  # before minutes of model loading
        except ImportError as e:
            _fail(str(e))
        factory = vllm_backend_factory(gpu_memory_utilization=gpu_memory_utilization, dtype=torch_dtype)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(f"warning: serving on {host} without an API key", err=True)
    limits = ServeLimits(max_texts=max_texts, max_chars=max_chars, max_new_tokens=max_new_tokens)
    try:
        arc = load_model_on(model, device, dtype)
        arc.decoders[arc.decoder_index(decoder)]  # read the served decoder now (model/deferred.py)
        opened, _ = open_store(store, arc, decoder, chunk_tokens)  # errors now, not inside uvicorn
        opened.close()
        app = create_app(
            arc,
            store,
            decoder=decoder,
            chunk_tokens=chunk_tokens,
            api_key=api_key,
            limits=limits,
            window_s=batch_window_ms / 1000,
            max_batch=max_batch,
            backend=factory,
            backend_name=backend,
            model_name=served_model_name or Path(model).name,
            cache_mb=cache_mb,
            compress_batch=compress_batch or (16 if arc.device.type == "cuda" else 4),
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("store-info")(store_info)
    app.command("ask")(ask)
    app.command("serve")(serve)
