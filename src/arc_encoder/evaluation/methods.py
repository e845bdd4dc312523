"""The systems an evaluation compares, all reading one few-shot template (method.md §8.2, §8.4).

Every method turns (shots, example) into a prompt for the SAME frozen decoder through
`ARCModel.generate`, so they differ only in how the documents reach it:

- closed:    no documents at all (the floor);
- open:      documents as plain text (the ceiling ARC is measured against);
- arc:       documents compressed by the encoder and spliced in as vectors;
- mismatched: ARC reading another question's documents instead of its own (a control the paper
             does not run): what ARC scores from the prompt format alone. ARC - mismatched is the
             part of ARC's score that comes from reading the right document;
- truncate:  each document cut to its first k decoder tokens, k = the number of vectors ARC makes
             of it, so it spends the same decoder budget as ARC;
- llmlingua: hard compression (tokens deleted) by LLMLingua at rate 1 / pooling factor, scored by a
             small causal LM (LLMLingua-1), or by an LLMLingua-2 token classifier when given one;
- truncate-window: the example's document cut to the first decoder tokens that fit a stated
             context window with the rest of the prompt and the answer budget (long documents);
- rag / rag-arc: the BM25 top-k of the example's passages (its paragraphs), read as text / as
             vectors (long documents: evaluation/haystack.py).

A method is built for one set of fixed shots and does its one-off work on them (compressing
their documents) in its constructor; the example's own documents are processed in `prompts`,
which the runner times.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from arc_encoder.evaluation.prompts import arc_prompt, closed_book_prompt, doc_as_text
from arc_encoder.evaluation.tasks import Example
from arc_encoder.model.arc import ARCModel, Compressed
from arc_encoder.model.pooling import pooled_length
from arc_encoder.model.prompting import PromptTooLong
from arc_encoder.model.registry import resolve_model
from arc_encoder.prompt import Doc
from arc_encoder.serving.stored import stored_document
from arc_encoder.storage.indexing import IndexSettings
from arc_encoder.storage.retrieval import top_k_texts

METHODS = ("closed", "open", "arc", "mismatched", "truncate", "llmlingua", "truncate-window", "rag", "rag-arc")
DEFAULT_TOP_K = 3  # paragraphs rag and rag-arc read
# The model families llmlingua 0.2.2's LLMLingua-2 code knows (it matches them in the name).
LLMLINGUA2_NAMES = ("xlm-roberta-large", "bert-base-multilingual-cased")


@dataclass
class BuiltPrompt:
    """A prompt ready for `ARCModel.generate`, with what its own documents cost."""

    parts: list  # str / Compressed pieces
    document_tokens: int  # decoder-tokenizer tokens of the example's documents, uncompressed
    document_positions: int  # decoder positions those documents take in this method (0 if absent)


def example_docs(example: Example, separate_passages: bool = False) -> list[Doc]:
    """The documents of one example as the template places them (shots excluded): its passages
    joined into one, or one Doc per passage with `separate_passages`."""
    return [p for p in arc_prompt([], example, separate_passages) if isinstance(p, Doc)]


def arc_vector_count(model: ARCModel, text: str) -> int:
    """How many vectors the encoder makes of `text` (chunks included), without running it.

    Mirrors the encoder: memory-token models emit `memory_tokens` per chunk; otherwise each
    pooling stage maps n positions to ceil(n / factor) groups (at least one).
    """
    cfg = model.config
    total = 0
    for chunk in model.tokenize_document(text):
        if cfg.pooling == "memory":
            total += cfg.memory_tokens
            continue
        n = len(chunk)
        for factor in cfg.pooling_factors:
            if factor > 1:
                n = pooled_length(n, factor)
        total += n
    return total


class Method:
    """Base: holds the model, the decoder index, that decoder's tokenizer and the shots."""

    name = ""

    def __init__(self, model: ARCModel, decoder: int, shots: Sequence[Example]):
        self.model = model
        self.decoder = decoder
        self.tokenizer = model.decoder_tokenizers[decoder]
        self.shots = list(shots)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompts(self, examples: Sequence[Example]) -> list[BuiltPrompt]:
        """One prompt per example, its shots included."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings recorded in the report."""
        return {}


class ClosedBook(Method):
    name = "closed"

    def prompts(self, examples):
        return [BuiltPrompt([closed_book_prompt(self.shots, ex)], 0, 0) for ex in examples]


class TextMethod(Method):
    """Documents reach the decoder as text, each rewritten by `rewrite` (identity for open-book).

    The shots' documents are rewritten once, in the constructor, and reused for every example.
    """

    def __init__(self, model, decoder, shots):
        super().__init__(model, decoder, shots)
        self.shot_texts = {}
        for shot in self.shots:
            for doc in example_docs(shot):
                if doc.text not in self.shot_texts:
                    self.shot_texts[doc.text] = self.rewrite(doc.text)

    def rewrite(self, text: str) -> str:
        return text

    def prompts(self, examples):
        built = []
        for ex in examples:
            own = {doc.text: self.rewrite(doc.text) for doc in example_docs(ex)}
            # An example whose document is also a shot's must still pay for its own rewrite.
            lookup = {**self.shot_texts, **own}
            text = doc_as_text(arc_prompt(self.shots, ex), lambda t: lookup[t])
            built.append(
                BuiltPrompt(
                    [text],
                    sum(self.count_tokens(t) for t in own),
                    sum(self.positions(t, r) for t, r in own.items()),
                )
            )
        return built

    def positions(self, original: str, rewritten: str) -> int:
        return self.count_tokens(rewritten)


class OpenBook(TextMethod):
    name = "open"


class Truncate(TextMethod):
    """Keep each document's first k decoder tokens, k = ARC's vector count for that document."""

    name = "truncate"

    def budget(self, text: str) -> int:
        return arc_vector_count(self.model, text)

    def rewrite(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids[: self.budget(text)])

    def positions(self, original, rewritten):
        # The budget is what the method is allowed; re-tokenizing the cut text inside the
        # template may shift a token at the seam, which the per-example prompt length shows.
        return self.budget(original)


class ARC(Method):
    """Documents compressed by the encoder for this decoder; shots compressed once.
    `separate_passages`: each passage (e.g. each paragraph of a long document) is compressed on
    its own, all in parallel, and their vectors placed back to back in passage order."""

    name = "arc"

    def __init__(self, model, decoder, shots, separate_passages: bool = False):
        super().__init__(model, decoder, shots)
        self.separate_passages = separate_passages
        texts = list(dict.fromkeys(d.text for s in self.shots for d in example_docs(s, separate_passages)))
        self.shot_vectors = dict(zip(texts, self.vectors(texts))) if texts else {}

    def vectors(self, texts: list[str]) -> list[Compressed]:
        """The documents' vectors, one Compressed per text."""
        return self.model.compress(texts, self.decoder)  # one encoder batch

    def prompts(self, examples):
        own_texts = [[d.text for d in example_docs(ex, self.separate_passages)] for ex in examples]
        flat = [t for texts in own_texts for t in texts]
        found = iter(self.vectors(flat))
        built = []
        for ex, texts in zip(examples, own_texts):
            own = {t: next(found) for t in texts}
            lookup = {**self.shot_vectors, **own}
            template = arc_prompt(self.shots, ex, self.separate_passages)
            parts = [lookup[p.text] if isinstance(p, Doc) else p for p in template]
            built.append(
                BuiltPrompt(parts, sum(c.document_tokens for c in own.values()), sum(c.n_vectors for c in own.values()))
            )
        return built

    def describe(self):
        return {
            "pooling_factors": list(self.model.config.pooling_factors),
            "pooling": self.model.config.pooling,
            "separate_passages": self.separate_passages,
        }


class MismatchedARC(ARC):
    """ARC given the wrong documents: each example reads the passages of the next example in the
    batch whose passages differ (SQuAD asks several questions of one paragraph), wrapping around.
    Where the batch has none, it takes the most recent different passages seen before (earlier
    batches, then the shots'). Sizes are reported for the passages actually read."""

    name = "mismatched"
    REMEMBERED = 8  # distinct earlier passages kept for batches that cannot swap among themselves

    def __init__(self, model, decoder, shots, separate_passages: bool = False):
        super().__init__(model, decoder, shots, separate_passages)
        self.seen: list[list[str]] = []
        self._remember([s.passages for s in self.shots])

    def _remember(self, passages: list[list[str]]) -> None:
        for p in passages:
            if p not in self.seen:
                self.seen.insert(0, p)
        del self.seen[self.REMEMBERED :]

    def prompts(self, examples):
        swapped = []
        for i, ex in enumerate(examples):
            others = [examples[(i + k) % len(examples)].passages for k in range(1, len(examples))]
            passages = next((p for p in others + self.seen if p != ex.passages), None)
            if passages is None:
                raise ValueError(
                    "the mismatched control needs another document to swap in: "
                    "give it a batch of different documents or a shot"
                )
            swapped.append(replace(ex, passages=passages))
        self._remember([ex.passages for ex in examples])  # the last one ends up first
        return super().prompts(swapped)


class StoredARC(ARC):
    """ARC with every document's vectors read from a VectorStore made beforehand (`arc-encoder
    index`): the encoder does not run at question time. `doc_ids` maps a document's text to its
    id in the store. Not in METHODS: it needs a store, which `evaluate` does not build."""

    name = "arc-stored"

    def __init__(self, model, decoder, shots, store, doc_ids: Mapping[str, str]):
        if store.fingerprint != model.fingerprint():
            raise ValueError(
                f"store {store.path} holds vectors of model {store.fingerprint}, "
                f"not of this model ({model.fingerprint()})"
            )
        settings = IndexSettings.load(store.path)
        if settings is not None and settings.decoder != decoder:
            raise ValueError(
                f"store {store.path} holds vectors for decoder {settings.decoder} "
                f"({settings.decoder_name}), not decoder {decoder}"
            )
        self.store = store
        self.doc_ids = dict(doc_ids)
        super().__init__(model, decoder, shots)

    def vectors(self, texts):
        missing = [t for t in texts if t not in self.doc_ids]
        if missing:
            raise KeyError(f"{len(missing)} document(s) have no id in the store, e.g. {missing[0][:60]!r}")
        return [stored_document(self.store, self.doc_ids[t], self.decoder) for t in texts]

    def describe(self):
        return {**super().describe(), "store": str(self.store.path), "codec": self.store.codec.name}


def _llmlingua_compressor(model_path: str, counting_tokenizer, llmlingua2: bool, device: str = "cpu"):
    """An llmlingua `PromptCompressor` on `device` that counts tokens with our decoder's tokenizer.

    llmlingua 0.2.2's constructor fetches tiktoken's GPT-3.5 vocabulary from the network just to
    report token counts; offline that fails. Counting with the evaluated decoder's tokenizer
    instead needs no download and reports the ratio in the tokens that matter here.
    """
    try:
        from llmlingua import PromptCompressor
    except ImportError as err:
        raise ImportError(
            "the llmlingua baseline needs the llmlingua package: pip install 'arc-encoder[eval]'"
        ) from err

    class DecoderTokenCounter:
        def encode(self, text: str) -> list[int]:
            return counting_tokenizer(text, add_special_tokens=False)["input_ids"]

    class OfflinePromptCompressor(PromptCompressor):
        def __init__(self):  # the parent's attributes, without the tiktoken download
            self.model_name = model_path
            self.use_llmlingua2 = llmlingua2
            self.retrieval_model = None
            self.retrieval_model_name = None
            self.open_api_config = {}
            self.cache_bos_num = 10
            self.prefix_bos_num = 100
            self.oai_tokenizer = DecoderTokenCounter()
            self.load_model(model_path, device, {})
            if llmlingua2:
                self.init_llmlingua2()

    return OfflinePromptCompressor()


class LLMLingua(TextMethod):
    """LLMLingua hard compression of every document at `rate` (kept share of tokens).

    LLMLingua-1 (default) keeps the tokens a small causal LM finds least predictable. Two
    workarounds for llmlingua 0.2.2, both through its public `compress_prompt` arguments:
    - it compresses in windows of 200 tokens, but a document shorter than one window is left
      almost untouched (its index arithmetic goes negative), and its multi-window KV reuse reads
      the tuple cache format that transformers 5 removed. We therefore score each document in one
      window of its own length, which the scorer's context must hold;
    - token counts use the decoder's tokenizer (see `_llmlingua_compressor`).
    LLMLingua-2 (`llmlingua2_model` = a token-classification model folder) needs neither.
    """

    name = "llmlingua"

    def __init__(
        self, model, decoder, shots, rate: float, scorer: str | None = None, llmlingua2_model: str | None = None
    ):
        if not 0 < rate <= 1:
            raise ValueError(f"llmlingua rate must be in (0, 1] (kept share of tokens), got {rate}")
        self.rate = rate
        self.llmlingua2 = llmlingua2_model is not None
        if self.llmlingua2:
            # llmlingua 0.2.2 picks the word-splitting rule from the model's name and fails
            # with a bare NotImplementedError on any other name.
            if not any(k in llmlingua2_model for k in LLMLINGUA2_NAMES):
                raise ValueError(
                    f"LLMLingua-2 model {llmlingua2_model!r}: llmlingua recognises its model by "
                    f"name, which must contain one of {LLMLINGUA2_NAMES} (e.g. a folder called "
                    "llmlingua-2-xlm-roberta-large-meetingbank)"
                )
            self.scorer_path = llmlingua2_model
        else:
            self.scorer_path = resolve_model(scorer or "smollm2-135m")
        # the scorer runs where the evaluated model does (a CPU-bound scorer would pace a GPU run)
        self.compressor = _llmlingua_compressor(
            self.scorer_path, model.decoder_tokenizers[decoder], self.llmlingua2, str(model.device)
        )
        super().__init__(model, decoder, shots)

    def rewrite(self, text: str) -> str:
        if self.llmlingua2:
            return self.compressor.compress_prompt([text], rate=self.rate)["compressed_prompt"]
        scorer_tokens = len(self.compressor.tokenizer(text, add_special_tokens=False)["input_ids"])
        limit = self.compressor.max_position_embeddings
        if scorer_tokens > limit:
            raise ValueError(
                f"document of {scorer_tokens} tokens exceeds the LLMLingua scorer's "
                f"{limit} positions ({self.scorer_path})"
            )
        with warnings.catch_warnings():  # llmlingua passes the deprecated `past_key_values`
            warnings.simplefilter("ignore", FutureWarning)
            result = self.compressor.compress_prompt(
                [text],
                instruction="",
                question="",
                rate=self.rate,
                iterative_size=max(scorer_tokens, 1),
            )
        return result["compressed_prompt"]

    def describe(self):
        return {
            "rate": self.rate,
            "scorer": self.scorer_path,
            "variant": "llmlingua-2" if self.llmlingua2 else "llmlingua-1",
            "device": str(self.compressor.device),
        }


def text_prompt_positions(tokenizer, prompt: str) -> int:
    """Decoder positions of a one-string prompt: the decoder reads it with its special tokens
    (model/prompting.py)."""
    return len(tokenizer(prompt)["input_ids"])


class WindowTruncate(TextMethod):
    """The example's document cut to its first decoder tokens that fit `window` positions with
    the rest of the prompt (shots, template, question) and `max_new_tokens` of answer: what a
    decoder with that window can read of a long document. Shots' documents are kept whole."""

    name = "truncate-window"

    def __init__(self, model, decoder, shots, window: int, max_new_tokens: int):
        if window < 1:
            raise ValueError(f"truncate-window needs a window of at least 1 position, got {window}")
        self.window = window
        self.max_new_tokens = max_new_tokens
        super().__init__(model, decoder, shots)

    def prompt_positions(self, prompt: str) -> int:
        return text_prompt_positions(self.tokenizer, prompt)

    def prompts(self, examples):
        return [self.fitted(ex) for ex in examples]

    def fitted(self, example: Example) -> BuiltPrompt:
        template = arc_prompt(self.shots, example)
        last = max(i for i, p in enumerate(template) if isinstance(p, Doc))  # the example's document

        def flat(document: str) -> str:
            return "".join(
                document if i == last else (p.text if isinstance(p, Doc) else p) for i, p in enumerate(template)
            )

        ids = self.tokenizer(template[last].text, add_special_tokens=False)["input_ids"]
        limit = self.window - self.max_new_tokens
        keep = min(len(ids), limit - self.prompt_positions(flat("")))
        while keep >= 0:
            # the cut text re-tokenized inside the template can merge or split a token at a
            # seam: measure the real prompt and cut further until it fits
            prompt = flat(self.tokenizer.decode(ids[:keep]))
            over = self.prompt_positions(prompt) - limit
            if over <= 0:
                return BuiltPrompt([prompt], len(ids), keep)
            keep -= over
        raise PromptTooLong(
            f"truncate-window: example {example.id!r}'s prompt without its document takes "
            f"{self.prompt_positions(flat(''))} positions + {self.max_new_tokens} new tokens, more than the "
            f"window of {self.window} positions"
        )

    def describe(self):
        return {"window": self.window, "max_new_tokens": self.max_new_tokens}


class Retrieval(Method):
    """The BM25 top-k of each example's passages (e.g. the paragraphs of one long document,
    scored against its question, storage/retrieval.py), best first, read by `inner`: as text
    (OpenBook: "rag") or as vectors (ARC with separate passages: "rag-arc").

    With `fit` = (window, max_new_tokens) and a text reader, the lowest-ranked of the k paragraphs
    are left out while the prompt and its answer budget exceed the window (the best one always
    stays): what a retriever in front of a decoder with that window does, rather than refusing
    the whole method for the questions whose k paragraphs happen to be long."""

    def __init__(self, inner: Method, name: str, k: int, fit: tuple[int, int] | None = None):
        if k < 1:
            raise ValueError(f"{name}: top_k must be at least 1, got {k}")
        if fit is not None and not isinstance(inner, TextMethod):
            raise ValueError(f"{name}: fitting the window is for methods that read text")
        super().__init__(inner.model, inner.decoder, inner.shots)
        self.inner = inner
        self.name = name
        self.k = k
        self.fit = fit

    def retrieved(self, example: Example) -> Example:
        best = top_k_texts(example.question, example.passages, self.k)
        return replace(example, passages=[example.passages[i] for i in best])

    def fitted(self, example: Example) -> list[BuiltPrompt]:
        """The example's prompt from the most top-ranked paragraphs that fit the window."""
        window, max_new_tokens = self.fit
        ex = self.retrieved(example)
        while True:
            built = self.inner.prompts([ex])
            [prompt] = built[0].parts
            if len(ex.passages) == 1 or text_prompt_positions(self.inner.tokenizer, prompt) + max_new_tokens <= window:
                return built
            ex = replace(ex, passages=ex.passages[:-1])

    def prompts(self, examples):
        if self.fit is None:
            return self.inner.prompts([self.retrieved(ex) for ex in examples])
        return [b for ex in examples for b in self.fitted(ex)]

    def describe(self):
        out = {**self.inner.describe(), "retriever": "bm25 over the example's passages", "top_k": self.k}
        if self.fit is not None:
            out["fit_window"] = self.fit[0]  # lowest-ranked paragraphs left out to fit it
        return out


def check_methods(names: Sequence[str]) -> list[str]:
    """Validate method names (in order, no repeats); unknown ones name the known ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ValueError(f"no method given; known methods: {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known methods: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {names}")
    return names


def build_method(
    name: str,
    model: ARCModel,
    decoder: int,
    shots: Sequence[Example],
    llmlingua_rate: float | None = None,
    llmlingua_scorer: str | None = None,
    llmlingua2_model: str | None = None,
    *,
    window: int | None = None,
    max_new_tokens: int = 64,
    top_k: int = DEFAULT_TOP_K,
    separate_passages: bool = False,
) -> Method:
    """`window` and `max_new_tokens` size truncate-window and fit rag; `top_k` is what rag and rag-arc read;
    `separate_passages` makes ARC compress each passage on its own (rag-arc always does)."""
    check_methods([name])
    if name == "closed":
        return ClosedBook(model, decoder, shots)
    if name == "open":
        return OpenBook(model, decoder, shots)
    if name == "arc":
        return ARC(model, decoder, shots, separate_passages)
    if name == "mismatched":
        return MismatchedARC(model, decoder, shots, separate_passages)
    if name == "truncate":
        return Truncate(model, decoder, shots)
    if name == "truncate-window":
        if window is None:
            raise ValueError("truncate-window needs a window (--window: decoder positions)")
        return WindowTruncate(model, decoder, shots, window, max_new_tokens)
    if name == "rag":
        fit = None if window is None else (window, max_new_tokens)
        return Retrieval(OpenBook(model, decoder, shots), name, top_k, fit)
    if name == "rag-arc":
        return Retrieval(ARC(model, decoder, shots, separate_passages=True), name, top_k)
    if llmlingua_rate is None:
        if model.config.pooling == "memory":
            raise ValueError("a memory-token model has no fixed pooling factor: give llmlingua_rate")
        llmlingua_rate = 1 / model.config.pooling_factor
    return LLMLingua(model, decoder, shots, llmlingua_rate, llmlingua_scorer, llmlingua2_model)


def generate_answers(
    model: ARCModel, built: list[BuiltPrompt], decoder: int, max_new_tokens: int, window: int | None = None
):
    """Greedy answers for a batch of prompts, generation stopping at the first blank line; a
    prompt that does not fit `window` (with the answer budget) is refused: PromptTooLong."""
    prompts = [b.parts for b in built]  # each a list of parts, so one string is one prompt
    return model.generate(
        prompts, decoder=decoder, max_new_tokens=max_new_tokens, stop=["\n\n"], batch_size=len(prompts), window=window
    )


__all__ = [
    "ARC",
    "BuiltPrompt",
    "DEFAULT_TOP_K",
    "ClosedBook",
    "LLMLingua",
    "METHODS",
    "Method",
    "MismatchedARC",
    "OpenBook",
    "StoredARC",
    "Retrieval",
    "Truncate",
    "WindowTruncate",
    "arc_vector_count",
    "build_method",
    "check_methods",
    "example_docs",
    "generate_answers",
]
