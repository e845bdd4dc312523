"""benchmarks/storage_quality.py end to end on a tiny model: stores per codec, answers from stored
vectors, the bytes per token against a hand count, on-the-fly compression = the float32 store."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("faiss")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "storage_quality.py"
spec = importlib.util.spec_from_file_location("storage_quality", SCRIPT)
storage_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage_quality)

# Words the tiny tokenizer knows: three sentences make a paragraph of ~90 tokens, ~45 vectors at
# pooling factor 2, so 9 paragraphs give the >= 256 vectors a PQ codebook needs.
from _serving_helpers import SENTENCES  # noqa: E402  (words the tiny tokenizer knows)

QUESTIONS = [
    ("who jumps over the dog?", "the quick brown fox"),
    ("what is the capital?", "Paris"),
    ("what replaces token embeddings?", "compressed vectors"),
    ("who wrote it?", "the author"),
]
CODECS = ["float32", "float16", "pq2", "pq1", "pq0.5"]
BYTES_PER_VECTOR = {"float32": 4 * 32, "float16": 2 * 32, "pq2": 32 // 4, "pq1": 32 // 8, "pq0.5": 32 // 16}


def write_records(path: Path, n: int = 12, sentences: int = 3) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            question, answer = QUESTIONS[i % len(QUESTIONS)]
            context = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(sentences))
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": question,
                        "answers": [answer],
                        "context": f"{context} Item {i} is here.",
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture
def saved_tiny(tiny_arc, tmp_path):
    folder = tmp_path / "model"
    model = tiny_arc(seed=3, bottleneck=32, pooling_factors=[2])  # PQ sub-vectors of 4 / 8 / 16 dims
    model.save_pretrained(folder)
    return folder, model


def argv(folder, data, out, **extra):
    values = {
        "--model": folder,
        "--data": data,
        "--questions": 6,
        "--shots": 3,
        "--codecs": ",".join(CODECS),
        "--out": out,
        "--max-new-tokens": 4,
        "--batch-size": 4,
    }
    values.update(extra)
    return [str(x) for kv in values.items() for x in kv] + ["--no-progress"]


def test_storage_quality_report(saved_tiny, tmp_path):
    folder, model = saved_tiny
    data = write_records(tmp_path / "qa.jsonl")
    out = tmp_path / "report.json"
    report = storage_quality.main(argv(folder, data, out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    cfg = report["config"]
    assert (cfg["questions"], cfg["shots"], cfg["codecs"]) == (6, 3, CODECS)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    used = {r["id"] for r in records} & set(cfg["shot_ids"] + [r["id"] for r in report["predictions"]["arc"]])
    paragraphs = [r["context"] for r in records if r["id"] in used]
    assert cfg["paragraphs"] == len(paragraphs) == 9
    enc, dec = model.encoder_tokenizer, model.decoder_tokenizers[0]
    enc_tokens = [len(enc(p, add_special_tokens=False)["input_ids"]) for p in paragraphs]
    assert cfg["chunk_tokens"] == max(enc_tokens)  # every paragraph one chunk

    # Bytes per token counted by hand: vectors = ceil(encoder tokens / 2) per paragraph.
    n_tokens = sum(len(dec(p, add_special_tokens=False)["input_ids"]) for p in paragraphs)
    n_vectors = sum(math.ceil(n / 2) for n in enc_tokens)
    text = report["storage"]["text"]
    assert text["n_tokens"] == n_tokens
    assert text["bytes_per_token"] == pytest.approx(sum(len(p.encode()) for p in paragraphs) / n_tokens)
    per_token = []
    for codec in CODECS:
        figures = report["storage"][codec]
        assert (figures["n_vectors"], figures["n_chunks"]) == (n_vectors, 9)
        assert figures["bytes_per_token"] == pytest.approx(n_vectors * BYTES_PER_VECTOR[codec] / n_tokens)
        codebook = 32 * 256 * 4 if codec.startswith("pq") else 0  # dim x 256 centroids x float32
        assert figures["codebook_bytes"] >= codebook  # the safetensors file: codebook + header
        assert figures["bytes_per_token_with_codebook"] == pytest.approx(
            (n_vectors * BYTES_PER_VECTOR[codec] + figures["codebook_bytes"]) / n_tokens
        )
        assert figures["pq_training_vectors"] == (n_vectors if codec.startswith("pq") else None)
        per_token.append(figures["bytes_per_token"])
    assert per_token == sorted(per_token, reverse=True) and len(set(per_token)) == len(CODECS)

    # Answers from the float32 store are exactly those of compressing on the fly.
    metrics, predictions = report["metrics"], report["predictions"]
    stored, fly = predictions["stored-float32"], predictions["arc"]
    assert [r["raw"] for r in stored] == [r["raw"] for r in fly]
    assert [r["positions"] for r in stored] == [r["positions"] for r in fly]
    agreement = report["agreement_on_the_fly_vs_float32"]
    assert (agreement["rate"], agreement["differing_ids"]) == (1.0, [])
    assert agreement["vector_max_abs_diff"] < 1e-4 and agreement["vector_check_documents"] >= 3

    methods = ["closed", "open", "arc"] + [f"stored-{c}" for c in CODECS]
    assert list(metrics) == methods
    for name in methods:
        rows = predictions[name]
        assert [r["id"] for r in rows] == [r["id"] for r in fly]
        assert metrics[name]["em"]["mean"] == pytest.approx(sum(r["em"] for r in rows) / 6)
        assert metrics[name]["seconds_per_example"] > metrics[name]["prompt_seconds_per_example"] > 0
        assert all(r["seconds"] > r["prompt_seconds"] for r in rows)
    f32_em = metrics["stored-float32"]["em"]["mean"]
    for codec in CODECS:
        kept = metrics[f"stored-{codec}"]["em_kept"]
        assert kept == (None if f32_em == 0 else pytest.approx(metrics[f"stored-{codec}"]["em"]["mean"] / f32_em))
        target = report["target"][codec]
        assert target["bytes_at_most_text"] == (per_token[CODECS.index(codec)] <= text["bytes_per_token"])
    # Every stored codec gives the decoder the same number of positions as on the fly.
    for codec in CODECS:
        assert [r["positions"] for r in predictions[f"stored-{codec}"]] == [r["positions"] for r in fly]
    assert report["seconds_per_answer"]["stored_float32"] == metrics["stored-float32"]["seconds_per_example"]
    assert report["prompt_seconds_per_answer"]["on_the_fly"] == metrics["arc"]["prompt_seconds_per_example"]
    table = storage_quality.markdown(report)
    assert "| ARC, stored pq0.5 |" in table and "6/6 identical answers" in table


def test_bad_codec_lists_are_refused():
    with pytest.raises(ValueError, match="must include float32"):
        storage_quality.parse_codecs("float16,pq2", 32)
    with pytest.raises(ValueError, match="unknown codec"):
        storage_quality.parse_codecs("float32,int8", 32)
    with pytest.raises(ValueError, match="divisible by 16"):
        storage_quality.parse_codecs("float32,pq0.5", 24)
    with pytest.raises(ValueError, match="listed twice"):
        storage_quality.parse_codecs("float32,pq2,pq2", 32)
    assert storage_quality.parse_codecs(" float32 , pq1 ", 32) == ["float32", "pq1"]


def test_too_few_vectors_for_pq_names_the_fix(saved_tiny, tmp_path):
    folder, _ = saved_tiny
    data = write_records(tmp_path / "qa.jsonl", n=4, sentences=1)
    with pytest.raises(ValueError, match="use more --questions"):
        storage_quality.main(
            argv(folder, data, tmp_path / "r.json", **{"--questions": 1, "--shots": 1, "--codecs": "float32,pq1"})
        )
