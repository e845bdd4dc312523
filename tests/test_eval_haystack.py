"""Long documents: the haystack builder, the window refusal, window truncation, BM25 retrieval
methods, and `arc-encoder eval --task haystack`, on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from arc_encoder.evaluation.haystack import Paragraph, build_haystack, model_haystacks, paragraph_pool
from arc_encoder.evaluation.prompts import open_book_prompt
from arc_encoder.evaluation.runner import evaluate_haystack, select_examples
from arc_encoder.evaluation.tasks import Example, load_task
from arc_encoder.model.prompting import PromptTooLong
from arc_encoder.storage.retrieval import bm25_scores, top_k_texts
from conftest import CORPUS

SENTENCES = sorted(set(CORPUS))  # words the tiny tokenizer knows: a few tokens per word


def squad_records(n_articles=8, per_article=3):
    """SQuAD dev rows: articles of a few paragraphs, two questions on each paragraph."""
    rows = []
    for a in range(n_articles):
        for p in range(per_article):
            sentences = [SENTENCES[(a + p + k) % len(SENTENCES)] for k in range(1 + (a + p) % 3)]
            context = " ".join(sentences) + f" Item {a} {p}."
            for q in range(2):
                rows.append(
                    {
                        "id": f"a{a}p{p}q{q}",
                        "title": f"Article_{a}",
                        "context": context,
                        "question": f"what is item {a} {p}?" if q == 0 else "who wrote the book?",
                        "answers": [f"{a} {p}"],
                    }
                )
    return rows


@pytest.fixture
def dev_file(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in squad_records()))
    return path


# ------------------------------------------------------------------------------------- builder
def words(text: str) -> int:
    return len(text.split())


def word_examples():
    """Articles whose paragraphs have 5 to 40 words (a word = a token here)."""
    examples = []
    for a in range(12):
        for p in range(4):
            text = " ".join(f"w{a}_{p}_{k}" for k in range(5 + (7 * a + 11 * p) % 36))
            examples.append(Example(f"question {a} {p}?", ["x"], [text], f"a{a}p{p}", f"Article_{a}"))
    return examples


OVERHEAD = 17  # template, shots and answer budget, in words


def word_length(passages: list[str]) -> int:
    return OVERHEAD + sum(words(p) for p in passages)


@pytest.mark.parametrize("multiple", [1, 2, 4, 8])
def test_gold_once_distractors_from_other_articles_length_within_one_paragraph(multiple):
    examples = word_examples()
    pool = paragraph_pool(examples)
    title_of = {p.text: p.title for p in pool}
    longest = max(words(p.text) for p in pool)
    window = 64
    for example in examples[::5]:
        stack = build_haystack(example, pool, multiple * window, word_length, words, seed=3)
        passages = stack.example.passages
        gold = example.passages[0]
        assert passages.count(gold) == 1 and passages[stack.gold_index] == gold
        assert len(set(passages)) == len(passages)  # no distractor twice
        for i, text in enumerate(passages):
            if i != stack.gold_index:
                assert title_of[text] != example.title, f"distractor from the question's own article {example.title}"
        # the sequence fills the requested multiple of the window, less than one paragraph short
        assert stack.positions == word_length(passages)
        assert multiple * window - longest < stack.positions <= multiple * window
        assert stack.example.question == example.question and stack.example.answers == example.answers


def test_same_seed_same_haystacks_other_seed_others():
    examples = word_examples()
    pool = paragraph_pool(examples)

    def build(seed, subset):
        return [build_haystack(e, pool, 4 * 64, word_length, words, seed) for e in subset]

    first = build(0, examples)
    again = build(0, examples)
    assert [(h.example.passages, h.gold_index) for h in first] == [(h.example.passages, h.gold_index) for h in again]
    # a question's haystack does not depend on which other questions are built
    assert build(0, examples[7:8])[0].example.passages == first[7].example.passages
    other = build(1, examples)
    assert [h.example.passages for h in other] != [h.example.passages for h in first]
    # the gold lands at different places over questions, not always first or last
    assert len({h.gold_index for h in first}) > 3


def test_builder_errors_name_the_problem():
    examples = word_examples()
    pool = paragraph_pool(examples)
    with pytest.raises(ValueError, match="too few tokens"):
        build_haystack(examples[0], pool, 100_000, word_length, words)
    with pytest.raises(ValueError, match="with its own paragraph alone"):
        build_haystack(examples[0], pool, 10, word_length, words)
    with pytest.raises(ValueError, match="has no title"):
        paragraph_pool([Example("q", ["a"], ["text"], "untitled")])
    with pytest.raises(ValueError, match="has 2 passages"):
        paragraph_pool([Example("q", ["a"], ["x", "y"], "two", "T")])
    # two questions on one paragraph: it is in the pool once
    assert paragraph_pool([Example("q", ["a"], ["x"], "i", "T")] * 2) == [Paragraph("T", "x")]


def test_model_haystacks_are_sized_in_real_decoder_positions(tiny_arc, dev_file):
    model = tiny_arc()
    tokenizer = model.decoder_tokenizers[0]
    examples = load_task("haystack", dev_file)
    shots, questions = select_examples(examples, 1, seed=0, limit=6)
    max_new, window = 5, 300
    shot_paragraphs = {s.passages[0] for s in shots}
    longest = max(
        len(tokenizer("\n" + p.text, add_special_tokens=False)["input_ids"]) for p in paragraph_pool(examples)
    )
    for multiple in (1, 2):
        stacks = model_haystacks(
            tokenizer, shots, questions, paragraph_pool(examples), window, multiple, max_new, seed=0
        )
        for stack in stacks:
            # recomputed here from the prompt text, independently of the builder's bookkeeping
            prompt = open_book_prompt(shots, stack.example)
            positions = len(tokenizer(prompt)["input_ids"]) + max_new
            assert positions == stack.positions
            assert multiple * window - longest < positions <= multiple * window
            assert not shot_paragraphs & set(stack.example.passages) - {stack.example.passages[stack.gold_index]}


# ------------------------------------------------------------------------------------- methods
def test_generate_refuses_a_prompt_beyond_the_window_by_name(tiny_arc):
    model = tiny_arc()
    prompt = ["The quick brown fox jumps over the lazy dog near the river bank."]
    n = len(model.decoder_tokenizers[0](prompt[0])["input_ids"])
    assert len(model.generate(prompt, max_new_tokens=2, window=n + 2)) == 1
    with pytest.raises(
        PromptTooLong,
        match=f"takes {n} decoder positions \\+ 3 new tokens, more than the window of {n + 2} positions",
    ):
        model.generate(prompt, max_new_tokens=3, window=n + 2)


@pytest.fixture
def long_arc(tiny_arc, tiny_models):
    """A tiny ARC4 model whose decoder has 4,096 positions: windows, not the decoder, limit."""
    return tiny_arc(decoders=[tiny_models["llama-long"]], pooling_factors=[4])


def run_haystack(model, dev_file, methods, multiple, window=200, **kwargs):
    examples = load_task("haystack", dev_file)
    values = dict(shots=1, limit=3, max_new_tokens=2, batch_size=2, progress=False, top_k=1)
    values.update(kwargs)
    return evaluate_haystack(model, examples, methods, window, multiple, **values)


def test_open_book_beyond_the_window_refused_by_name_while_arc_chunks_are_read(long_arc, dev_file):
    methods = ["closed", "open", "truncate-window", "arc", "rag", "rag-arc", "mismatched"]
    report = run_haystack(long_arc, dev_file, methods, multiple=2)
    window = 200
    refused = report["metrics"]["open"]["not_applicable"]
    assert refused.startswith("open: ") and f"more than the window of {window} positions" in refused
    assert report["predictions"]["open"] == []
    assert "gain_kept" not in report["metrics"]["arc"]  # no open-book anchor to measure against
    config = report["config"]["haystack"]
    assert config["target_positions"] == 2 * window and config["open_book_positions_per_example"] > window
    for method in ("closed", "truncate-window", "arc", "rag", "rag-arc", "mismatched"):
        rows = report["predictions"][method]
        assert len(rows) == 3, method
        assert all(r["positions"] + 2 <= window for r in rows), method
    for row in report["predictions"]["arc"]:
        # every paragraph compressed on its own: ceil(tokens / 4) vectors, + <Cont>, each
        assert row["paragraphs"] >= 3 and row["document_tokens"] > window
        assert row["document_positions"] < row["document_tokens"] / 3
    for row in report["predictions"]["truncate-window"]:
        assert row["positions"] + 2 == window  # filled to the window, not beyond
        assert row["document_positions"] < row["document_tokens"]
    # rag reads the BM25 top paragraph: fewer tokens than the haystack, as text
    for rag, arc in zip(report["predictions"]["rag"], report["predictions"]["arc"]):
        assert rag["document_tokens"] == rag["document_positions"] < arc["document_tokens"]
    assert report["config"]["method_settings"]["rag-arc"]["top_k"] == 1
    assert report["config"]["method_settings"]["arc"]["separate_passages"] is True
    assert report["config"]["method_settings"]["mismatched"]["separate_passages"] is True
    assert "minus_mismatched" in report["metrics"]["arc"]


def test_rag_leaves_out_its_lowest_ranked_paragraphs_to_fit_the_window(long_arc):
    from arc_encoder.evaluation.methods import build_method

    tokenizer = long_arc.decoder_tokenizers[0]
    shot = Example("who wrote the book?", ["a"], [SENTENCES[0]], "s", "S")
    passages = [f"{SENTENCES[k]} Item {k}." for k in range(1, 5)]
    example = Example("what is item 3?", ["3"], passages, "q", "Q")
    best = top_k_texts(example.question, passages, 3)  # the ranking rag reads, best first

    def positions(method):
        [built] = method.prompts([example])
        [prompt] = built.parts
        return len(tokenizer(prompt)["input_ids"]), prompt

    unfitted = build_method("rag", long_arc, 0, [shot], top_k=3)
    full, prompt = positions(unfitted)
    assert all(passages[i] in prompt for i in best)
    # a window that holds the top two paragraphs but not the third (with 2 new tokens)
    third = len(tokenizer("\n" + passages[best[2]], add_special_tokens=False)["input_ids"])
    window = full + 2 - 1
    fitted = build_method("rag", long_arc, 0, [shot], window=window, max_new_tokens=2, top_k=3)
    n, prompt = positions(fitted)
    assert n + 2 <= window and n >= full - third - 2
    assert passages[best[0]] in prompt and passages[best[1]] in prompt and passages[best[2]] not in prompt
    assert fitted.describe()["fit_window"] == window
    # however small the window, the best paragraph stays (and generation refuses it by name)
    tiny = build_method("rag", long_arc, 0, [shot], window=5, max_new_tokens=2, top_k=3)
    [built] = tiny.prompts([example])
    assert passages[best[0]] in built.parts[0] and passages[best[1]] not in built.parts[0]


def test_at_one_window_open_book_fits_and_reads_the_whole_haystack(long_arc, dev_file):
    report = run_haystack(long_arc, dev_file, ["open", "truncate-window"], multiple=1)
    stacks = report["config"]["haystack"]
    assert "not_applicable" not in report["metrics"]["open"]
    rows = report["predictions"]["open"]
    assert sum(r["positions"] + 2 for r in rows) / len(rows) == stacks["open_book_positions_per_example"]
    # the whole haystack fits, so truncation to the window keeps all of it
    for cut, whole in zip(report["predictions"]["truncate-window"], rows):
        assert cut["document_positions"] == cut["document_tokens"] == whole["document_tokens"]
        assert cut["prediction"] == whole["prediction"]
    for row in rows:
        assert 0 <= row["gold_paragraph"] < row["paragraphs"]


def test_window_truncation_refuses_when_nothing_of_the_document_fits(long_arc, dev_file):
    examples = load_task("squad", dev_file)
    from arc_encoder.evaluation.runner import evaluate

    report = evaluate(
        long_arc, "squad", examples, ["truncate-window"], shots=1, limit=1, max_new_tokens=2, window=20, progress=False
    )
    assert "truncate-window: example" in report["metrics"]["truncate-window"]["not_applicable"]


# ------------------------------------------------------------------------------------- BM25
def naive_bm25(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    """Lucene's BM25 written out (no (k1 + 1) factor, which only scales every score): the sum over
    query terms of idf * tf / (tf + k1 (1 - b + b |d| / avg |d|)), idf = ln(1 + (N - df + 0.5) / (df + 0.5))."""
    n, avg = len(docs), sum(len(d) for d in docs) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in set(query):
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avg))
        scores.append(score)
    return scores


def test_bm25_scores_match_the_formula_and_top_k_keeps_order_on_ties():
    texts = ["zebra zebra lion", "lion tiger", "tiger tiger tiger bear", "eagle"]
    expected = naive_bm25(["zebra", "tiger"], [t.split() for t in texts])
    assert np.allclose(bm25_scores("Zebra tiger", texts), expected, rtol=1e-5)
    assert top_k_texts("zebra tiger", texts, 2) == sorted(range(4), key=lambda i: -expected[i])[:2]
    assert top_k_texts("nothing matches", texts, 3) == [0, 1, 2]  # all zero: passage order
    assert top_k_texts("the of", texts, 9) == [0, 1, 2, 3]  # stopwords only, k beyond the texts
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_texts("lion", texts, 0)


# ------------------------------------------------------------------------------------- CLI
def invoke(*args):
    from arc_encoder.cli import app

    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})


def test_cli_haystack_table_json_and_refusals(long_arc, dev_file, tmp_path):
    folder = tmp_path / "model"
    long_arc.save_pretrained(folder)
    out = tmp_path / "haystack.json"
    common = ["--model", str(folder), "--task", "haystack", "--data", str(dev_file), "--shots", "1", "--limit", "2"]
    common += ["--max-new-tokens", "2", "--no-progress"]
    result = invoke(*common, "--window", "200", "--multiple", "2", "--top-k", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "| open | n/a |" in result.output
    assert "not applicable: open: the input takes" in result.output
    assert "BM25 puts the question's paragraph in its top 1" in result.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["config"]["methods"] == ["closed", "open", "truncate-window", "arc", "rag", "rag-arc"]
    assert run["config"]["window"] == 200 and run["config"]["haystack"]["multiple"] == 2
    assert run["metrics"]["arc"]["n"] == 2

    result = invoke(*common, "--methods", "closed")
    assert result.exit_code != 0 and "--task haystack needs --window" in " ".join(result.output.split())
    result = invoke(*common, "--window", "200", "--multiple", "0")
    assert result.exit_code != 0 and "--multiple and --top-k must be at least 1" in " ".join(result.output.split())
