"""The evaluation harness end to end on tiny models: methods, runner, report, CLI, bad input."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from typer.testing import CliRunner

from arc_encoder.evaluation import metrics
from arc_encoder.evaluation.methods import Truncate, arc_vector_count, build_method, example_docs
from arc_encoder.evaluation.report import markdown_table
from arc_encoder.evaluation.runner import evaluate, summarise
from arc_encoder.evaluation.tasks import load_task, split_shots

HAS_LLMLINGUA = importlib.util.find_spec("llmlingua") is not None

# Words the tiny tokenizer was trained on, so documents are a few dozen tokens.
CONTEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank. The dog sleeps.",
    "Paris is the capital of France and its largest city. Numbers like 1887 appear in history.",
    "Compressed vectors replace token embeddings in a frozen language model near the river.",
    "The author of the story wrote the book about towers and bridges in 1889.",
]
QUESTIONS = [
    ("who jumps over the dog?", "the quick brown fox"),
    ("what is the capital?", "Paris"),
    ("what replaces token embeddings?", "compressed vectors"),
    ("who wrote it?", "the author"),
]


def write_fixture(path, n=10):
    with open(path, "w") as f:
        for i in range(n):
            question, answer = QUESTIONS[i % len(QUESTIONS)]
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": question,
                        "answers": [answer, "Paris"],
                        "context": CONTEXTS[i % len(CONTEXTS)] + f" Item {i}.",
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture
def data_file(tmp_path):
    return write_fixture(tmp_path / "tiny.jsonl")


def run(model, path, methods, **kwargs):
    examples = load_task("squad", path)
    values = dict(shots=2, max_new_tokens=4, batch_size=3, progress=False)
    values.update(kwargs)
    return evaluate(model, "squad", examples, methods, **values), examples


ALL = ["closed", "open", "arc", "truncate"] + (["llmlingua"] if HAS_LLMLINGUA else [])


def test_report_numbers_recompute_from_predictions(tiny_arc, tiny_models, data_file):
    model = tiny_arc()
    report, examples = run(model, data_file, ALL, llmlingua_scorer=tiny_models["llama"])
    assert list(report["metrics"]) == ALL
    closed, open_ = report["metrics"]["closed"], report["metrics"]["open"]
    for method in ALL:
        rows = report["predictions"][method]
        values = report["metrics"][method]
        assert values["n"] == len(rows) == len(examples) - 2
        em = [100 * metrics.exact_match(r["prediction"], r["answers"]) for r in rows]
        f1 = [100 * metrics.f1(r["prediction"], r["answers"]) for r in rows]
        assert [r["em"] for r in rows] == em
        for name, scores in (("em", em), ("f1", f1)):
            mean = sum(scores) / len(scores)
            sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
            assert values[name]["mean"] == pytest.approx(mean)
            assert values[name]["stderr"] == pytest.approx(sd / math.sqrt(len(scores)))
        assert values["seconds_per_example"] == pytest.approx(sum(r["seconds"] for r in rows) / len(rows))
        assert values["positions_per_example"] == pytest.approx(sum(r["positions"] for r in rows) / len(rows))
        assert all(r["prediction"] == r["raw"].split("\n\n")[0].strip() for r in rows)
        assert all(r["seconds"] > 0 for r in rows)
        if method not in ("closed", "open") and open_["em"]["mean"] != closed["em"]["mean"]:
            expected = (values["em"]["mean"] - closed["em"]["mean"]) / (open_["em"]["mean"] - closed["em"]["mean"])
            assert values["gain_kept"]["em"] == pytest.approx(expected)
    # the document budgets: open reads every token, closed none, arc/truncate k vectors
    pred = {m: report["predictions"][m] for m in ALL}
    assert all(r["document_positions"] == 0 for r in pred["closed"])
    assert all(r["document_positions"] == r["document_tokens"] for r in pred["open"])
    # fewer document positions -> shorter prompts, measured on the real decoder inputs
    for a, o, c in zip(pred["arc"], pred["open"], pred["closed"]):
        assert c["positions"] < a["positions"] < o["positions"]
    if HAS_LLMLINGUA:
        ratio = [r["document_tokens"] / max(r["document_positions"], 1) for r in pred["llmlingua"]]
        assert min(ratio) > 1.3  # LLMLingua actually deleted tokens at rate 1/2
    assert report["config"]["shot_ids"] and report["config"]["n_scored"] == len(examples) - 2


def test_document_effect_pairs_arc_with_mismatched(tiny_arc, data_file):
    model = tiny_arc()
    report, _ = run(model, data_file, ["arc", "mismatched"])
    arc, control = ({r["id"]: r for r in report["predictions"][m]} for m in ("arc", "mismatched"))
    effect = report["metrics"]["arc"]["minus_mismatched"]
    for name in ("em", "f1"):
        differences = [arc[i][name] - control[i][name] for i in arc]
        assert effect[name]["mean"] == pytest.approx(sum(differences) / len(differences))
    assert f"ARC - mismatched, paired over the same examples: {effect['em']['mean']:+.1f}" in markdown_table([report])
    assert "minus_mismatched" not in run(model, data_file, ["arc"])[0]["metrics"]["arc"]


def test_shots_never_scored_and_fixed_by_seed(tiny_arc, data_file):
    model = tiny_arc()
    report, examples = run(model, data_file, ["closed", "arc"], shots=3, seed=7)
    shots, _ = split_shots(examples, 3, seed=7)
    assert report["config"]["shot_ids"] == [s.id for s in shots]
    for rows in report["predictions"].values():
        scored = {r["id"] for r in rows}
        assert not scored & set(report["config"]["shot_ids"])
        assert scored | set(report["config"]["shot_ids"]) == {e.id for e in examples}


def test_shuffle_samples_the_file_deterministically(tiny_arc, data_file):
    model = tiny_arc()
    ordered, examples = run(model, data_file, ["closed"], limit=4, seed=3)
    shuffled, _ = run(model, data_file, ["closed"], limit=4, seed=3, shuffle=True)
    again, _ = run(model, data_file, ["closed"], limit=4, seed=3, shuffle=True)

    def ids(report):
        return [r["id"] for r in report["predictions"]["closed"]]

    shots, rest = split_shots(examples, 2, seed=3)
    assert ids(ordered) == [e.id for e in rest[:4]]
    assert ids(shuffled) == ids(again) != ids(ordered)
    assert not set(ids(shuffled)) & {s.id for s in shots}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pooling_factors": [2, 2]},
        {"chunk_tokens": 7},
        {"pooling": "memory", "pooling_factors": [], "memory_tokens": 3},
    ],
)
def test_truncation_budget_equals_arc_vector_count(tiny_arc, data_file, overrides):
    model = tiny_arc(**overrides)
    report, examples = run(model, data_file, ["arc", "truncate"], limit=4)
    by_id = {e.id: e for e in examples}
    for a, t in zip(report["predictions"]["arc"], report["predictions"]["truncate"]):
        text = example_docs(by_id[a["id"]])[0].text
        vectors = model.compress([text])[0].n_vectors  # the encoder itself, not the count rule
        assert a["document_positions"] == t["document_positions"] == vectors
        assert arc_vector_count(model, text) == vectors
        assert a["document_tokens"] == t["document_tokens"]


def test_truncate_keeps_first_k_decoder_tokens(tiny_arc, data_file):
    model = tiny_arc()
    examples = load_task("squad", data_file)
    shots, rest = split_shots(examples, 2, 0)
    method = Truncate(model, 0, shots)
    tok = model.decoder_tokenizers[0]
    built = method.prompts(rest[:1])[0]
    text = example_docs(rest[0])[0].text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    k = model.compress([text])[0].n_vectors
    assert 0 < k < len(ids)
    kept, dropped = tok.decode(ids[:k]), tok.decode(ids[k:])
    prompt = built.parts[0]
    assert f"Document: {kept}\nQuestion: {rest[0].question}\nAnswer:" in prompt
    assert dropped.strip() not in prompt
    # every shot's document is cut the same way
    for shot in shots:
        shot_text = example_docs(shot)[0].text
        shot_ids = tok(shot_text, add_special_tokens=False)["input_ids"]
        assert f"Document: {tok.decode(shot_ids[: model.compress([shot_text])[0].n_vectors])}\n" in prompt


def test_pooling_factor_hand_check(tiny_arc, data_file):
    model = tiny_arc()  # pooling factor 2, same tokenizer for encoder and decoder
    report, examples = run(model, data_file, ["arc"], limit=3)
    row = report["predictions"]["arc"][0]
    text = next(e for e in examples if e.id == row["id"]).passages[0]
    n = len(model.decoder_tokenizers[0](text, add_special_tokens=False)["input_ids"])
    vectors = -(-n // 2)  # ceil(n / 2) groups for n >= 2
    assert row["document_tokens"] == n and row["document_positions"] == vectors
    rows = report["predictions"]["arc"]
    expected = sum(r["document_tokens"] / r["document_positions"] for r in rows) / len(rows)
    assert report["metrics"]["arc"]["pooling_factor"] == pytest.approx(expected)
    assert 1.8 < expected <= 2.0


def test_summaries_for_translation_and_summaries():
    rows = [
        {
            "prediction": p,
            "answers": [r],
            "seconds": 1.0,
            "positions": 10,
            "document_tokens": 8,
            "document_positions": 2,
        }
        for p, r in [
            ("le chat est noir", "le chat est noir"),
            ("un chien", "le chien dort"),
            ("bonjour le monde", "bonjour tout le monde"),
        ]
    ]
    out = summarise("flores-french", rows)
    assert out["bleu"]["mean"] == pytest.approx(
        metrics.bleu([r["prediction"] for r in rows], [r["answers"][0] for r in rows])
    )
    assert out["bleu"]["stderr"] > 0
    assert out["pooling_factor"] == 4.0
    for r in rows:
        r["rougeL"] = 100 * metrics.rouge_l(r["prediction"], r["answers"])
    assert summarise("cnn", rows)["rougeL"]["mean"] == pytest.approx(sum(r["rougeL"] for r in rows) / 3)


def write_tiny_bert_classifier(folder):
    """A random 1-layer BERT token classifier with a WordPiece vocabulary of the test corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    from conftest import CORPUS

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    BertForTokenClassification(
        BertConfig(
            vocab_size=fast.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
    ).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.mark.skipif(not HAS_LLMLINGUA, reason="llmlingua not installed")
def test_llmlingua2_through_a_token_classifier(tiny_arc, data_file, tmp_path):
    model = tiny_arc()
    # llmlingua knows LLMLingua-2 models by name: an unknown name is refused clearly up front
    with pytest.raises(ValueError, match="recognises its model by name"):
        build_method("llmlingua", model, 0, [], llmlingua2_model=str(tmp_path / "my-classifier"))
    folder = write_tiny_bert_classifier(tmp_path / "tiny-bert-base-multilingual-cased")
    report, _ = run(model, data_file, ["open", "llmlingua"], limit=3, llmlingua_rate=0.5, llmlingua2_model=folder)
    assert report["config"]["method_settings"]["llmlingua"]["variant"] == "llmlingua-2"
    for o, c in zip(report["predictions"]["open"], report["predictions"]["llmlingua"]):
        assert c["document_tokens"] == o["document_tokens"]
        assert 0 < c["document_positions"] < 0.8 * o["document_positions"]


def test_bad_input(tiny_arc, data_file):
    model = tiny_arc()
    examples = load_task("squad", data_file)
    with pytest.raises(ValueError, match="known tasks"):
        evaluate(model, "squadx", examples, ["closed"], progress=False)
    with pytest.raises(ValueError, match="known methods: closed, open, arc, mismatched, truncate, llmlingua"):
        evaluate(model, "squad", examples, ["closed", "gist"], progress=False)
    with pytest.raises(ValueError, match="decoder index 1 does not exist"):
        evaluate(model, "squad", examples, ["closed"], decoder=1, progress=False)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        evaluate(model, "squad", examples, ["closed"], limit=0, progress=False)
    with pytest.raises(ValueError, match="leave none to score"):
        evaluate(model, "squad", examples[:2], ["closed"], shots=2, progress=False)
    with pytest.raises(ValueError, match="rate must be in"):
        build_method("llmlingua", model, 0, [], llmlingua_rate=2.0)


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def saved_models(tiny_arc, tmp_path):
    paths = []
    for factor in (2, 4):
        path = tmp_path / f"arc{factor}"
        tiny_arc(pooling_factors=[factor]).save_pretrained(path)
        paths.append(str(path))
    return paths


def invoke(*args):
    from arc_encoder.cli import app

    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})


def flat_output(result) -> str:
    """The output with rich's error box and line wrapping removed."""
    return " ".join(result.output.replace("│", " ").split())


def test_cli_two_models_json_table_and_plot(saved_models, data_file, tmp_path):
    out = tmp_path / "res" / "results.json"
    result = invoke(
        "--model",
        saved_models[0],
        "--model",
        saved_models[1],
        "--task",
        "squad",
        "--data",
        str(data_file),
        "--methods",
        "closed,open,arc,truncate",
        "--shots",
        "2",
        "--limit",
        "3",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "| model | method | em | f1 |" in result.output
    saved = json.loads(out.read_text())
    assert len(saved["runs"]) == 2
    assert (tmp_path / "res" / "results.png").stat().st_size > 1000
    factors = [run["metrics"]["arc"]["pooling_factor"] for run in saved["runs"]]
    assert factors[0] < factors[1]  # x2 model vs x4 model
    first, second = saved["runs"]
    assert second["predictions"]["open"] == first["predictions"]["open"]  # same decoder: run once
    assert second["metrics"]["open"]["shared_from"] == saved_models[0]
    for run in saved["runs"]:
        assert list(run["metrics"]) == ["closed", "open", "arc", "truncate"]
        rows = run["predictions"]["truncate"]
        assert [r["document_positions"] for r in rows] == [r["document_positions"] for r in run["predictions"]["arc"]]


def test_cli_content_measure(saved_models, data_file, tmp_path):
    out = tmp_path / "content.json"
    result = invoke(
        "--model",
        saved_models[0],
        "--task",
        "squad",
        "--data",
        str(data_file),
        "--methods",
        "closed",
        "--shots",
        "1",
        "--limit",
        "4",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--content",
        "--content-span",
        "6",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "nats per token of their own document" in result.output
    content = json.loads(out.read_text())["runs"][0]["content"]
    rec = content["tasks"]["reconstruction"]
    assert rec["gap"] == pytest.approx(rec["mismatched"] - rec["right"])
    assert len(content["reconstructions"]) >= 1 and 0 <= content["rouge_l"] <= 1


def test_cli_long_documents_in_chunks(saved_models, data_file, tmp_path):
    out = tmp_path / "chunks.json"
    args = [
        "--model",
        saved_models[0],
        "--task",
        "squad",
        "--data",
        str(data_file),
        "--methods",
        "arc,truncate",
        "--shots",
        "1",
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
        "--no-progress",
    ]
    result = invoke(*args, "--chunk-size", "8", "--max-chunks", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["config"]["chunk_tokens"] == 8 and run["config"]["max_chunks"] == 8
    for row in run["predictions"]["arc"]:
        n = row["document_tokens"]  # same tokenizer for encoder and decoder here
        chunks = [8] * (n // 8) + ([n % 8] if n % 8 else [])
        assert len(chunks) > 1
        assert row["document_positions"] == sum(-(-c // 2) for c in chunks)  # ceil per chunk
    # too many chunks: a clear error, never a silently dropped chunk
    result = invoke(*args, "--chunk-size", "4", "--max-chunks", "2")
    assert result.exit_code != 0
    assert "more than max_chunks=2" in flat_output(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "squadx"], "known tasks"),
        (["--methods", "closed,foo"], "known methods"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--decoder", "3"], "decoder index 3 does not exist"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_cli_bad_arguments(saved_models, data_file, args, message):
    base = {"--task": "squad", "--methods": "closed", "--limit": "1", "--decoder": "0"}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    result = invoke(
        "--model",
        saved_models[0],
        "--data",
        str(data_file),
        "--shots",
        "1",
        "--max-new-tokens",
        "1",
        "--no-progress",
        *flat,
    )
    assert result.exit_code != 0
    assert message in flat_output(result)


def test_cli_bad_files(saved_models, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(
        json.dumps({"question": "q", "answers": ["a"], "context": "c"})
        + "\n"
        + json.dumps({"question": "q", "answer_text": "a", "context": "c"})
        + "\n"
    )
    for path, message in ((empty, "no examples in file"), (wrong, "line 2: missing field 'answers'")):
        result = invoke(
            "--model", saved_models[0], "--task", "squad", "--data", str(path), "--methods", "closed", "--no-progress"
        )
        assert result.exit_code != 0
        assert message in flat_output(result)


def test_mismatched_control_reads_another_questions_document(tiny_arc, data_file):
    import torch

    from arc_encoder.model.arc import Compressed

    model = tiny_arc()
    examples = load_task("squad", data_file)
    method = build_method("mismatched", model, 0, examples[:1])
    batch = examples[1:4]
    built = method.prompts(batch)

    def read_doc(prompt):  # the example's document is the last Compressed piece
        return [p for p in prompt.parts if isinstance(p, Compressed)][-1]

    for i, (ex, prompt) in enumerate(zip(batch, built)):
        other = batch[(i + 1) % len(batch)]
        assert other.passages != ex.passages
        expected = model.compress(other.passages)[0]
        assert torch.allclose(read_doc(prompt).chunks[0], expected.chunks[0], atol=1e-5)
        assert prompt.document_tokens == expected.document_tokens
        assert prompt.parts[-1].endswith(f"Question: {ex.question}\nAnswer:")
    # a batch of one takes the most recent different document seen before
    alone = method.prompts(batch[:1])[0]
    expected = model.compress(batch[-1].passages)[0]
    assert torch.allclose(read_doc(alone).chunks[0], expected.chunks[0], atol=1e-5)
    # and the report scores every question with its own answers
    report, _ = run(model, data_file, ["arc", "mismatched"], limit=4)
    assert [r["id"] for r in report["predictions"]["mismatched"]] == [r["id"] for r in report["predictions"]["arc"]]
