"""Fine-tuning batches: few-shot prompts whose documents are all compressed (method.md §6).

One prompt per example, built from token pieces (never by splitting a flat string, so a document
or an answer that contains "\\nQuestion:" cannot shift the template):

    "Document: " [C(d1)] "\\nQuestion: q1\\nAnswer: a1\\n\\nDocument: " [C(d2)] ... [C(d)] "\\nQuestion: q\\nAnswer:"
    then " " + answer + EOS, the only tokens with loss.

The first piece is tokenized with the tokenizer's own special tokens (its BOS, if it adds one),
every other piece without. The layout is the one prompt builder's (prompt.py), so training,
evaluation and serving read alike.

Shots: each source keeps a rolling buffer of its most recent examples (read earlier on this
rank); the prompt of an example uses what the buffer holds, so the shot count grows 0, 1, ...,
n_shots at the start of each source, then stays at n_shots (method.md §6.3). The current example
joins the buffer only after its prompt is built, so it is never its own shot; a buffered example
with the same question and documents is also left out. Shuffle the stream (`shuffle_buffer`) when
a file lists related examples together (SQuAD lists all questions of a paragraph in a row).

More questions per document (`questions_per_doc: k`): after the final document, the current
question and up to k - 1 other questions the sources ask of the same document, each followed by its
answer, every answer with loss:

    ... [C(d)] "\nQuestion: q\nAnswer:" " a" "\nQuestion: q'\nAnswer:" " a'" EOS

SQuAD asks ~5 questions per paragraph, so one compressed document then teaches ~5 answers for
little more than the cost of one (the encoder pass and the shots are shared). The other questions
come from an index of every question per document, read once from the sources when the pipeline
opens (at most INDEX_DOCUMENTS documents); held-out prompts (`distinct`) keep one question.

What has loss (`supervise`): by default only the answers to the questions on the final document
("answer"). "shot_answers" adds each shot's answer and "questions" the words of every question,
each read right after its compressed document as the current answer is: more supervised tokens for
the same documents read (a prompt with one shot and one question: about twice the answer tokens).
Those tokens are found in the text as it is tokenized for the decoder (character offsets of a fast
tokenizer), so the prompt's tokens do not change:

    "Document: " [C(d1)] "\nQuestion: q1\nAnswer: a1\n\nDocument: " [C(d)] "\nQuestion: q\nAnswer:" " a" EOS
                                       ^^ questions     ^^^ shot_answers                 ^ questions      ^^^^^^ answer

Records: the training schema of method.md §6.1 (`passage` or `passages`, optional `question`,
`answer` string or list, optional `instruction`) or the evaluation schema (`context`, `answers`),
as in the SQuAD files. When there are several answers, one is drawn at random each time the
record is read. With several passages, the first k are joined with "\\n" (k per `max_passages`).

Chat mode (instruct decoders, method.md §5.4, §6.4): the chat layout of prompt.py, the one the chat
route serves: a user message with the shots, then `"Document: " [C(d)] "\n"` and the question; the
answer is the assistant's reply, through the tokenizer's chat template (which writes its own
special tokens); the loss covers the reply and the template's end-of-turn tokens. An `instruction`
"prefix||instruction||suffix" replaces the document and question there: prefix before the
document, instruction (with {question}) after it, suffix at the start of the reply, without loss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from ..config import DictConfig
from ..model.chunking import chunk_document
from ..model.prompting import text_token_ids
from ..model.splice import Sample
from ..prompt import (
    QA,
    QUESTION,
    ChatText,
    after_document,
    as_text,
    chat_message,
    chat_prompt,
    qa_prompt,
    qa_shots,
    texts_around,
)
from .batch import Batch
from .resume import check_same_run, config_defaults, rng_state, set_rng_state
from .sources import BadRecord, check_reading_options, open_mixture, open_source, parse_sources, seeded_rng
from .tokens import EncoderView, decoder_tokenizers

log = logging.getLogger(__name__)

TOO_LONG_POLICIES = ("error", "truncate")
SUPERVISED = ("answer", "shot_answers", "questions")  # what `supervise` may name (module doc)
# Documents indexed for `questions_per_doc` (SQuAD train has ~1,600 paragraphs); the index
# stops growing there, so a huge source costs a bounded first read.
INDEX_DOCUMENTS = 50_000


@dataclass
class FinetuneDataConfig(DictConfig):
    # "path", "path:weight", "path:weight:n_shots", pairs or dicts; see sources.py.
    sources: Any
    n_shots: int = 5  # shots per prompt once a source's buffer is full (method.md §13.8)
    max_passages: int = 1  # >= 2: first k ~ U{1..max_passages}; 1: first; -k: first k
    # One compressed segment per document, at most max_doc_tokens encoder tokens (method.md §13.8);
    # with chunk_tokens, segments of chunk_tokens each, at most max_chunks, back to back.
    max_doc_tokens: int = 2048
    chunk_tokens: int | None = None
    max_chunks: int = 32
    too_long: str = "truncate"  # a longer document: "truncate" (logged, counted) or "error"
    batch_size: int = 8
    seed: int = 0
    shuffle_buffer: int = 0  # examples held for a streaming shuffle (0: file order)
    on_bad_line: str = "error"  # or "skip": count bad records and log a warning
    chat: bool = False  # wrap prompts in the decoder tokenizer's chat template
    loop: bool = True  # training loops forever; False: one pass (evaluation), last batch short
    # Held-out sets: one prompt per distinct document (SQuAD asks several questions of one
    # paragraph); the later questions on a document already asked about only serve as shots.
    distinct: bool = False
    # Questions asked of the final document, each with its answer and loss (1: the evaluation's
    # layout); the others are drawn from an index of the sources' questions on the same document.
    questions_per_doc: int = 1
    # Draw each prompt's count of questions uniformly from 1..questions_per_doc instead of always
    # asking all: some prompts then end right after the first answer, as evaluation prompts do.
    questions_per_doc_uniform: bool = False
    # Tokens with loss (module doc): "answer" (the answers after the final document),
    # "shot_answers" (each shot's answer), "questions" (every question's words).
    supervise: list[str] = dataclasses.field(default_factory=lambda: ["answer"])

    def __post_init__(self):
        self.sources = parse_sources(self.sources)
        if not isinstance(self.supervise, list | tuple) or not self.supervise:
            raise ValueError(f"supervise must be a non-empty list out of {list(SUPERVISED)}, got {self.supervise!r}")
        unknown = [s for s in self.supervise if s not in SUPERVISED]
        if unknown:
            raise ValueError(f"supervise: unknown name(s) {unknown}; known: {list(SUPERVISED)}")
        self.supervise = list(self.supervise)
        if self.chat and self.supervise != ["answer"]:
            raise ValueError("supervise other than [answer] needs plain prompts (chat: false)")
        for name in ("max_doc_tokens", "max_chunks", "batch_size", "questions_per_doc"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.n_shots, int) or self.n_shots < 0:
            raise ValueError(f"n_shots must be an integer >= 0, got {self.n_shots!r}")
        if not isinstance(self.max_passages, int) or self.max_passages == 0:
            raise ValueError(f"max_passages must be a non-zero integer, got {self.max_passages!r}")
        if self.chunk_tokens is not None and (not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1):
            raise ValueError(f"chunk_tokens must be an integer >= 1 or None, got {self.chunk_tokens!r}")
        if self.too_long not in TOO_LONG_POLICIES:
            raise ValueError(f"too_long must be one of {TOO_LONG_POLICIES}, got {self.too_long!r}")
        check_reading_options(self.on_bad_line, self.shuffle_buffer)
        if self.questions_per_doc > 1 and self.chat:
            raise ValueError("questions_per_doc > 1 needs plain prompts (chat: false)")
        if self.questions_per_doc_uniform and self.questions_per_doc == 1:
            raise ValueError("questions_per_doc_uniform draws from 1..questions_per_doc: set questions_per_doc > 1")


# ----------------------------------------------------------------------------------- records


def _strings(record: dict, name: str, where: str) -> list[str]:
    value = record[name]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRecord(f"{where}: field '{name}' must be a string or a list of strings")
    if not value or not all(v.strip() for v in value):
        raise BadRecord(f"{where}: field '{name}' is empty or holds an empty string")
    return value


def parse_example(record: dict, where: str) -> dict:
    """A fine-tuning record in either schema -> {passages, question, answers, instruction}."""
    keys = [k for k in ("passage", "passages", "context") if k in record]
    if len(keys) != 1:
        found = "none" if not keys else " and ".join(keys)
        raise BadRecord(f"{where}: need exactly one of 'passage', 'passages', 'context' (found {found})")
    passages = _strings(record, keys[0], where)
    answer_keys = [k for k in ("answer", "answers") if k in record]
    if len(answer_keys) != 1:
        found = "none" if not answer_keys else "both"
        raise BadRecord(f"{where}: need one of 'answer', 'answers' (found {found})")
    answers = _strings(record, answer_keys[0], where)
    question = record.get("question", "")
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise BadRecord(f"{where}: field 'question' must be a string, got {type(question).__name__}")
    instruction = record.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or instruction.count("||") != 2:
            raise BadRecord(f"{where}: field 'instruction' must be a string 'prefix||instruction||suffix'")
    return dict(passages=passages, question=question.strip(), answers=answers, instruction=instruction)


def choose_passages(passages: list[str], max_passages: int, rng) -> list[str]:
    """method.md §6.1: >= 2 -> the first k, k uniform in 1..max_passages; 1 -> first; -k -> first k."""
    if max_passages >= 2:
        return passages[: rng.randint(1, max_passages)]
    return passages[: abs(max_passages)]


# ----------------------------------------------------------------------------------- prompts


@dataclass
class Shot:
    """An example as one prompt reads it: the document text and one chosen answer."""

    document: str
    question: str
    answer: str
    instruction: str | None = None
    where: str = ""


def _shots(shots: list[Shot]) -> list[QA]:
    """Shots as the prompt builder takes them; each document stands as its index in the prompt."""
    return [QA([k], s.question, s.answer) for k, s in enumerate(shots)]


def base_pieces(shots: list[Shot], current: Shot) -> tuple[list[str], str]:
    """Text pieces around the documents (one more than documents) and the answer text."""
    prompt = qa_prompt(_shots(shots), QA([len(shots)], current.question))
    return texts_around(prompt), " " + current.answer


def more_answers(others: list[Shot]) -> list[tuple[str, str]]:
    """(question text, answer text) after the current answer, for other questions on its document."""
    return [(after_document(o.question), " " + o.answer) for o in others]


def chat_pieces(tokenizer, shots: list[Shot], current: Shot) -> tuple[list[str], str]:
    """Text pieces of a chat-formatted prompt (one more than documents, ending with the reply's
    lead, no loss; the first a ChatText), and the reply as the template renders it (loss)."""
    document = len(shots)  # what stands for the current document in the message
    lead = ""
    if current.instruction is not None:
        prefix, instruction, lead = current.instruction.split("||")
        instruction = instruction.replace("{question}", current.question)
        message = [*qa_shots(_shots(shots)), prefix, document, instruction]
    else:
        message = chat_message(_shots(shots), [document], current.question)
    pieces = chat_prompt(tokenizer, [{"role": "user", "content": message}], lead)
    prompt = as_text(pieces, lambda _: "")
    conversation = [
        {"role": "user", "content": as_text(message, lambda _: "")},
        {"role": "assistant", "content": lead + current.answer},
    ]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the reply right after the generation "
            "prompt; chat mode cannot tell the reply's tokens apart"
        )
    texts = texts_around(pieces)
    texts[0] = ChatText(texts[0])
    return texts, full[len(prompt) :]


def supervised_ids(tok, text: str, first: bool, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Decoder token ids of a text piece (exactly as text_token_ids tokenizes it), and for each
    whether it overlaps one of the character `spans` [start, end), from the tokenizer's offsets."""
    if not spans:
        ids = text_token_ids(tok, text, first)
        return ids, [False] * len(ids)
    try:
        encoded = tok(text, add_special_tokens=first, return_offsets_mapping=True)
    except NotImplementedError as e:
        raise ValueError("supervise: shot_answers and questions need a fast tokenizer (character offsets)") from e
    marks = [end > start and any(start < b and end > a for a, b in spans) for start, end in encoded["offset_mapping"]]
    return encoded["input_ids"], marks


# ----------------------------------------------------------------------------------- pipeline


def document_key(document: str) -> int:
    """A 64-bit hash naming a document text (the held-out set's and the question index's key)."""
    return int(hashlib.blake2b(document.encode(), digest_size=8).hexdigest(), 16)


def index_questions(config: FinetuneDataConfig) -> dict[int, list[dict]]:
    """Every question of the sources, grouped by document (all passages of a record joined, as a
    one-passage reading joins them), from one pass over every source in full (every rank reads
    all, so another rank's shard can supply a question); at most INDEX_DOCUMENTS documents."""
    index: dict[int, list[dict]] = defaultdict(list)
    for spec in config.sources:
        for record in open_source(spec, parse_example, loop=False, on_bad_line=config.on_bad_line):
            key = document_key("\n".join(record.value["passages"]))
            if key not in index and len(index) >= INDEX_DOCUMENTS:
                break
            index[key].append(record.value)
    log.info("questions_per_doc: %d questions on %d documents", sum(map(len, index.values())), len(index))
    return dict(index)


class FinetuneData:
    """An iterator of fine-tuning `Batch`es (task "finetune") for one rank; resumable.

    `decoder_tokenizer` is one tokenizer or a list (multi-decoder): `next(data)` gives a batch for
    decoder 0, `data.next_batch(k)` one for decoder k, tokenized from the text with its tokenizer.
    """

    def __init__(
        self, config: FinetuneDataConfig, encoder_tokenizer, decoder_tokenizer, rank: int = 0, world_size: int = 1
    ):
        if isinstance(config, dict):
            config = FinetuneDataConfig.from_dict(config)
        self.config, self.rank, self.world_size = config, rank, world_size
        tokenizers = decoder_tokenizers(decoder_tokenizer)
        for i, tok in enumerate(tokenizers):
            if config.chat and not getattr(tok, "chat_template", None):
                raise ValueError(f"chat mode needs a chat template, and decoder {i}'s tokenizer has none")
        self.decoder_tokenizers = tokenizers
        self.seen: set[int] = set()  # hashes of documents asked about, with `distinct`
        self.encoder = EncoderView(encoder_tokenizer, special_tokens=False)  # passages: no BOS/EOS (method.md §5.2)
        self.stream = open_mixture(
            config.sources,
            parse_example,
            rank,
            world_size,
            config.loop,
            config.on_bad_line,
            config.shuffle_buffer,
            config.seed,
        )
        self.rng = seeded_rng(config.seed, rank, "finetune")
        self.shots = [deque(maxlen=self._n_shots(s)) for s in config.sources]
        self.questions_by_document = None  # document key -> parsed examples asking about it
        if config.questions_per_doc > 1 and not config.distinct:
            self.questions_by_document = index_questions(config)
        self.exhausted = False
        self.stats = {"examples": 0, "truncated": 0}

    def _n_shots(self, spec) -> int:
        return self.config.n_shots if spec.n_shots is None else spec.n_shots

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self.next_batch(0)

    @property
    def epochs(self) -> list[int]:
        """Completed passes over each source."""
        return self.stream.epochs

    # ------------------------------------------------------------------------------- one example
    def read(self, example: dict, where: str) -> Shot:
        """Draw this reading's answer and passages."""
        answer = self.rng.choice(example["answers"])
        passages = choose_passages(example["passages"], self.config.max_passages, self.rng)
        return Shot("\n".join(passages), example["question"], answer, example["instruction"], where)

    def segments(self, document: str, where: str) -> list[list[int]]:
        """Encoder ids of a document: one segment, or chunks placed back to back."""
        c = self.config
        if c.chunk_tokens:  # the library's chunker: the chunks inference will compress
            pieces = [ch.encoder_ids for ch in chunk_document(document, self.encoder.tokenizer, c.chunk_tokens)]
        else:
            pieces = [self.encoder.text_ids(document)]
        n_tokens = sum(len(p) for p in pieces)
        too_long = len(pieces) > c.max_chunks if c.chunk_tokens else n_tokens > c.max_doc_tokens
        if too_long:
            what = (
                f"{c.max_chunks} chunks of {c.chunk_tokens} tokens"
                if c.chunk_tokens
                else f"max_doc_tokens={c.max_doc_tokens}"
            )
            if c.too_long == "error":
                raise ValueError(
                    f"{where}: document of {n_tokens} encoder tokens exceeds {what}; "
                    "raise the limit or set too_long='truncate'"
                )
            self.stats["truncated"] += 1
            if self.stats["truncated"] in (1, 10, 100, 1000, 10000):  # logged, never silent
                log.warning(
                    "%s: document of %d encoder tokens cut to %s (%d cut(s) so far)",
                    where,
                    n_tokens,
                    what,
                    self.stats["truncated"],
                )
            pieces = pieces[: c.max_chunks] if c.chunk_tokens else [pieces[0][: c.max_doc_tokens]]
        return pieces

    def build(self, shots: list[Shot], current: Shot, decoder: int = 0, others: list[Shot] = ()) -> Sample:
        """The prompt sample: text pieces, compressed documents at their offsets, loss on the answer
        (and on the answers to `others`, more questions on the current document)."""
        tok = self.decoder_tokenizers[decoder]
        answers = "answer" in self.config.supervise
        if self.config.chat:
            texts, reply = chat_pieces(tok, shots, current)
            answer = tok(reply, add_special_tokens=False)["input_ids"]
            if tok.eos_token_id in answer:  # nothing after the end of the reply needs predicting
                answer = answer[: len(answer) - answer[::-1].index(tok.eos_token_id)]
            loss = [answers] * len(answer)
        else:
            texts, reply = base_pieces(shots, current)
            answer = tok(reply, add_special_tokens=False)["input_ids"]
            loss = [answers] * len(answer)
            for other, (question, more) in zip(others, more_answers(list(others))):
                question_ids, question_loss = supervised_ids(tok, question, False, self.spans(other, question, False))
                more_ids = tok(more, add_special_tokens=False)["input_ids"]
                answer += question_ids + more_ids
                loss += question_loss + [answers] * len(more_ids)
            if tok.eos_token_id is not None:
                answer, loss = answer + [tok.eos_token_id], loss + [answers]
        documents = [s.document for s in shots] + [current.document]
        asked = [*shots, current]  # the example whose question follows document k
        text_ids: list[int] = []
        text_loss: list[bool] = []
        segments, offsets = [], []
        for k, piece in enumerate(texts):
            spans = [] if k == 0 or self.config.chat else self.spans(asked[k - 1], piece, k <= len(shots))
            ids, piece_loss = supervised_ids(tok, piece, k == 0, spans)  # as served: model/prompting.py
            text_ids += ids
            text_loss += piece_loss
            if k < len(documents):
                where = shots[k].where if k < len(shots) else current.where
                for chunk in self.segments(documents[k], where):
                    segments.append(chunk)
                    offsets.append(len(text_ids))  # chunks of one document: equal offsets
        return Sample(text_ids + answer, segments, offsets, text_loss + loss)

    def spans(self, example: Shot, text: str, answered: bool) -> list[tuple[int, int]]:
        """Character spans with loss in the text after `example`'s document (it starts with the
        question's `after_document`): the question's words under "questions", and when the text
        holds the example's answer (a shot), " answer" under "shot_answers"."""
        lead = after_document(example.question)
        if not text.startswith(lead):
            raise ValueError(f"{example.where}: the text after a document does not start with its question")
        out = []
        if "questions" in self.config.supervise and example.question:
            out.append((len(QUESTION), len(QUESTION) + len(example.question)))
        if answered and "shot_answers" in self.config.supervise:
            out.append((len(lead), len(lead) + 1 + len(example.answer)))
        return out

    def next_example(self, decoder: int = 0) -> Sample:
        while True:
            source, record = next(self.stream)
            current = self.read(record.value, record.where)
            if not self.config.distinct:
                break
            key = document_key(current.document)
            if key not in self.seen:
                self.seen.add(key)
                break
            self.shots[source].append(current)  # a document already asked about: a shot only
        buffer = self.shots[source]
        shots = [s for s in buffer if (s.question, s.document) != (current.question, current.document)]
        sample = self.build(shots, current, decoder, self.other_questions(current))
        buffer.append(current)
        self.stats["examples"] += 1
        return sample

    def other_questions(self, current: Shot) -> list[Shot]:
        """Up to questions_per_doc - 1 other questions on the current document (with
        questions_per_doc_uniform, 0 to questions_per_doc - 1, uniformly), drawn at random from the
        index. Held-out sets (`distinct`) keep the evaluation's one question per prompt."""
        if self.questions_by_document is None:
            return []
        wanted = self.config.questions_per_doc - 1
        if self.config.questions_per_doc_uniform:
            wanted = self.rng.randint(0, wanted)
        asked = self.questions_by_document.get(document_key(current.document), [])
        candidates = [e for e in asked if e["question"] != current.question]
        chosen = self.rng.sample(candidates, min(wanted, len(candidates)))
        return [
            Shot(current.document, e["question"], self.rng.choice(e["answers"]), None, current.where) for e in chosen
        ]

    def next_batch(self, decoder: int = 0) -> Batch:
        if not isinstance(decoder, int) or not 0 <= decoder < len(self.decoder_tokenizers):
            raise ValueError(
                f"decoder {decoder!r} does not exist; this pipeline has "
                f"{len(self.decoder_tokenizers)} decoder tokenizer(s)"
            )
        samples = []
        while len(samples) < self.config.batch_size and not self.exhausted:
            try:
                samples.append(self.next_example(decoder))
            except StopIteration:
                self.exhausted = True
        if not samples:
            raise StopIteration
        return Batch(samples, "finetune")

    # ------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "rank": self.rank,
            "world_size": self.world_size,
            "decoders": len(self.decoder_tokenizers),
            "stream": self.stream.state_dict(),
            "rng": rng_state(self.rng),
            "exhausted": self.exhausted,
            "shots": [[dataclasses.asdict(s) for s in buffer] for buffer in self.shots],
            "stats": dict(self.stats),
            "seen": sorted(self.seen),
        }

    def load_state_dict(self, state: dict) -> None:
        check_same_run(
            state,
            self.config.to_dict(),
            self.rank,
            self.world_size,
            len(self.decoder_tokenizers),
            resumable_changes=("batch_size", "on_bad_line"),
            defaults=config_defaults(FinetuneDataConfig),
        )
        self.stream.load_state_dict(state["stream"])
        set_rng_state(self.rng, state["rng"])
        self.exhausted = state["exhausted"]
        self.shots = [
            deque((Shot(**s) for s in saved), maxlen=buffer.maxlen) for buffer, saved in zip(self.shots, state["shots"])
        ]
        self.stats = dict(state["stats"])
        self.seen = set(state.get("seen", []))
