"""A decoder is selected by name or by index, alike, in the library, the CLI and the service.

The model here has two tiny decoders with their own projectors: decoder 0 the folder "llama",
decoder 1 the folder "llama-wide" (another width). Each check compares what a name selects with
what its index selects, and with what the other decoder gives, so that a name resolved to the
wrong decoder (or not resolved at all) fails.
"""

import sys

import pytest
import torch
from safetensors import safe_open

from arc_encoder import Doc
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.decoder_names import decoder_index, short_name
from arc_encoder.prompt import documents_before
from arc_encoder.serving.model_ids import check_model_id, served_ids
from arc_encoder.serving.refusals import ClientError
from conftest import build_tiny_arc

TEXT = "Paris is the capital of France and its largest city. The zebra is mentioned here."
QUESTION = "Question: what is mentioned?\nAnswer:"


@pytest.fixture(scope="module")
def two_decoders(tiny_models, tmp_path_factory):
    """(saved folder, the model loaded back): decoders [llama, llama-wide], chunks of 16 tokens."""
    folder = tmp_path_factory.mktemp("two") / "model"
    decoders = [tiny_models["llama"], tiny_models["llama-wide"]]
    build_tiny_arc(tiny_models, seed=5, decoders=decoders, chunk_tokens=16).save_pretrained(folder)
    return str(folder), ARCModel.from_pretrained(folder).eval()


# ----------------------------------------------------------------------------- the resolver


NAMES = ["smollm2-135m", "/models/gemma-3-270m-it", "meta-llama/Llama-3.1-8B"]


@pytest.mark.parametrize(
    "decoder, index",
    [
        (0, 0),
        (2, 2),
        ("1", 1),  # a command line's index
        ("smollm2-135m", 0),  # the config's entry
        ("smollm2", 0),  # an alias of that registry name (model/registry.py)
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 0),  # another alias
        ("/models/gemma-3-270m-it", 1),
        ("gemma-3-270m-it", 1),  # a folder's last part
        ("Llama-3.1-8B", 2),  # a hub name's last part
        ("meta-llama/Llama-3.1-8B", 2),
    ],
)
def test_a_decoder_is_found_by_index_or_name(decoder, index):
    assert decoder_index(NAMES, decoder) == index


@pytest.mark.parametrize(
    "decoder, message",
    [
        (3, "decoder index 3 does not exist; this model has 0: smollm2-135m, 1: /models/gemma-3-270m-it, 2: "),
        (-1, "decoder index -1 does not exist"),
        ("gemma3-270m", "decoder 'gemma3-270m' does not exist; this model has 0: smollm2-135m"),
        ("", "decoder '' does not exist"),
        (True, "a decoder is an index or a name, got True"),
        (None, "a decoder is an index or a name, got None"),
    ],
)
def test_an_unknown_decoder_is_refused_naming_those_that_exist(decoder, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        decoder_index(NAMES, decoder)


def test_a_name_two_decoders_answer_to_is_refused_as_ambiguous():
    with pytest.raises(ValueError, match=r"'llama' is ambiguous: it names decoders \[0, 1\]"):
        decoder_index(["/a/llama", "/b/llama"], "llama")
    assert decoder_index(["/a/llama", "/b/llama"], "/b/llama") == 1  # the full entry still selects


def test_short_names_are_what_the_resolver_accepts():
    shorts = [short_name(n) for n in NAMES + ["google/gemma-3-270m"]]
    assert shorts == ["smollm2-135m", "gemma-3-270m-it", "Llama-3.1-8B", "gemma3-270m"]
    assert [decoder_index(NAMES, s) for s in shorts[:3]] == [0, 1, 2]


# ----------------------------------------------------------------------------- the library


def test_name_and_index_compress_and_generate_alike(two_decoders):
    _, model = two_decoders
    assert model.decoder_index("llama-wide") == 1 and model.decoder_index("llama") == 0
    by_name = model.compress([TEXT], decoder="llama-wide")[0]
    by_index = model.compress([TEXT], decoder=1)[0]
    other = model.compress([TEXT], decoder=0)[0]
    assert by_name.decoder == by_index.decoder == 1
    for a, b, c in zip(by_name.chunks, by_index.chunks, other.chunks, strict=True):
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)  # the projectors differ: a wrong decoder would show
    prompt = [by_index, QUESTION]
    named = model.generate([prompt], decoder="llama-wide", max_new_tokens=6)[0]
    indexed = model.generate([prompt], decoder=1, max_new_tokens=6)[0]
    assert named.token_ids == indexed.token_ids and named.prompt_length == indexed.prompt_length


def test_unknown_decoder_names_are_refused_everywhere(two_decoders, tmp_path):
    from arc_encoder.storage.indexing import open_store

    _, model = two_decoders
    expected = r"decoder 'gemma3-270m' does not exist; this model has 0: .*llama, 1: .*llama-wide"
    with pytest.raises(ValueError, match=expected):
        model.compress([TEXT], decoder="gemma3-270m")
    with pytest.raises(ValueError, match=expected):
        model.generate([[QUESTION]], decoder="gemma3-270m")
    with pytest.raises(ValueError, match=expected):
        open_store(tmp_path / "store", model, "gemma3-270m")


def test_a_store_answers_to_its_decoders_name_and_refuses_the_other(two_decoders, tmp_path):
    from arc_encoder.storage.indexing import open_store

    _, model = two_decoders
    store, settings = open_store(tmp_path / "store", model, "llama-wide")
    store.close()
    assert (settings.decoder, short_name(settings.decoder_name)) == (1, "llama-wide")
    store, _ = open_store(tmp_path / "store", model, 1)  # the same decoder by index
    store.close()
    with pytest.raises(ValueError, match=r"holds vectors for decoder 1 \(.*llama-wide\), not decoder 0 \(.*llama\)"):
        open_store(tmp_path / "store", model, "llama")


# ----------------------------------------------------------------------------- the CLI


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from arc_encoder.cli import _options, main

    monkeypatch.setattr(sys, "argv", ["arc-encoder", *args])
    monkeypatch.setitem(_options, "debug", False)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_compress_takes_a_decoder_name(two_decoders, tmp_path, monkeypatch, capsys):
    folder, model = two_decoders
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(
        monkeypatch, capsys, "compress", TEXT, "--model", folder, "--out", str(out), "--decoder", "llama-wide"
    )
    assert code == 0, err
    expected = model.compress([TEXT], decoder=1)[0]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert meta["decoder"] == "1" and short_name(meta["decoder_name"]) == "llama-wide"
        for i, chunk in enumerate(expected.chunks):
            torch.testing.assert_close(f.get_tensor(f"chunk_{i}"), chunk)
    code, _, err = run_cli(
        monkeypatch, capsys, "compress", TEXT, "--model", folder, "--out", str(out), "--decoder", "gemma3"
    )
    assert code == 2 and "decoder 'gemma3' does not exist; this model has 0: " in err


def test_cli_index_and_ask_take_a_decoder_name(two_decoders, tmp_path, monkeypatch, capsys):
    from _serving_helpers import corpus_docs, write_corpus
    from arc_encoder.storage.indexing import IndexSettings

    folder, _ = two_decoders
    corpus = write_corpus(tmp_path / "corpus.jsonl", corpus_docs(3))
    store = str(tmp_path / "store")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "index",
        corpus,
        "--model",
        folder,
        "--store",
        store,
        "--decoder",
        "llama-wide",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert IndexSettings.load(tmp_path / "store").decoder == 1
    ask = ["ask", "what is mentioned?", "--model", folder, "--store", store, "--device", "cpu", "--max-new-tokens", "2"]
    code, out, err = run_cli(monkeypatch, capsys, *ask, "--decoder", "llama-wide")
    assert code == 0 and "sources" in out, err
    code, _, err = run_cli(monkeypatch, capsys, *ask, "--decoder", "llama")
    assert code == 2 and "holds vectors for decoder 1" in err and "not decoder 0" in err


def test_cli_eval_takes_a_decoder_name(two_decoders, tmp_path, monkeypatch, capsys):
    import json

    from test_eval_runner import write_fixture

    folder, _ = two_decoders
    data = write_fixture(tmp_path / "tiny.jsonl", n=4)
    args = ["eval", "--model", folder, "--task", "squad", "--data", data, "--methods", "arc", "--shots", "1"]
    args += ["--limit", "2", "--max-new-tokens", "3", "--no-progress"]
    runs = {}
    for decoder in ("llama-wide", "1", "0"):
        out = tmp_path / f"{decoder}.json"
        code, _, err = run_cli(monkeypatch, capsys, *args, "--decoder", decoder, "--out", str(out))
        assert code == 0, err
        runs[decoder] = json.loads(out.read_text())["runs"][0]
    assert runs["llama-wide"]["config"]["decoder"] == 1
    assert short_name(runs["llama-wide"]["config"]["decoder_name"]) == "llama-wide"
    raw = {d: [p["raw"] for p in run["predictions"]["arc"]] for d, run in runs.items()}
    assert raw["llama-wide"] == raw["1"] and raw["1"] != raw["0"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--decoder", "gemma3")
    assert code == 2 and "decoder 'gemma3' does not exist" in " ".join(err.replace("│", " ").split())


# ----------------------------------------------------------------------------- the service


def test_service_model_ids_name_the_served_decoder(two_decoders, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from arc_encoder.serving.app import create_app

    _, model = two_decoders
    app = create_app(model, tmp_path / "store", decoder="llama-wide", model_name="tiny")
    with TestClient(app) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["tiny", "tiny:llama-wide"]
        r = client.post("/v1/compress", json={"texts": [TEXT]})
        assert (r.json()["decoder"], short_name(r.json()["decoder_name"])) == (1, "llama-wide")

        def complete(model_id: str):
            body = {"model": model_id, "prompt": QUESTION, "documents": [TEXT], "max_tokens": 6, "temperature": 0}
            return client.post("/v1/completions", json=body)

        # what the library answers with the document compressed for each decoder
        prompt = documents_before([Doc(TEXT)], QUESTION)  # the layout of /v1/completions
        wide, narrow = (model.generate(prompt, decoder=d, max_new_tokens=6)[0] for d in (1, 0))
        assert wide.token_ids != narrow.token_ids  # the two decoders answer differently here
        for model_id in ("tiny", "tiny:llama-wide", "tiny:1"):
            r = complete(model_id)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == wide.text and r.json()["model"] == model_id
        r = complete("tiny:llama")  # a decoder of this model, but not the one its store feeds
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "names decoder llama of this model, which this server does not serve" in r.json()["error"]["message"]
        assert "--decoder llama" in r.json()["error"]["message"]
        for unknown in ("tiny:gemma3-270m", "other:llama-wide", "llama-wide"):
            r = complete(unknown)
            assert r.status_code == 404 and r.json()["error"]["param"] == "model", unknown
            assert "does not exist; this server has 'tiny', 'tiny:llama-wide'" in r.json()["error"]["message"]
        assert client.get("/v1/models/tiny:llama-wide").status_code == 200
        assert client.get("/v1/models/tiny:llama").status_code == 404


def test_service_refuses_a_decoder_its_store_was_not_built_for(two_decoders, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from arc_encoder.serving.app import create_app

    _, model = two_decoders
    with TestClient(create_app(model, tmp_path / "store", decoder="llama-wide")):
        pass  # the store is now built for decoder 1
    with pytest.raises(ValueError, match=r"holds vectors for decoder 1 .*not decoder 0"):
        with TestClient(create_app(model, tmp_path / "store", decoder="llama")):
            pass
    with TestClient(create_app(model, tmp_path / "store")) as client:  # no decoder: the store's
        assert client.get("/health").json()["decoder"] == 1


def test_model_ids_without_a_server(two_decoders):
    _, model = two_decoders
    assert served_ids("m", model.config.decoders[0]) == ["m", "m:llama"]
    check_model_id(model, "m", 0, "m:llama")
    check_model_id(model, "m", 0, "m:0")
    with pytest.raises(ClientError, match="does not serve"):
        check_model_id(model, "m", 0, "m:llama-wide")
