"""Pretraining batches: reconstruction and continuation samples cut from documents (method.md §5).

Each document draws its task once: continuation with probability `continuation` (0.8), else
reconstruction. The document, `T = [BOS] + text tokens + [EOS]` in the decoder's tokenizer (BOS
only where that tokenizer adds one), is cut into consecutive pieces, so nothing is wasted:

    reconstruction   T[a:a+seq_len] compressed, then the same tokens as text, all supervised
                     (except a BOS, which nothing needs to predict): [C(T[a:b])][<Rec>] T[a:b]
    continuation     up to prefix_tokens of plain text (no loss), the next compress_tokens
                     compressed, then up to target_tokens of continuation (loss):
                     T[p:c] [C(T[c:d])][<Cont>] T[d:e]

With `supervise_first_token` the special token's output predicts the first text token after the
block, so across the pieces of a reconstructed document every token but BOS is predicted once.
Short documents give short samples; the model pads. Every batch holds one task only (method.md §5.1).

The reading objectives (`objectives: {lookup: share, cloze: share}`, reading.py) take their
share of documents first; the rest splits between continuation and reconstruction as above.
They cut the document into spans of compress_tokens and ask one question of each:

    lookup / cloze   [C(T[a:b])][<Cont>] question tokens, answer tokens (loss on the answer)

All four build their samples through `span_sample`: one compressed span of the document, read by
the encoder in its own tokens, placed in a text stream at an offset.

Multi-decoder runs ask for a batch for decoder k (`next_batch(k)`): documents are then cut in
decoder k's tokens, and the encoder reads the same characters in its own tokens.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..config import DictConfig
from ..model.splice import Sample
from .batch import Batch
from .reading import cloze_query, lookup_query
from .resume import check_same_run, config_defaults, rng_state, set_rng_state
from .sources import check_reading_options, open_mixture, parse_sources, seeded_rng, text_field
from .tokens import (
    DecoderText,
    EncoderView,
    added_prefix,
    decoder_text,
    decoder_tokenizers,
    sample_from_dict,
    sample_to_dict,
)

# Objectives a config gives a share of documents by name (`objectives`), beside the two above.
READING_OBJECTIVES = ("lookup", "cloze")
PRETRAIN_TASKS = ("reconstruction", "continuation", *READING_OBJECTIVES)
# This many documents in a row without a usable sample means the data cannot feed training.
MAX_BARREN_DOCUMENTS = 10_000


@dataclass
class PretrainDataConfig(DictConfig):
    # "path", "path:weight", (path, weight) pairs or {"path": ..., "weight": ...}; see sources.py.
    sources: Any
    seq_len: int = 256  # reconstruction: decoder tokens per sample
    compress_tokens: int = 256  # continuation: decoder tokens compressed
    target_tokens: int = 256  # continuation: decoder tokens to predict after the block
    prefix: bool = True  # continuation: plain text before the block (paper; method.md §13.2)
    prefix_tokens: int = 256
    continuation: float = 0.8  # share of documents used for continuation
    batch_size: int = 16  # samples per batch
    seed: int = 0
    shuffle_buffer: int = 0  # documents held for a streaming shuffle (0: file order)
    text_field: str = "text"  # JSONL / datasets column holding the document
    on_bad_line: str = "error"  # or "skip": count bad records and log a warning
    add_eos: bool = True  # the decoder's EOS closes each document
    # Encoder BOS/EOS on spans that start/end a document. Off: fine-tuning and inference compress
    # documents without them, and pretraining should see what inference will.
    encoder_special_tokens: bool = False
    min_encoder_tokens: int = 2  # shorter compressed spans are dropped (method.md §5.3)
    loop: bool = True  # training loops forever; False: one pass (evaluation), last batches short
    # Reconstruction length curriculum (REFRAG): span lengths in decoder tokens, short to long,
    # e.g. [8, 16, 32]; seq_len is the last level. Over the first `curriculum_batches` batches the
    # mix of span lengths moves from the first level to seq_len; each batch keeps the token budget
    # batch_size * seq_len, so a batch of spans 4x shorter holds 4x more samples. [] = off.
    curriculum: list[int] = field(default_factory=list)
    curriculum_batches: int = 0
    # Phase 1: the first this-many batches are reconstruction only, whatever `continuation` says.
    reconstruction_only_batches: int = 0
    # Held-out sets: skip documents already seen (SQuAD repeats a paragraph per question), and
    # keep at most this many samples per document (0: all).
    distinct: bool = False
    samples_per_document: int = 0
    # Reading objectives (reading.py): share of documents per objective, e.g. {lookup: 0.3,
    # cloze: 0.2}; the documents left split between continuation and reconstruction by
    # `continuation`. Each cuts its documents into spans of compress_tokens, one question a span.
    objectives: dict[str, float] = field(default_factory=dict)
    lookup_cue_tokens: int = 6  # lookup: verbatim decoder tokens copied from the span as the cue
    lookup_target_tokens: int = 8  # lookup: the tokens after the cue there, to predict
    lookup_questions: int = 1  # lookup: cue + target pairs asked of one compressed span
    lookup_separator: str = "\n"  # lookup: text between two questions
    cloze_words: int = 3  # cloze: consecutive words blanked in a sentence of the span
    cloze_placeholder: str = "____"  # what stands in the sentence for the blanked words
    cloze_separator: str = "\nMissing:"  # between the sentence and the blanked words

    def __post_init__(self):
        self.sources = parse_sources(self.sources)
        for name in ("seq_len", "compress_tokens", "target_tokens", "batch_size", "min_encoder_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.prefix_tokens, int) or self.prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be an integer >= 0, got {self.prefix_tokens!r}")
        if not 0.0 <= self.continuation <= 1.0:
            raise ValueError(f"continuation must be a share in [0, 1], got {self.continuation!r}")
        check_reading_options(self.on_bad_line, self.shuffle_buffer)
        for name in ("curriculum_batches", "reconstruction_only_batches", "samples_per_document"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        levels = self.curriculum
        if levels:
            if not all(isinstance(n, int) and n >= 1 for n in levels) or levels != sorted(set(levels)):
                raise ValueError(f"curriculum must be increasing span lengths >= 1, got {levels!r}")
            if levels[-1] > self.seq_len:
                raise ValueError(f"curriculum level {levels[-1]} is longer than seq_len={self.seq_len}")
            if self.curriculum_batches < 1:
                raise ValueError("a curriculum needs curriculum_batches >= 1 (the batches it spans)")
            if self.batch_size * self.seq_len // levels[0] < 1:
                raise ValueError("curriculum: batch_size * seq_len must hold at least one shortest span")
        elif self.curriculum_batches:
            raise ValueError("curriculum_batches is set but curriculum (the span lengths) is empty")
        self._check_objectives()

    def _check_objectives(self) -> None:
        for name in ("lookup_cue_tokens", "lookup_target_tokens", "lookup_questions", "cloze_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.cloze_placeholder.strip():
            raise ValueError("cloze_placeholder must be visible text (e.g. ____), got only whitespace")
        for name, share in self.objectives.items():
            if name not in READING_OBJECTIVES:
                raise ValueError(
                    f"objectives: unknown objective {name!r}; known objectives: {', '.join(READING_OBJECTIVES)} "
                    "(reconstruction and continuation share the documents left, by `continuation`)"
                )
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"objectives.{name} must be a share in [0, 1], got {share!r}")
        self.objectives = {name: float(share) for name, share in self.objectives.items()}
        if sum(self.objectives.values()) > 1.0 + 1e-9:
            raise ValueError(f"objectives: the shares add up to more than 1: {self.objectives}")
        question = self.lookup_cue_tokens + self.lookup_target_tokens
        if self.objectives.get("lookup") and question > self.compress_tokens:
            raise ValueError(
                f"lookup: cue + target tokens ({question}) do not fit in a compressed span of "
                f"compress_tokens={self.compress_tokens}"
            )


# ----------------------------------------------------------------------------------- cutting


def reconstruction_plan(n: int, seq_len: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) spans of a document of n decoder tokens, seq_len at most each."""
    return [(a, min(a + seq_len, n)) for a in range(0, n, seq_len)]


def continuation_plan(n: int, compress: int, target: int, prefix: int) -> list[tuple[int, int, int, int]]:
    """Consecutive pieces (p, c, d, e): prefix T[p:c], compressed T[c:d], continuation T[d:e].

    A piece takes the full budget while the document lasts. Of a shorter tail, the prefix gets what
    compressed span and continuation cannot use, and those two share the rest about evenly
    (method.md §5.3), so a short document still yields a sample with something to predict.
    """
    pieces, p = [], 0
    while p < n:
        left = n - p
        pre = min(prefix, max(0, left - compress - target))
        rest = left - pre
        comp = min(compress, max(rest // 2, rest - target))
        cont = min(target, rest - comp)
        if comp < 1 or cont < 1:
            break  # a 1-token tail: nothing to compress or nothing to predict
        pieces.append((p, p + pre, p + pre + comp, p + pre + comp + cont))
        p += pre + comp + cont
    return pieces


def span_sample(
    doc: DecoderText,
    encoder: EncoderView,
    span: tuple[int, int],
    text: list[int],
    targets: list[bool],
    offset: int,
    min_encoder_tokens: int,
) -> Sample | None:
    """The one way every objective builds a sample: decoder tokens span = (a, b) of the document,
    read by the encoder as the same characters, compressed after `offset` tokens of `text`.
    None when the encoder side is shorter than min_encoder_tokens or nothing is supervised."""
    segment = encoder.ids(doc, *span)
    if len(segment) < min_encoder_tokens or not any(targets):
        return None
    return Sample(text, [segment], [offset], targets)


def reconstruction_samples(
    doc: DecoderText, encoder: EncoderView, seq_len: int, min_encoder_tokens: int = 2
) -> list[Sample]:
    samples = []
    for a, b in reconstruction_plan(len(doc.ids), seq_len):
        targets = [j >= doc.n_bos for j in range(a, b)]  # BOS is given, never predicted
        samples.append(span_sample(doc, encoder, (a, b), doc.ids[a:b], targets, 0, min_encoder_tokens))
    return [s for s in samples if s is not None]


def continuation_samples(
    doc: DecoderText, encoder: EncoderView, compress: int, target: int, prefix: int, min_encoder_tokens: int = 2
) -> list[Sample]:
    samples = []
    for p, c, d, e in continuation_plan(len(doc.ids), compress, target, prefix):
        if len(set(doc.ids[c:d])) == 1:
            continue  # one repeated token compressed: nothing to learn from (method.md §5.3)
        text = doc.ids[p:c] + doc.ids[d:e]
        targets = [False] * (c - p) + [True] * (e - d)
        samples.append(span_sample(doc, encoder, (c, d), text, targets, c - p, min_encoder_tokens))
    return [s for s in samples if s is not None]


# (document, a, b) -> (text after the block, loss flags) or None: one question about span T[a:b]
Query = Callable[[DecoderText, int, int], tuple[list[int], list[bool]] | None]


def question_samples(
    doc: DecoderText, encoder: EncoderView, span_tokens: int, query: Query, min_encoder_tokens: int = 2
) -> list[Sample]:
    """Reading objectives: consecutive spans of span_tokens compressed, each followed by the
    question and answer `query` asks of it (spans it has none for are skipped)."""
    samples = []
    for a, b in reconstruction_plan(len(doc.ids), span_tokens):
        asked = query(doc, a, b)
        if asked is not None:
            text, targets = asked
            samples.append(span_sample(doc, encoder, (a, b), text, targets, 0, min_encoder_tokens))
    return [s for s in samples if s is not None]


def curriculum_mix(levels: list[int], seq_len: int, served: int, total: int) -> dict[int, float]:
    """Share of each span length after `served` of the curriculum's `total` batches.

    The lengths are levels + [seq_len]; progress u = served / total walks linearly over them, and
    between two neighbouring levels the mix interpolates: at u = 0 every span has the first
    length, at u >= 1 every span has seq_len.
    """
    lengths = list(levels) + ([seq_len] if not levels or levels[-1] != seq_len else [])
    x = min(max(served / total, 0.0), 1.0) * (len(lengths) - 1) if total else len(lengths) - 1
    low = min(int(x), len(lengths) - 1)
    frac = x - low
    if frac == 0 or low == len(lengths) - 1:
        return {lengths[low]: 1.0}
    return {lengths[low]: 1.0 - frac, lengths[low + 1]: frac}


# ----------------------------------------------------------------------------------- pipeline


class PretrainData:
    """An iterator of homogeneous `Batch`es for one rank; resumable with state_dict().

    `decoder_tokenizer` is one tokenizer, or a list (one per decoder of a multi-decoder model):
    `next(data)` gives a batch for decoder 0, `data.next_batch(k)` one for decoder k.
    """

    def __init__(
        self, config: PretrainDataConfig, encoder_tokenizer, decoder_tokenizer, rank: int = 0, world_size: int = 1
    ):
        if isinstance(config, dict):
            config = PretrainDataConfig.from_dict(config)
        self.config, self.rank, self.world_size = config, rank, world_size
        tokenizers = decoder_tokenizers(decoder_tokenizer)
        self.decoder_tokenizers = tokenizers
        self.decoder_bos = [added_prefix(t) for t in tokenizers]
        self.encoder = EncoderView(encoder_tokenizer, config.encoder_special_tokens)
        self.stream = open_mixture(
            config.sources,
            text_field(config.text_field),
            rank,
            world_size,
            config.loop,
            config.on_bad_line,
            config.shuffle_buffer,
            config.seed,
        )
        self.task_rng = seeded_rng(config.seed, rank, "task")
        # Where the reading objectives put their questions (cue positions, blanked words).
        self.question_rng = seeded_rng(config.seed, rank, "question")
        # Samples waiting for a full batch, per task; reconstruction spans per curriculum length.
        self.pending = [{t: [] for t in PRETRAIN_TASKS} for _ in tokenizers]
        self.ready: list[deque[Batch]] = [deque() for _ in tokenizers]
        self.exhausted = False
        self.served = 0  # batches handed out (all decoders): the curriculum's and phases' clock
        self.seen: set[int] = set()  # hashes of documents read, with `distinct`
        # Documents per task and samples made, for logs and for checking the task share.
        self.stats = {"documents": {t: 0 for t in PRETRAIN_TASKS}, "samples": {t: 0 for t in PRETRAIN_TASKS}}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self.next_batch(0)

    @property
    def epochs(self) -> list[int]:
        """Completed passes over each source."""
        return self.stream.epochs

    def document_samples(self, text: str, task: str, decoder: int = 0, seq_len: int | None = None) -> list[Sample]:
        """All samples of one document for one task, cut in decoder `decoder`'s tokens
        (reconstruction spans of `seq_len` tokens, default the config's)."""
        c = self.config
        doc = decoder_text(text, self.decoder_tokenizers[decoder], self.decoder_bos[decoder], c.add_eos)
        if task == "reconstruction":
            samples = reconstruction_samples(doc, self.encoder, seq_len or c.seq_len, c.min_encoder_tokens)
        elif task == "continuation":
            prefix = c.prefix_tokens if c.prefix else 0
            samples = continuation_samples(
                doc, self.encoder, c.compress_tokens, c.target_tokens, prefix, c.min_encoder_tokens
            )
        else:
            query = self._query(task, decoder, self.question_rng)
            samples = question_samples(doc, self.encoder, c.compress_tokens, query, c.min_encoder_tokens)
        return samples[: c.samples_per_document] if c.samples_per_document else samples

    def _query(self, task: str, decoder: int, rng: random.Random) -> Query:
        c = self.config
        tokenizer = self.decoder_tokenizers[decoder]
        if task == "lookup":
            separator = tokenizer(c.lookup_separator, add_special_tokens=False)["input_ids"]
            return partial(
                lookup_query,
                cue=c.lookup_cue_tokens,
                target=c.lookup_target_tokens,
                rng=rng,
                questions=c.lookup_questions,
                separator=list(separator),
            )
        if task == "cloze":
            return partial(
                cloze_query,
                tokenizer=tokenizer,
                words=c.cloze_words,
                placeholder=c.cloze_placeholder,
                separator=c.cloze_separator,
                rng=rng,
            )
        raise ValueError(f"unknown pretraining task {task!r}; tasks: {', '.join(PRETRAIN_TASKS)}")

    def _draw(self) -> tuple[str, int]:
        """Task and reconstruction span length of the next document, from the current schedule."""
        c = self.config
        phase1 = self.served < c.reconstruction_only_batches
        objectives = {} if phase1 else c.objectives
        share = 0.0 if phase1 else c.continuation
        # One draw r in [0, 1): [0, rest * share) continuation, [.., rest) reconstruction, then one
        # interval per reading objective. Without objectives (rest = 1) this is the draw of runs
        # made before they existed, so those runs resume onto the same stream.
        # The objectives in READING_OBJECTIVES order: a mapping's key order must not change the draws.
        reading = [(name, objectives.get(name, 0.0)) for name in READING_OBJECTIVES]
        r = self.task_rng.random()
        rest = 1.0 - sum(weight for _, weight in reading)
        task = "continuation" if r < rest * share else "reconstruction"
        if r >= rest:
            r -= rest
            task = [name for name, weight in reading if weight > 0][-1]  # (past the last by rounding)
            for name, weight in reading:
                if r < weight:
                    task = name
                    break
                r -= weight
        seq_len = c.seq_len
        if task == "reconstruction" and c.curriculum:
            mix = curriculum_mix(c.curriculum, c.seq_len, self.served, c.curriculum_batches)
            r, seq_len = self.task_rng.random(), max(mix)
            for length, weight in mix.items():
                if r < weight:
                    seq_len = length
                    break
                r -= weight
        return task, seq_len

    def _queue_key(self, task: str, seq_len: int) -> str:
        return task if task != "reconstruction" or seq_len == self.config.seq_len else f"{task}@{seq_len}"

    def next_batch(self, decoder: int = 0) -> Batch:
        if not isinstance(decoder, int) or not 0 <= decoder < len(self.decoder_tokenizers):
            raise ValueError(
                f"decoder {decoder!r} does not exist; this pipeline has "
                f"{len(self.decoder_tokenizers)} decoder tokenizer(s)"
            )
        ready, pending = self.ready[decoder], self.pending[decoder]
        budget = self.config.batch_size * self.config.seq_len  # decoder tokens per reconstruction batch
        barren = 0
        while not ready:
            if self.exhausted:
                break
            try:
                _, record = next(self.stream)
            except StopIteration:
                self.exhausted = True
                break
            if self.config.distinct:
                key = int(hashlib.blake2b(record.value.encode(), digest_size=8).hexdigest(), 16)
                if key in self.seen:
                    continue
                self.seen.add(key)
            task, seq_len = self._draw()
            samples = self.document_samples(record.value, task, decoder, seq_len)
            barren = 0 if samples else barren + 1
            if barren == MAX_BARREN_DOCUMENTS:
                raise ValueError(
                    f"{barren} documents in a row gave no sample (the last: {record.where}); "
                    "are the documents shorter than 2 tokens?"
                )
            self.stats["documents"][task] += 1
            self.stats["samples"][task] += len(samples)
            queue = pending.setdefault(self._queue_key(task, seq_len), [])
            queue.extend(samples)
            size = self.config.batch_size if task != "reconstruction" else max(1, budget // seq_len)
            while len(queue) >= size:
                ready.append(Batch(queue[:size], task))
                del queue[:size]
        if not ready and self.exhausted:  # one pass done: hand out what is left, then stop
            for key in list(pending):
                if pending[key]:
                    ready.append(Batch(pending[key], key.split("@")[0]))
                    pending[key] = []
        if not ready:
            raise StopIteration
        self.served += 1
        return ready.popleft()

    # ------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "rank": self.rank,
            "world_size": self.world_size,
            "decoders": len(self.decoder_tokenizers),
            "stream": self.stream.state_dict(),
            "task_rng": rng_state(self.task_rng),
            "question_rng": rng_state(self.question_rng),
            "exhausted": self.exhausted,
            "pending": [{k: [sample_to_dict(s) for s in v] for k, v in q.items()} for q in self.pending],
            "served": self.served,
            "seen": sorted(self.seen),
            "ready": [
                [{"task": b.task, "samples": [sample_to_dict(s) for s in b.samples]} for b in r] for r in self.ready
            ],
            "stats": {k: dict(v) for k, v in self.stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        check_same_run(
            state,
            self.config.to_dict(),
            self.rank,
            self.world_size,
            len(self.decoder_tokenizers),
            resumable_changes=("batch_size", "on_bad_line"),
            defaults=config_defaults(PretrainDataConfig),
        )
        self.stream.load_state_dict(state["stream"])
        set_rng_state(self.task_rng, state["task_rng"])
        if "question_rng" in state:  # (states saved before the reading objectives have none)
            set_rng_state(self.question_rng, state["question_rng"])
        self.exhausted = state["exhausted"]
        self.pending = [{k: [sample_from_dict(s) for s in v] for k, v in q.items()} for q in state["pending"]]
        self.served = state.get("served", 0)
        self.seen = set(state.get("seen", []))
        self.ready = [
            deque(Batch([sample_from_dict(s) for s in b["samples"]], b["task"]) for b in r) for r in state["ready"]
        ]
        self.stats = {k: {**dict.fromkeys(PRETRAIN_TASKS, 0), **v} for k, v in state["stats"].items()}
