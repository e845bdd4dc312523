"""`--device` and `--dtype` of eval / serve / ask: names checked before anything loads, a GPU that
is not there refused by name, a bf16 model serving a store built in float32, LLMLingua placed
where the evaluated model is."""

from __future__ import annotations

import json
import types

import pytest
import torch
from typer.testing import CliRunner

from _serving_helpers import corpus_docs, write_corpus
from arc_encoder.cli import app
from arc_encoder.devices import cast_weights, resolve_device, resolve_dtype
from test_eval_runner import write_fixture

runner = CliRunner()
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="refusals of a missing GPU need a machine without one")


def fake_gpus(monkeypatch, count: int, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_device_names(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device '{asked}' was asked for, but torch sees no CUDA device"):
            resolve_device(asked)
    for bad in ("gpu", "cuda:x", "cuda:", "mps0"):
        with pytest.raises(ValueError, match=f"unknown device '{bad}': use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"torch sees 2 CUDA device\(s\): cuda:0..1"):
        resolve_device("cuda:2")


def test_dtype_names(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32  # a CPU computes float32 faster
    for name, dtype in (("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16), ("fp32", torch.float32)):
        assert resolve_dtype(name, cpu) == dtype
    assert resolve_dtype("float16", gpu) == torch.float16
    with pytest.raises(ValueError, match=r"unknown dtype 'int8': use auto, float32 \(fp32\), bfloat16 \(bf16\)"):
        resolve_dtype("int8", cpu)
    fake_gpus(monkeypatch, 1, bf16=True)
    assert resolve_dtype("auto", gpu) == torch.bfloat16
    fake_gpus(monkeypatch, 1, bf16=False)  # e.g. a V100: no native bf16
    assert resolve_dtype("auto", gpu) == torch.float32


@NO_GPU
def test_eval_refuses_a_missing_gpu_and_bad_names_before_loading(tmp_path):
    absent = str(tmp_path / "absent.jsonl")  # checked after the device: its error must not show
    base = ["eval", "--model", str(tmp_path / "no-model"), "--task", "squad", "--data", absent]
    for extra, message in (
        (["--device", "cuda"], "device 'cuda' was asked for, but torch sees no CUDA device"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--dtype", "half-ish"], "unknown dtype 'half-ish'"),
    ):
        r = runner.invoke(app, [*base, *extra], env={"COLUMNS": "300"})
        text = " ".join(r.output.replace("│", " ").split())
        assert r.exit_code == 2, r.output
        assert message in text and "absent.jsonl" not in text, text


@NO_GPU
def test_serve_and_ask_refuse_a_missing_gpu_before_loading(tmp_path):
    store = tmp_path / "store"
    for args, message in (
        (["serve", "--store", str(store), "--device", "cuda"], "torch sees no CUDA device"),
        (["serve", "--store", str(store), "--dtype", "int4"], "unknown dtype 'int4'"),
        (["serve", "--store", str(store), "--device", "cuda:1", "--backend", "vllm"], "torch sees no CUDA device"),
        (["ask", "--store", str(store), "--device", "cuda", "q"], "torch sees no CUDA device"),
        (["index", str(tmp_path / "c.jsonl"), "--store", str(store), "--device", "tpu"], "unknown device 'tpu'"),
    ):
        if args[0] == "index":
            write_corpus(tmp_path / "c.jsonl", corpus_docs(2))
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
        assert not store.exists()


def test_eval_in_bf16_on_cpu_records_it_and_keeps_the_fingerprint(saved_model, tmp_path):
    folder, _ = saved_model
    data = write_fixture(tmp_path / "tiny.jsonl", n=5)
    outs = {}
    for dtype in ("float32", "bf16"):
        out = tmp_path / f"{dtype}.json"
        args = ["eval", "--model", folder, "--task", "squad", "--data", str(data), "--methods", "arc", "--shots", "1"]
        args += ["--limit", "2", "--max-new-tokens", "2", "--no-progress", "--device", "cpu", "--dtype", dtype]
        r = runner.invoke(app, [*args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs[dtype] = json.loads(out.read_text())["runs"][0]["config"]
    assert outs["float32"]["dtype"] == "float32" and outs["bf16"]["dtype"] == "bfloat16"
    assert outs["bf16"]["device"] == "cpu"
    assert outs["bf16"]["fingerprint"] == outs["float32"]["fingerprint"]


def test_a_bf16_model_answers_from_a_store_built_in_float32(saved_model, tmp_path):
    folder, _ = saved_model
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_docs(8))
    store = str(tmp_path / "store")
    r = runner.invoke(app, ["index", "--model", folder, corpus, "--store", store, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    question = "Where is the harpsichord?"
    r = runner.invoke(
        app, ["ask", "--model", folder, "--store", store, question, "--max-new-tokens", "3", "--dtype", "bf16"]
    )
    assert r.exit_code == 0, r.output
    assert "sources (" in r.output


def test_to_dtype_pins_the_fingerprint_a_plain_cast_changes(saved_model):
    _, model = saved_model
    before = model.fingerprint()
    assert cast_weights(type(model).from_pretrained(saved_model[0]), torch.bfloat16).fingerprint() != before
    assert model.to_dtype(torch.bfloat16).fingerprint() == before
    assert model.dtype == torch.bfloat16


def test_llmlingua_scorer_follows_the_models_device(tiny_models, monkeypatch):
    pytest.importorskip("llmlingua")
    from llmlingua import PromptCompressor

    from arc_encoder.evaluation.methods import LLMLingua

    placed = []

    def load_model(self, model_name, device_map="cuda", model_config=None):
        placed.append(device_map)
        self.device = device_map

    monkeypatch.setattr(PromptCompressor, "load_model", load_model)
    tokenizer = object()
    for device in (torch.device("cuda", 1), torch.device("cpu")):
        model = types.SimpleNamespace(device=device, decoder_tokenizers=[tokenizer])
        method = LLMLingua(model, 0, [], 0.5, scorer=tiny_models["llama"])
        assert method.describe()["device"] == str(device)
    assert placed == ["cuda:1", "cpu"]
