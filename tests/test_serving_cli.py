"""CLI verbs: index (report, resume), store-info, ask, and serve's refusal without vLLM."""

import importlib.util

import pytest
from typer.testing import CliRunner

from _serving_helpers import corpus_docs, write_corpus
from arc_encoder.cli import app
from arc_encoder.storage import VectorStore

runner = CliRunner()


def test_index_store_info_and_ask(saved_model, tmp_path):
    folder, _ = saved_model
    docs = corpus_docs(8)
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    store = str(tmp_path / "store")
    r = runner.invoke(app, ["index", "--model", folder, corpus, "--store", store, "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert "added 8" in r.output and "bytes per token: vectors" in r.output and "raw UTF-8 text" in r.output
    again = runner.invoke(app, ["index", "--model", folder, corpus, "--store", store])
    assert again.exit_code == 0 and "added 0" in again.output and "skipped 8 already stored" in again.output

    info = runner.invoke(app, ["store-info", store])
    assert info.exit_code == 0, info.output
    with VectorStore.open(store) as s:
        stats = s.stats()
        assert f"{stats.n_docs} documents, {stats.n_chunks} chunks, {stats.n_vectors} vectors" in info.output
        assert f"model fingerprint {s.fingerprint}, codec float32" in info.output
    assert "chunks of 16 encoder tokens" in info.output

    ask = runner.invoke(
        app,
        ["ask", "--model", folder, "--store", store, "Where is the harpsichord?", "--k", "2", "--max-new-tokens", "4"],
    )
    assert ask.exit_code == 0, ask.output
    assert "sources (" in ask.output and "1. doc-6 chunk" in ask.output and "harpsichord" in ask.output


def test_cli_errors_are_reported_without_a_traceback(saved_model, tmp_path):
    folder, _ = saved_model
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    r = runner.invoke(app, ["index", "--model", folder, str(bad), "--store", str(tmp_path / "s")])
    assert r.exit_code == 2 and "bad.jsonl, line 1: missing field 'text'" in r.output
    r = runner.invoke(app, ["store-info", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no vector store" in r.output
    r = runner.invoke(app, ["ask", "--model", folder, "--store", str(tmp_path / "nothing"), "q"])
    assert r.exit_code == 2 and "no vector store" in r.output


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_with_vllm_backend_says_how_to_install_it(tmp_path):
    r = runner.invoke(app, ["serve", "--model", "no-model-needed", "--store", str(tmp_path / "s"), "--backend", "vllm"])
    assert r.exit_code == 2
    assert "pip install vllm" in r.output and "--backend hf" in r.output
    assert not (tmp_path / "s").exists()
