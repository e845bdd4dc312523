"""Storage cost against answer quality: SQuAD answers read from stored vectors.

The paragraphs of N held-out questions (and of the fixed shots) are indexed once into a float32
store with the library's indexing code, then copied into a store per codec (float16, PQ at 2, 1 and
0.5 bits per dimension, and 0.25). Every question is answered with the evaluation's ARC prompt, each document's
vectors read from one store (no encoder run), greedy, with the evaluation runner's budget and answer
cut. Beside them: ARC compressing on the fly (it must give the float32 store's answers), open-book
(raw text) and closed-book.

    python benchmarks/storage_quality.py --model runs/quickstart/model \\
        --data /work/shared/data/squad/dev.jsonl --questions 150 --shots 3 \\
        --codecs float32,float16,pq2,pq1,pq0.5,pq0.25 --out runs/storage_quality.json

Bytes per token = stored vector bytes (codes only, the paper's formula) / decoder tokens of the
paragraphs; "with codebook" adds the PQ codebook, amortised over this (small) store only. Target:
a stored codec at no more bytes per token than the raw UTF-8 text that keeps >= 90% of the float32
store's exact match. It prints a Markdown table and writes the JSON report to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from arc_encoder.evaluation.methods import StoredARC, build_method, example_docs
from arc_encoder.evaluation.runner import (
    answer_examples,
    max_new_tokens_for,
    select_examples,
    summarise,
    warm_up,
)
from arc_encoder.evaluation.tasks import load_task, metric_for_task
from arc_encoder.loading import DEFAULT_MODEL, MODEL_HELP, load_model, quiet_transformers
from arc_encoder.model.arc import ARCModel
from arc_encoder.storage import VectorStore, make_codec
from arc_encoder.storage.codecs import PQ_CODE_BITS
from arc_encoder.storage.indexing import index_corpus, quantize_store
from arc_encoder.training.distributed import pick_device

REFERENCE_CODEC = "float32"  # the codec whose answers ARC on the fly must reproduce
TARGET_EM_KEPT = 0.9  # share of the float32 store's exact match a cheaper codec must keep
TIMED = (
    ("stored_float32", f"stored-{REFERENCE_CODEC}"),
    ("on_the_fly", "arc"),
    ("open_book", "open"),
    ("closed_book", "closed"),
)


def stored_name(codec: str) -> str:
    return f"stored-{codec}"


def parse_codecs(text: str, dim: int) -> list[str]:
    """Comma-separated codec names, each valid for vectors of `dim`; float32 must be one."""
    codecs = [c.strip() for c in text.split(",") if c.strip()]
    if len(set(codecs)) != len(codecs):
        raise ValueError(f"codec listed twice in {codecs}")
    if REFERENCE_CODEC not in codecs:
        raise ValueError(
            f"--codecs must include {REFERENCE_CODEC}: it is the reference the other "
            f"codecs and on-the-fly compression are compared with (got {codecs})"
        )
    for codec in codecs:
        make_codec(codec, dim)  # unknown name, or a PQ rate this bottleneck width forbids
    return codecs


def unique_paragraphs(examples) -> dict[str, str]:
    """Document text -> store id, in order of first appearance (shots first)."""
    texts = dict.fromkeys(doc.text for ex in examples for doc in example_docs(ex))
    return {text: f"p{i:05d}" for i, text in enumerate(texts)}


def whole_paragraph_chunk_tokens(model: ARCModel, texts) -> int:
    """A chunk size that keeps every paragraph in one chunk: the longest, in encoder tokens."""
    longest = max(len(model.encoder_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    limit = model.encoder.hf_config.max_position_embeddings
    if longest > limit:
        raise ValueError(
            f"a paragraph of {longest} encoder tokens exceeds the encoder's {limit} "
            "positions: give --chunk-tokens to store paragraphs in chunks"
        )
    return longest


def storage_figures(store: VectorStore, seconds: float, training_vectors: int | None) -> dict:
    s = store.stats()
    return {
        "codec": store.codec.name,
        "bytes_per_vector": store.codec.bytes_per_vector,
        "n_docs": s.n_docs,
        "n_chunks": s.n_chunks,
        "n_vectors": s.n_vectors,
        "n_tokens": s.n_tokens,
        "tokens_per_vector": s.n_tokens / s.n_vectors,
        "payload_bytes": s.payload_bytes,
        "shard_file_bytes": s.vector_bytes,
        "codebook_bytes": s.codebook_bytes,
        "bytes_per_token": s.payload_bytes / s.n_tokens,
        "file_bytes_per_token": s.vector_bytes / s.n_tokens,
        "bytes_per_token_with_codebook": (s.payload_bytes + s.codebook_bytes) / s.n_tokens,
        "pq_training_vectors": training_vectors,
        "pq_training_vectors_per_centroid": (
            training_vectors / (1 << PQ_CODE_BITS) if training_vectors is not None else None
        ),
        "build_seconds": seconds,
    }


def build_stores(
    model: ARCModel,
    paragraphs: dict[str, str],
    root: Path,
    codecs: list[str],
    chunk_tokens: int,
    decoder: int,
    pq_sample: int,
    seed: int,
    progress: bool,
) -> tuple[dict[str, Path], dict]:
    """Index the paragraphs into root/float32, quantize that store into root/<codec> for the others.

    Returns (codec -> store folder, codec -> storage figures plus "text": the raw text's).
    """
    documents = [(doc_id, text) for text, doc_id in paragraphs.items()]
    paths = {c: root / c for c in codecs}
    reference = paths[REFERENCE_CODEC]
    report = index_corpus(
        model,
        None,
        reference,
        codec=REFERENCE_CODEC,
        decoder=decoder,
        chunk_tokens=chunk_tokens,
        progress=progress,
        documents=documents,
    )
    storage = {}
    with VectorStore.open(reference) as store:
        storage[REFERENCE_CODEC] = storage_figures(store, report.seconds, None)
        s = store.stats()
        storage["text"] = {"bytes": s.text_bytes, "n_tokens": s.n_tokens, "bytes_per_token": s.text_bytes_per_token}
    n_vectors = storage[REFERENCE_CODEC]["n_vectors"]
    for codec in codecs:
        if codec == REFERENCE_CODEC:
            continue
        start = time.perf_counter()
        try:
            store = quantize_store(reference, paths[codec], codec, sample_size=pq_sample, seed=seed)
        except ValueError as err:
            raise ValueError(
                f"cannot build the {codec} store from {n_vectors} vectors ({err}): use more --questions"
            ) from err
        with store:
            trained = min(pq_sample, n_vectors) if store.codec.needs_training else None
            storage[codec] = storage_figures(store, time.perf_counter() - start, trained)
    return paths, storage


def answer_agreement(reference_rows: list[dict], other_rows: list[dict]) -> dict:
    """How many examples got the very same generated text (and prompt length) from two methods."""
    differing = [
        a["id"]
        for a, b in zip(reference_rows, other_rows, strict=True)
        if (a["raw"], a["positions"]) != (b["raw"], b["positions"])
    ]
    n = len(reference_rows)
    return {"n": n, "identical": n - len(differing), "rate": (n - len(differing)) / n, "differing_ids": differing}


@torch.no_grad()
def vector_difference(model: ARCModel, store: VectorStore, paragraphs: dict[str, str], texts, decoder: int) -> float:
    """Largest |stored float32 - compressed now| over the given documents' vectors."""
    texts = list(dict.fromkeys(texts))
    fresh = model.compress(texts, decoder)
    worst = 0.0
    for text, compressed in zip(texts, fresh):
        stored = store.get(paragraphs[text])
        if [c.shape[0] for c in stored] != [c.shape[0] for c in compressed.chunks]:
            return float("inf")  # chunked differently: not the same vectors at all
        for s, c in zip(stored, compressed.chunks):
            worst = max(worst, float((torch.from_numpy(s) - c.float().cpu()).abs().max()))
    return worst


def targets(metrics: dict, storage: dict, codecs: list[str]) -> dict:
    text_bpt = storage["text"]["bytes_per_token"]
    out = {}
    for codec in codecs:
        kept = metrics[stored_name(codec)].get("em_kept")
        bpt = storage[codec]["bytes_per_token"]
        out[codec] = {
            "bytes_per_token": bpt,
            "text_bytes_per_token": text_bpt,
            "bytes_at_most_text": bpt <= text_bpt,
            "em_kept": kept,
            "em_kept_at_least": None if kept is None else kept >= TARGET_EM_KEPT,
            "met": bpt <= text_bpt and kept is not None and kept >= TARGET_EM_KEPT,
        }
    return out


def run(args) -> dict:
    if "em" not in metric_for_task(args.task):
        raise ValueError(f"task {args.task!r} is not scored by exact match; use a QA task (squad)")
    if args.questions < 1:
        raise ValueError(f"--questions must be at least 1, got {args.questions}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).to(pick_device(args.device)).eval()
    args.decoder = model.decoder_index(args.decoder)  # a name or an index -> its index
    vector_dim = model.adapters[args.decoder].vector_dim  # width of the vectors a store keeps
    codecs = parse_codecs(args.codecs, vector_dim)
    shots, scored = select_examples(
        load_task(args.task, args.data), args.shots, args.seed, limit=args.questions, shuffle=True
    )
    paragraphs = unique_paragraphs(shots + scored)
    model_chunk_tokens = model.config.chunk_tokens
    chunk_tokens = args.chunk_tokens or whole_paragraph_chunk_tokens(model, paragraphs)
    # On-the-fly compression chunks as the store does, so the two give the same vectors.
    model.config.chunk_tokens = chunk_tokens
    max_new_tokens = args.max_new_tokens or max_new_tokens_for(args.task)

    if args.store_dir and Path(args.store_dir).exists() and any(Path(args.store_dir).iterdir()):
        raise ValueError(f"--store-dir {args.store_dir} is not empty: give a new or empty folder")

    with tempfile.TemporaryDirectory(prefix="storage-quality-") as tmp:
        root = Path(args.store_dir) if args.store_dir else Path(tmp)
        paths, storage = build_stores(
            model, paragraphs, root, codecs, chunk_tokens, args.decoder, args.pq_sample, args.seed, args.progress
        )
        warm_up(model, args.decoder)
        table, predictions = {}, {}
        open_stores = {c: VectorStore.open(paths[c]) for c in codecs}
        try:
            methods = [
                (name, lambda name=name: build_method(name, model, args.decoder, shots))
                for name in ("closed", "open", "arc")
            ]
            methods += [
                (stored_name(c), lambda c=c: StoredARC(model, args.decoder, shots, open_stores[c], paragraphs))
                for c in codecs
            ]
            for name, make in methods:
                start = time.perf_counter()
                method = make()
                setup = time.perf_counter() - start  # shot documents compressed (or read) once
                rows = answer_examples(
                    model, method, scored, args.task, args.decoder, max_new_tokens, args.batch_size, args.progress
                )
                table[name] = {
                    **summarise(args.task, rows, args.seed),
                    "setup_seconds": setup,
                    "prompt_seconds_per_example": sum(r["prompt_seconds"] for r in rows) / len(rows),
                }
                predictions[name] = rows

            agreement = answer_agreement(predictions[stored_name(REFERENCE_CODEC)], predictions["arc"])
            differing = set(agreement["differing_ids"])
            checked = [d.text for ex in shots + [e for e in scored if e.id in differing] for d in example_docs(ex)]
            agreement["vector_check_documents"] = len(set(checked))
            agreement["vector_max_abs_diff"] = vector_difference(
                model, open_stores[REFERENCE_CODEC], paragraphs, checked, args.decoder
            )
        finally:
            for store in open_stores.values():
                store.close()

    reference_em = table[stored_name(REFERENCE_CODEC)]["em"]["mean"]
    for name in ["arc"] + [stored_name(c) for c in codecs]:
        table[name]["em_kept"] = table[name]["em"]["mean"] / reference_em if reference_em else None
    return {
        "config": {
            "model": args.model,
            "fingerprint": model.fingerprint(),
            "data": str(args.data),
            "task": args.task,
            "questions": len(scored),
            "shots": args.shots,
            "shot_ids": [s.id for s in shots],
            "seed": args.seed,
            "codecs": codecs,
            "paragraphs": len(paragraphs),
            "chunk_tokens": chunk_tokens,
            "chunks_whole_paragraphs": args.chunk_tokens is None,
            "model_config_chunk_tokens": model_chunk_tokens,
            "pq_sample": args.pq_sample,
            "max_new_tokens": max_new_tokens,
            "batch_size": args.batch_size,
            "decoder": args.decoder,
            "decoder_name": model.config.decoders[args.decoder],
            "vector_dim": vector_dim,
            "pooling_factors": model.config.pooling_factors,
            "device": str(model.device),
            "torch_threads": torch.get_num_threads(),
            "target": {"em_kept": TARGET_EM_KEPT, "bytes_per_token": "at most the raw UTF-8 text's"},
        },
        "storage": storage,
        "metrics": table,
        # Whole answers (prompt + generation) and the prompt building alone (reading the stored
        # vectors vs running the encoder vs tokenizing the text happens there).
        "seconds_per_answer": {key: table[name]["seconds_per_example"] for key, name in TIMED},
        "prompt_seconds_per_answer": {key: table[name]["prompt_seconds_per_example"] for key, name in TIMED},
        "agreement_on_the_fly_vs_float32": agreement,
        "target": targets(table, storage, codecs),
        "predictions": predictions,
    }


def _score(values: dict, name: str) -> str:
    m = values[name]
    return f"{m['mean']:.1f} ± {m['stderr']:.1f}" if m["stderr"] is not None else f"{m['mean']:.1f}"


def markdown(report: dict) -> str:
    cfg, storage, metrics = report["config"], report["storage"], report["metrics"]
    text_bpt = storage["text"]["bytes_per_token"]

    def kept(name):
        value = metrics[name].get("em_kept")
        return "–" if value is None else f"{100 * value:.0f}%"

    lines = [
        f"{cfg['questions']} questions, {cfg['shots']} shots, {cfg['paragraphs']} paragraphs "
        f"({storage['text']['n_tokens']:,} decoder tokens), model {cfg['model']}, {cfg['device']}",
        "",
        "| system | bytes / token | with codebook | EM | F1 | EM kept vs float32 | s / answer | of which prompt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("open-book (raw UTF-8 text)", "open", f"{text_bpt:.2f}", "–"),
        ("closed-book", "closed", "0", "–"),
        ("ARC, compressed on the fly", "arc", "–", "–"),
    ]
    rows += [
        (
            f"ARC, stored {c}",
            stored_name(c),
            f"{storage[c]['bytes_per_token']:.2f}",
            f"{storage[c]['bytes_per_token_with_codebook']:.2f}",
        )
        for c in cfg["codecs"]
    ]
    for label, name, bpt, with_codebook in rows:
        lines.append(
            f"| {label} | {bpt} | {with_codebook} | {_score(metrics[name], 'em')} | "
            f"{_score(metrics[name], 'f1')} | {kept(name)} | "
            f"{metrics[name]['seconds_per_example']:.3f} | "
            f"{metrics[name]['prompt_seconds_per_example']:.4f} |"
        )
    agreement = report["agreement_on_the_fly_vs_float32"]
    sec, prompt = report["seconds_per_answer"], report["prompt_seconds_per_answer"]
    lines += [
        "",
        f"On the fly vs float32 store: {agreement['identical']}/{agreement['n']} identical answers; "
        f"largest vector difference {agreement['vector_max_abs_diff']:.2e} "
        f"({agreement['vector_check_documents']} documents checked).",
        f"Seconds per answer: stored {sec['stored_float32']:.3f}, on the fly {sec['on_the_fly']:.3f}, "
        f"open-book {sec['open_book']:.3f}, closed-book {sec['closed_book']:.3f} "
        f"(batches of {cfg['batch_size']}); building the prompt alone: stored "
        f"{prompt['stored_float32']:.3f}, on the fly {prompt['on_the_fly']:.3f}, open-book {prompt['open_book']:.3f}.",
        f"Chunks of {cfg['chunk_tokens']} encoder tokens"
        + (" (each paragraph whole)" if cfg["chunks_whole_paragraphs"] else "")
        + ".",
    ]
    trained = [
        (c, storage[c]["pq_training_vectors"]) for c in cfg["codecs"] if storage[c]["pq_training_vectors"] is not None
    ]
    if trained:
        lines.append(
            "PQ codebooks trained on the store's own vectors: "
            + ", ".join(f"{c} {n:,} ({n / (1 << PQ_CODE_BITS):.0f} per centroid)" for c, n in trained)
            + "."
        )
    met = [c for c, t in report["target"].items() if t["met"]]
    lines.append(
        f"Target (<= {text_bpt:.2f} bytes/token and >= {100 * TARGET_EM_KEPT:.0f}% of float32 EM): "
        + (f"met by {', '.join(met)}." if met else "met by no codec.")
    )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--data", required=True, help="SQuAD JSONL (question, answers, context)")
    parser.add_argument("--task", default="squad")
    parser.add_argument("--questions", type=int, default=150, help="held-out questions to answer")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--codecs", default="float32,float16,pq2,pq1,pq0.5,pq0.25")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--seed", type=int, default=0, help="shots, question shuffle, PQ sample")
    parser.add_argument("--pq-sample", type=int, default=65536, help="most vectors to train PQ on")
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="encoder tokens per stored chunk (default: every paragraph whole)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (64)")
    parser.add_argument("--decoder", default="0", help="the decoder's name (as the model's config lists it) or index")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--store-dir", default=None, help="keep the stores here (default: a temp folder)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.chunk_tokens is not None and args.chunk_tokens < 1:
        parser.error(f"--chunk-tokens must be at least 1, got {args.chunk_tokens}")
    if args.pq_sample < 1:
        parser.error(f"--pq-sample must be at least 1, got {args.pq_sample}")
    return args


def main(argv=None) -> dict:
    """Measure, print the table, write the JSON; then insist that on-the-fly compression gave the
    float32 store's answers (after writing, so a long run's numbers are never lost)."""
    args = parse_args(argv)
    quiet_transformers()
    report = run(args)
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"results: {args.out}")
    agreement = report["agreement_on_the_fly_vs_float32"]
    assert agreement["rate"] == 1.0, (
        f"on-the-fly compression and the float32 store answered {len(agreement['differing_ids'])} "
        f"question(s) differently: {agreement['differing_ids'][:10]} (largest vector difference "
        f"{agreement['vector_max_abs_diff']:.2e})"
    )
    return report


if __name__ == "__main__":
    main()
