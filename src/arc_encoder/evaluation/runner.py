"""Run the few-shot evaluation protocol (method.md §8) for several methods on one model.

`evaluate` draws k fixed shots (never scored), runs every method on the same remaining examples
with the same decoder, greedy decoding and answer cut, and returns a JSON-ready report:

    {"config": {...},
     "metrics": {method: {"em": {"mean", "stderr"}, ..., "seconds_per_example", ...}},
     "predictions": {method: [{"id", "prediction", "answers", "em", ...}, ...]}}

Scores are on the paper's 0-100 scale. "pooling_factor" is the paper's (method.md §13.10): decoder
tokens of an example's documents / the positions they take, averaged over examples.

With a `window` (decoder positions), a method whose prompt plus answer budget does not fit it is
refused, never cut: its entry is {"not_applicable": "<method>: <why>"} and it has no predictions.
`evaluate_haystack` runs the same comparison on long documents (evaluation/haystack.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from arc_encoder.evaluation import metrics
from arc_encoder.evaluation.haystack import model_haystacks, paragraph_pool
from arc_encoder.evaluation.methods import DEFAULT_TOP_K, Method, build_method, check_methods, generate_answers
from arc_encoder.evaluation.prompts import postprocess_answer
from arc_encoder.evaluation.tasks import Example, metric_for_task, split_shots
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.prompting import PromptTooLong
from arc_encoder.storage.retrieval import top_k_texts

from ..prompt import closed_question

# Generation budgets of the reference scripts (method.md §8.2): summaries are longer.
MAX_NEW_TOKENS = {"cnn": 256}
DEFAULT_MAX_NEW_TOKENS = 64
BLEU_BOOTSTRAP = 200  # resamples for the standard error of corpus BLEU


def per_example_scores(task: str, prediction: str, answers: list[str]) -> dict[str, float]:
    """Per-example scores on a 0-100 scale (BLEU is a corpus score: computed over all examples)."""
    names = metric_for_task(task)
    scores = {}
    if "em" in names:
        scores["em"] = 100 * metrics.exact_match(prediction, answers)
        scores["f1"] = 100 * metrics.f1(prediction, answers)
    if "rougeL" in names:
        scores["rougeL"] = 100 * metrics.rouge_l(prediction, answers)
    return scores


def corpus_bleu_with_stderr(preds: list[str], refs: list[str], seed: int = 0) -> tuple[float, float]:
    """Corpus BLEU and its bootstrap standard error (resampling examples with replacement)."""
    score = metrics.bleu(preds, refs)
    if len(preds) < 2:
        return score, math.nan
    rng = random.Random(seed)
    samples = []
    for _ in range(BLEU_BOOTSTRAP):
        idx = [rng.randrange(len(preds)) for _ in preds]
        samples.append(metrics.bleu([preds[i] for i in idx], [refs[i] for i in idx]))
    mean = sum(samples) / len(samples)
    return score, math.sqrt(sum((s - mean) ** 2 for s in samples) / (len(samples) - 1))


def summarise(task: str, rows: list[dict], seed: int = 0) -> dict:
    """Per-method metrics from its per-example rows (the same code recomputes saved reports)."""
    out = {}
    for name in metric_for_task(task):
        if name == "bleu":
            mean, stderr = corpus_bleu_with_stderr(
                [r["prediction"] for r in rows], [r["answers"][0] for r in rows], seed
            )
        else:
            mean, stderr = metrics.mean_with_stderr([r[name] for r in rows])
        out[name] = {"mean": mean, "stderr": None if math.isnan(stderr) else stderr}
    n = len(rows)
    out["n"] = n
    out["seconds_per_example"] = sum(r["seconds"] for r in rows) / n
    out["positions_per_example"] = sum(r["positions"] for r in rows) / n
    out["document_tokens_per_example"] = sum(r["document_tokens"] for r in rows) / n
    out["document_positions_per_example"] = sum(r["document_positions"] for r in rows) / n
    ratios = [r["document_tokens"] / r["document_positions"] for r in rows if r["document_positions"]]
    out["pooling_factor"] = sum(ratios) / len(ratios) if ratios else None
    return out


def add_document_effect(metric_table: dict[str, dict], predictions: dict[str, list[dict]], task: str) -> None:
    """ARC - mismatched, paired over the same examples (per score): what reading the right
    document adds to ARC's answers beyond the prompt format, under `metric_table["arc"]`."""
    if "arc" not in predictions or "mismatched" not in predictions:
        return
    if not (applicable(metric_table["arc"]) and applicable(metric_table["mismatched"])):
        return
    effect = {}
    for name in metric_for_task(task):
        if name == "bleu":  # a corpus score: no per-example difference
            continue
        arc, control = ({r["id"]: r[name] for r in predictions[m]} for m in ("arc", "mismatched"))
        mean, stderr = metrics.paired_difference(arc, control)
        effect[name] = {"mean": mean, "stderr": None if math.isnan(stderr) else stderr}
    metric_table["arc"]["minus_mismatched"] = effect


def applicable(values: dict) -> bool:
    """Whether a method's metrics are scores (not a method refused by the window)."""
    return "not_applicable" not in values


def add_gain_kept(metric_table: dict[str, dict], task: str) -> None:
    """(method - closed) / (open - closed) per score, for every method but the two anchors."""
    if "closed" not in metric_table or "open" not in metric_table:
        return
    if not (applicable(metric_table["closed"]) and applicable(metric_table["open"])):
        return
    for method, values in metric_table.items():
        if method in ("closed", "open") or not applicable(values):
            continue
        values["gain_kept"] = {
            name: metrics.gain_kept(
                values[name]["mean"], metric_table["closed"][name]["mean"], metric_table["open"][name]["mean"]
            )
            for name in metric_for_task(task)
        }


def max_new_tokens_for(task: str) -> int:
    """The generation budget of a task (method.md §8.2): 64 tokens, 256 for summaries."""
    return MAX_NEW_TOKENS.get(task.lower(), DEFAULT_MAX_NEW_TOKENS)


def select_examples(
    examples: Sequence[Example], shots: int, seed: int = 0, limit: int | None = None, shuffle: bool = False
) -> tuple[list[Example], list[Example]]:
    """(fixed shots, examples to score), drawn as `evaluate` draws them.

    `shots` examples are picked with `seed` and never scored; the rest keep file order, are
    permuted with `seed` when `shuffle`, then cut to the first `limit`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all examples), got {limit}")
    if not examples:
        raise ValueError("no examples to evaluate")
    shot_examples, scored = split_shots(examples, shots, seed)
    if not scored:
        raise ValueError(f"{len(examples)} examples leave none to score after {shots} shots")
    if shuffle:
        random.Random(seed).shuffle(scored)
    return shot_examples, scored[:limit] if limit is not None else scored


def warm_up(model: ARCModel, decoder: int | str = 0) -> None:
    """One untimed generation: the first forward pass pays one-off costs (allocations, kernel
    selection) that would otherwise be charged to whichever method happens to run first."""
    model.generate([[closed_question("warm-up")]], decoder=decoder, max_new_tokens=2)


def answer_examples(
    model: ARCModel,
    method: Method,
    examples: Sequence[Example],
    task: str,
    decoder: int | str = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    window: int | None = None,
) -> list[dict]:
    """One row per example: the method's greedy answer, cut at the first blank line, its scores,
    prompt sizes and seconds: `seconds` from building the prompt (compression included) to the
    answer, `prompt_seconds` the building alone; a batch's time is shared by its examples.
    A prompt beyond `window` (with the answer budget) raises PromptTooLong."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    decoder = model.decoder_index(decoder)
    max_new_tokens = max_new_tokens or max_new_tokens_for(task)
    rows = []
    bar = tqdm(total=len(examples), desc=method.name, unit="ex", disable=not progress)
    for first in range(0, len(examples), batch_size):
        batch = examples[first : first + batch_size]
        start = time.perf_counter()
        built = method.prompts(batch)  # includes compressing (or reading) these documents
        prompt_seconds = (time.perf_counter() - start) / len(batch)
        generations = generate_answers(model, built, decoder, max_new_tokens, window)
        seconds = (time.perf_counter() - start) / len(batch)
        for ex, prompt, gen in zip(batch, built, generations):
            prediction = postprocess_answer(gen.text)
            rows.append(
                {
                    "id": ex.id,
                    "question": ex.question,
                    "answers": ex.answers,
                    "prediction": prediction,
                    "raw": gen.text,
                    **per_example_scores(task, prediction, ex.answers),
                    "positions": gen.prompt_length,
                    "document_tokens": prompt.document_tokens,
                    "document_positions": prompt.document_positions,
                    "seconds": seconds,
                    "prompt_seconds": prompt_seconds,
                }
            )
        bar.update(len(batch))
    bar.close()
    return rows


def evaluate(
    model: ARCModel,
    task: str,
    examples: Sequence[Example],
    methods: Sequence[str] | str,
    shots: int = 5,
    limit: int | None = None,
    seed: int = 0,
    *,
    shuffle: bool = False,
    **settings,
) -> dict:
    """Score `methods` on `examples` of `task` with `shots` fixed in-context examples.

    The scored examples keep file order; `shuffle` permutes them (with `seed`) before `limit`
    is applied, so that a limited run samples the whole file rather than its first articles
    (SQuAD files list all questions of a paragraph together). `settings`: those of
    `compare_methods` (batch_size, decoder, max_new_tokens, llmlingua_*, progress, window, top_k); `decoder`
    an index or a name (ARCModel.decoder_index).
    """
    metric_for_task(task)  # unknown task -> ValueError listing the known ones
    check_methods(methods)
    settings["decoder"] = model.decoder_index(settings.get("decoder", 0))  # unknown -> ValueError naming them
    shot_examples, scored = select_examples(examples, shots, seed, limit, shuffle)
    return compare_methods(
        model, task, shot_examples, scored, methods, seed=seed, shuffle=shuffle, limit=limit, **settings
    )


def evaluate_haystack(
    model: ARCModel,
    examples: Sequence[Example],
    methods: Sequence[str] | str,
    window: int,
    multiple: int,
    shots: int = 5,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    decoder: int | str = 0,
    max_new_tokens: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    **settings,
) -> dict:
    """Long documents (evaluation/haystack.py): shots and questions drawn from `examples` (a
    held-out SQuAD-style file) as `evaluate` draws them, each scored question's paragraph hidden
    among other articles' paragraphs so that its open-book sequence takes `multiple` x `window`
    positions, then every method compared under that window. ARC and rag-arc compress each
    paragraph on its own, in parallel. `settings`: the other arguments of `evaluate`."""
    check_methods(methods)
    decoder = model.decoder_index(decoder)
    shot_examples, scored = select_examples(examples, shots, seed, limit, shuffle)
    max_new_tokens = max_new_tokens or max_new_tokens_for("haystack")
    stacks = model_haystacks(
        model.decoder_tokenizers[decoder],
        shot_examples,
        scored,
        paragraph_pool(examples),
        window,
        multiple,
        max_new_tokens,
        seed,
    )
    report = compare_methods(
        model,
        "haystack",
        shot_examples,
        [h.example for h in stacks],
        methods,
        seed=seed,
        decoder=decoder,
        max_new_tokens=max_new_tokens,
        shuffle=shuffle,
        limit=limit,
        window=window,
        top_k=top_k,
        separate_passages=True,
        **settings,
    )
    by_id = {h.example.id: h for h in stacks}
    for rows in report["predictions"].values():
        for row in rows:
            row["gold_paragraph"] = by_id[row["id"]].gold_index
            row["paragraphs"] = len(by_id[row["id"]].example.passages)
    n = len(stacks)
    report["config"]["haystack"] = {
        "window": window,
        "multiple": multiple,
        "target_positions": multiple * window,
        "open_book_positions_per_example": sum(h.positions for h in stacks) / n,
        "paragraphs_per_example": sum(len(h.example.passages) for h in stacks) / n,
        "gold_paragraphs": [h.gold_index for h in stacks],
        "top_k": top_k,
        "bm25_recall_at_k": 100 * sum(gold_retrieved(h, top_k) for h in stacks) / n,
    }
    return report


def gold_retrieved(stack, k: int) -> bool:
    """Whether BM25 puts a haystack's own paragraph in the top k for its question."""
    return stack.gold_index in top_k_texts(stack.example.question, stack.example.passages, k)


def compare_methods(
    model: ARCModel,
    task: str,
    shot_examples: Sequence[Example],
    scored: Sequence[Example],
    methods: Sequence[str] | str,
    seed: int = 0,
    batch_size: int = 8,
    decoder: int | str = 0,
    max_new_tokens: int | None = None,
    llmlingua_rate: float | None = None,
    llmlingua_scorer: str | None = None,
    llmlingua2_model: str | None = None,
    shuffle: bool = False,
    limit: int | None = None,
    progress: bool = True,
    window: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    separate_passages: bool = False,
) -> dict:
    """Every method on the same shots and scored examples with the same decoder: the report."""
    methods = check_methods(methods)
    decoder = model.decoder_index(decoder)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1 position, got {window}")
    max_new_tokens = max_new_tokens or max_new_tokens_for(task)
    warm_up(model, decoder)

    table, predictions, settings = {}, {}, {}
    for name in methods:
        start = time.perf_counter()
        method = build_method(
            name,
            model,
            decoder,
            shot_examples,
            llmlingua_rate,
            llmlingua_scorer,
            llmlingua2_model,
            window=window,
            max_new_tokens=max_new_tokens,
            top_k=top_k,
            separate_passages=separate_passages,
        )
        setup_seconds = time.perf_counter() - start  # one-off: shot documents compressed once
        settings[name] = method.describe()
        try:
            rows = answer_examples(model, method, scored, task, decoder, max_new_tokens, batch_size, progress, window)
        except PromptTooLong as err:
            if window is None:
                raise  # the decoder's own limit: a bad request, as before
            table[name], predictions[name] = {"not_applicable": f"{name}: {err}"}, []
            continue
        table[name] = summarise(task, rows, seed)
        table[name]["setup_seconds"] = setup_seconds
        predictions[name] = rows
    add_gain_kept(table, task)
    add_document_effect(table, predictions, task)

    config = {
        "task": task,
        "methods": methods,
        "shots": len(shot_examples),
        "shot_ids": [s.id for s in shot_examples],
        "seed": seed,
        "shuffle": shuffle,
        "limit": limit,
        "n_scored": len(scored),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "window": window,
        "decoder": decoder,
        "decoder_name": model.config.decoders[decoder],
        "model_config": model.config.to_dict(),
        "pooling_factor_config": model.config.pooling_factor,
        "chunk_tokens": model.config.chunk_tokens,
        "max_chunks": model.config.max_chunks,
        "fingerprint": model.fingerprint(),
        "method_settings": settings,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }
    return {"config": config, "metrics": table, "predictions": predictions}
