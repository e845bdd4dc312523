"""Do the compressed vectors carry their document? One measurement, used everywhere.

For held-out samples (reconstruction and continuation of prose, or fine-tuning prompts) the
frozen decoder's loss on the supervised tokens is measured under four conditions:

  right      the sample's own compressed document (what training optimises);
  mismatched its last document replaced by another sample's (same format, wrong content);
  none       no document at all;
  text       the documents written out as decoder tokens (the open-book ceiling).

The **content gap** `mismatched - right` (nats per token) is what reading the right document is
worth. A loss that falls while the gap stays 0 is the model learning the format, not the content.
Teacher-forced token accuracy (argmax = target) is reported under `right` and `none`. Teacher
forcing overstates what the decoder can copy (each prediction is handed the right text before it),
so `greedy_sums` also lets the decoder write the supervised tokens itself from the prompt before
them: for prose, the share of target tokens it writes at their place, whole spans written exactly
and ROUGE-L; for answers, SQuAD exact match and F1 of its first line against the gold answer, with
the right document and with another's.

Training (`Trainer.evaluate`), the quickstart, `arc-encoder eval --content` and
`benchmarks/document_use.py` all call `content_sums` / `content_summary` below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.batch import Batch
from ..data.pretrain import continuation_samples, reconstruction_samples
from ..data.tokens import EncoderView, added_prefix, decoder_text
from ..model.decoder import end_and_pad_ids, generate_ids
from ..model.splice import Sample, mismatched, splice
from .metrics import exact_match, f1, rouge_l

CONDITIONS = ("right", "mismatched", "none", "text")
# loss_fn(samples, special) -> (loss_sum, supervised tokens, correct argmax tokens)
LossFn = Callable[[list[Sample], str], tuple]


def without_documents(s: Sample) -> Sample:
    return Sample(s.text_ids, [], [], s.targets)


def documents_as_text(s: Sample, arc, decoder: int) -> Sample:
    """Each segment decoded from encoder tokens and re-tokenized for the decoder, unsupervised."""
    ids, targets, previous = [], [], 0
    for segment, offset in zip(s.segments, s.offsets):
        text = arc.encoder_tokenizer.decode(segment, skip_special_tokens=True)
        tokens = arc.decoder_tokenizers[decoder](text, add_special_tokens=False)["input_ids"]
        ids += s.text_ids[previous:offset] + tokens
        targets += s.targets[previous:offset] + [False] * len(tokens)
        previous = offset
    return Sample(ids + s.text_ids[previous:], [], [], targets + s.targets[previous:])


def distinct_documents(samples: list[Sample]) -> list[Sample]:
    """The first sample of each distinct compressed document (its last segment), in order."""
    seen, out = set(), []
    for s in samples:
        key = tuple(s.segments[-1]) if s.segments else None
        if key is not None and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def samples_by_task(batches, keep) -> dict[str, tuple[str, list[Sample]]]:
    """{task: (its special token, the first kept sample of each distinct document)} over batches."""
    by_task: dict[str, tuple[str, list[Sample]]] = {}
    for b in batches:
        special, samples = by_task.setdefault(b.task, (b.special, []))
        samples.extend(s for s in b.samples if keep(s))
    return {task: (special, distinct_documents(samples)) for task, (special, samples) in by_task.items()}


def condition_samples(
    samples: list[Sample], arc, decoder: int, conditions: tuple[str, ...] = CONDITIONS
) -> dict[str, list[Sample]]:
    build = {
        "right": lambda: samples,
        "mismatched": lambda: mismatched(samples),
        "none": lambda: [without_documents(s) for s in samples],
        "text": lambda: [documents_as_text(s, arc, decoder) for s in samples],
    }
    return {c: build[c]() for c in conditions}


@torch.no_grad()
def content_sums(
    loss_fn: LossFn, arc, batches, decoder: int = 0, batch_size: int = 8, conditions: tuple[str, ...] = CONDITIONS
) -> dict[str, torch.Tensor]:
    """{"task/condition": float64 [loss sum, supervised tokens, correct tokens]} over held-out
    batches, one sample per distinct document. Sums, so data-parallel ranks can add them up."""
    sums = {}
    for task, (special, samples) in samples_by_task(batches, lambda s: bool(s.segments)).items():
        if len(samples) < 2:
            continue  # no other document to swap in: the gap is undefined
        for condition, group in condition_samples(samples, arc, decoder, conditions).items():
            total = torch.zeros(3, dtype=torch.float64)
            for i in range(0, len(group), batch_size):
                loss, n, correct = loss_fn(group[i : i + batch_size], special)
                total += torch.tensor([loss.item(), n, correct], dtype=torch.float64)
            sums[f"{task}/{condition}"] = total
    return sums


def content_summary(sums: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Sums -> {task: {right, mismatched, none, text (nats/token), gap, accuracy,
    accuracy_none}}; gap = mismatched - right."""
    out: dict[str, dict[str, float]] = {}
    for key, (loss, tokens, correct) in sums.items():
        task, condition = key.rsplit("/", 1)
        row = out.setdefault(task, {})
        row[condition] = (loss / tokens).item()
        if condition in ("right", "none"):
            row["accuracy" if condition == "right" else "accuracy_none"] = (correct / tokens).item()
    for row in out.values():
        if "right" in row and "mismatched" in row:
            row["gap"] = row["mismatched"] - row["right"]
    return out


def flat_summary(summary: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    """{task: {name: value}} -> {"prefix+task/name": value}; the right loss keeps the bare task key."""
    flat = {}
    for task, row in summary.items():
        for name, value in row.items():
            flat[f"{prefix}{task}" if name == "right" else f"{prefix}{task}/{name}"] = value
    return flat


# ----------------------------------------------------------------------------------- greedy output
# Per task and condition, summed over samples: samples, target tokens written at their place,
# target tokens, spans written exactly, ROUGE-L, answer exact match, answer F1.
GREEDY_FIELDS = ("samples", "matched", "tokens", "exact", "rouge_l", "em", "f1")
ANSWER_TASKS = ("finetune",)  # scored as answers (first line, SQuAD normalisation), not as spans
ANSWER_SLACK = 8  # new tokens allowed beyond the gold answer's length


def has_documents_and_targets(s: Sample) -> bool:
    return bool(s.segments and s.targets and any(s.targets))


def split_prompt(s: Sample) -> tuple[Sample, list[int]]:
    """A sample's prompt (its text up to the first supervised token, with the blocks placed
    there) and its supervised tokens, which must be the end of its text."""
    if not s.targets or True not in s.targets:
        raise ValueError("a sample without supervised tokens has nothing to write greedily")
    first = s.targets.index(True)
    if not all(s.targets[first:]):
        raise ValueError("greedy scoring needs the supervised tokens at the end of the text")
    kept = [(seg, o) for seg, o in zip(s.segments, s.offsets) if o <= first]
    prompt = Sample(s.text_ids[:first], [seg for seg, _ in kept], [o for _, o in kept])
    return prompt, s.text_ids[first:]


@torch.no_grad()
def greedy_outputs(arc, prompts: list[Sample], special: str, decoder: int, max_new: list[int], stop_at_newline: bool):
    """Greedy new token ids of the frozen decoder after each prompt sample (its blocks compressed
    now), at most max_new[i] for prompt i."""
    dec, tokenizer = arc.decoders[decoder], arc.decoder_tokenizers[decoder]
    blocks = arc.sample_blocks(prompts, decoder, special)
    embed = dec.get_input_embeddings()
    text = [embed(torch.tensor(p.text_ids, dtype=torch.long, device=arc.device)) for p in prompts]
    batch = splice(text, blocks, [p.offsets for p in prompts], left_pad=True)
    eos, pad = end_and_pad_ids(dec, tokenizer)

    def should_stop(i, ids):
        return len(ids) >= max_new[i] or (stop_at_newline and "\n" in tokenizer.decode(ids))

    return generate_ids(
        dec, batch.embeds, batch.attention_mask, batch.position_ids, max(max_new), eos, pad, should_stop=should_stop
    )


def greedy_scores(tokenizer, generated: list[int], target: list[int], answer: bool) -> list[float]:
    """One sample's GREEDY_FIELDS. `target` may end with an EOS, which generation never returns."""
    if target and target[-1] == tokenizer.eos_token_id:
        target = target[:-1]
    written = tokenizer.decode(generated, skip_special_tokens=True)
    reference = tokenizer.decode(target, skip_special_tokens=True)
    matched = sum(g == t for g, t in zip(generated, target))
    row = [1.0, matched, len(target), float(generated[: len(target)] == target), rouge_l(written, reference)]
    if answer:
        first_line = written.strip().split("\n", 1)[0].strip()
        row += [exact_match(first_line, reference.strip()), f1(first_line, reference.strip())]
    else:
        row += [0.0, 0.0]
    return row


@torch.no_grad()
def greedy_sums(arc, batches, decoder: int | str = 0, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """{"task/greedy_right": float64 [GREEDY_FIELDS]} over held-out batches, one sample per
    distinct document; answer tasks also under "task/greedy_mismatched". Sums, for ranks to add."""
    sums, decoder = {}, arc.decoder_index(decoder)
    tokenizer = arc.decoder_tokenizers[decoder]
    for task, (special, samples) in samples_by_task(batches, has_documents_and_targets).items():
        answer = task in ANSWER_TASKS
        conditions = {"right": samples}
        if answer and len(samples) >= 2:
            conditions["mismatched"] = mismatched(samples)
        for condition, group in conditions.items():
            total = torch.zeros(len(GREEDY_FIELDS), dtype=torch.float64)
            for i in range(0, len(group), batch_size):
                prompts, targets = zip(*(split_prompt(s) for s in group[i : i + batch_size]))
                max_new = [len(t) + (ANSWER_SLACK if answer else 0) for t in targets]
                outputs = greedy_outputs(arc, list(prompts), special, decoder, max_new, stop_at_newline=answer)
                for generated, target in zip(outputs, targets):
                    total += torch.tensor(greedy_scores(tokenizer, generated, target, answer), dtype=torch.float64)
            sums[f"{task}/greedy_{condition}"] = total
    return sums


def greedy_summary(sums: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Greedy sums -> {task: {greedy_accuracy, greedy_exact, greedy_rouge_l} for spans, or
    {answer_em, answer_f1, answer_em_mismatched, answer_f1_mismatched} for answers}."""
    out: dict[str, dict[str, float]] = {}
    for key, total in sums.items():
        task, condition = key.rsplit("/greedy_", 1)  # task may carry a prefix: "d0/finetune"
        values = dict(zip(GREEDY_FIELDS, total.tolist()))
        n = max(values["samples"], 1.0)
        row = out.setdefault(task, {})
        if task.rsplit("/", 1)[-1] in ANSWER_TASKS:
            suffix = "" if condition == "right" else f"_{condition}"
            row[f"answer_em{suffix}"] = values["em"] / n
            row[f"answer_f1{suffix}"] = values["f1"] / n
        else:
            row["greedy_accuracy"] = values["matched"] / max(values["tokens"], 1.0)
            row["greedy_exact"] = values["exact"] / n
            row["greedy_rouge_l"] = values["rouge_l"] / n
    return out


def text_batches(arc, texts: list[str], span: int, decoder: int | str = 0) -> list:
    """Held-out batches from plain texts, one sample per distinct text and task: reconstruction of
    its first `span` decoder tokens, and continuation of `span` tokens after `span` compressed ones
    (texts too short for a full continuation give a shorter one)."""
    if span < 1:
        raise ValueError(f"span must be >= 1 decoder token, got {span}")
    tokenizer = arc.decoder_tokenizers[arc.decoder_index(decoder)]
    encoder = EncoderView(arc.encoder_tokenizer, special_tokens=False)
    bos = added_prefix(tokenizer)
    rec, cont = [], []
    for text in dict.fromkeys(texts):  # distinct, in order
        doc = decoder_text(text, tokenizer, bos, add_eos=False)
        rec += reconstruction_samples(doc, encoder, span)[:1]
        cont += continuation_samples(doc, encoder, span, span, 0)[:1]
    return [Batch(rec, "reconstruction"), Batch(cont, "continuation")]


def summary_from_flat(flat: dict[str, float], decoder: int = 0) -> dict[str, dict[str, float]]:
    """A training log's eval record ({"d0/reconstruction/gap": ...}) -> {task: {name: value}}."""
    prefix, out = f"d{decoder}/", {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        task, _, name = key[len(prefix) :].partition("/")
        out.setdefault(task, {})[name or "right"] = value
    return out


@torch.no_grad()
def reconstructions(arc, texts: list[str], decoder: int | str = 0, max_new_tokens: int = 96) -> list[dict]:
    """Greedy reconstruction of each text from its vectors (<Rec>), scored by ROUGE-L."""

    compressed = arc.compress(texts, decoder)
    out = []
    for text, c in zip(texts, compressed):
        budget = min(max_new_tokens, c.document_tokens + 8)
        generated = arc.generate([[c]], decoder=decoder, max_new_tokens=budget, special="rec")[0].text
        out.append(
            {
                "original": text,
                "reconstruction": generated,
                "rouge_l": rouge_l(generated, text),
                "tokens": c.document_tokens,
                "vectors": c.n_vectors,
            }
        )
    return out


def content_report(
    arc, batches, decoder: int | str = 0, reconstruct: list[str] | None = None, batch_size: int = 8, greedy: bool = True
) -> dict:
    """The whole measurement for one model: losses, gaps, accuracies, greedy output and
    reconstructions."""
    decoder = arc.decoder_index(decoder)
    was_training = arc.training
    arc.eval()

    def loss_fn(samples, special):
        return arc(samples, decoder, special, with_accuracy=True)

    tasks = content_summary(content_sums(loss_fn, arc, batches, decoder, batch_size))
    if greedy:
        for task, row in greedy_summary(greedy_sums(arc, batches, decoder, batch_size)).items():
            tasks.setdefault(task, {}).update(row)
    report = {"tasks": tasks}
    if reconstruct:
        rows = reconstructions(arc, reconstruct, decoder)
        report["reconstructions"] = rows
        report["rouge_l"] = sum(r["rouge_l"] for r in rows) / len(rows)
    arc.train(was_training)
    return report


def describe(summary: dict[str, dict[str, float]]) -> list[str]:
    """Plain-words lines: what the vectors carry, per task."""
    lines = []
    for task, row in summary.items():
        if "gap" not in row:
            continue
        line = (
            f"{task}: the vectors carry {row['gap']:.2f} nats per token of their own document "
            f"(loss {row['right']:.2f} with it, {row['mismatched']:.2f} with another's, "
            f"{row.get('none', float('nan')):.2f} with none, {row.get('text', float('nan')):.2f} "
            f"reading the text)"
        )
        if "accuracy" in row:
            line += f"; next-token accuracy {row['accuracy']:.0%} (no document: {row['accuracy_none']:.0%})"
        if "greedy_accuracy" in row:
            line += (
                f"; written greedily: {row['greedy_accuracy']:.0%} of tokens at their place, "
                f"{row['greedy_exact']:.0%} of spans exact, ROUGE-L {row['greedy_rouge_l']:.2f}"
            )
        if "answer_em" in row:
            line += (
                f"; greedy answers EM {row['answer_em']:.0%} / F1 {row['answer_f1']:.0%}"
                f" (another document's: EM {row.get('answer_em_mismatched', float('nan')):.0%})"
            )
        lines.append(line)
    return lines
