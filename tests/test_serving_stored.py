"""Stored vectors in prompts: the same answer as on-the-fly compression, with no encoder run;
BM25 `ask`; the spliced prompt embeddings that an external engine (vLLM) receives."""

import pytest
import torch

from _serving_helpers import corpus_docs, write_corpus
from arc_encoder import Doc
from arc_encoder.model.decoder import generate_ids
from arc_encoder.model.generate import prompt_embeddings
from arc_encoder.serving.ask import ask, ask_prompt, open_retrieval, retrieve
from arc_encoder.serving.stored import stored_chunks, stored_document
from arc_encoder.serving.vllm_backend import VLLMBackend
from arc_encoder.serving.worker import DecodeParams
from arc_encoder.storage import VectorStore
from arc_encoder.storage.indexing import index_corpus


@pytest.fixture
def indexed(saved_model, tmp_path):
    _, model = saved_model
    docs = corpus_docs(8)
    index_corpus(model, write_corpus(tmp_path / "c.jsonl", docs), tmp_path / "store", progress=False)
    store = VectorStore.open(tmp_path / "store", fingerprint=model.fingerprint())
    yield model, store, dict(docs)
    store.close()


def no_encoder(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran")

    monkeypatch.setattr(model.encoder, "forward", refuse)


def test_answer_from_stored_vectors_equals_on_the_fly(indexed, monkeypatch):
    model, store, docs = indexed
    question = "\nQuestion: what is mentioned here?\nAnswer:"
    on_the_fly = {d: model.generate(["Document: ", Doc(t), question], max_new_tokens=8)[0] for d, t in docs.items()}
    assert any(len(store.chunks(d)) > 1 for d in docs)  # chunked documents are part of the check
    no_encoder(model, monkeypatch)
    for doc_id in docs:
        stored = stored_document(store, doc_id, decoder=0)
        out = model.generate(["Document: ", stored, question], max_new_tokens=8)[0]
        assert out.token_ids == on_the_fly[doc_id].token_ids
        assert out.compressed_vectors == on_the_fly[doc_id].compressed_vectors == stored.n_vectors
        assert out.prompt_length == on_the_fly[doc_id].prompt_length
    with pytest.raises(KeyError, match="nope"):
        stored_document(store, "nope", 0)
    with pytest.raises(ValueError, match="no chunk"):
        stored_chunks(store, [], 0)


def test_ask_retrieves_the_matching_chunk_and_splices_its_vectors(indexed, monkeypatch):
    model, store, docs = indexed
    index = open_retrieval(store)
    sources = retrieve(store, index, "Where is the harpsichord?", k=3)
    assert sources[0].doc_id == "doc-6" and "harpsichord" in sources[0].text
    assert [s.score for s in sources] == sorted((s.score for s in sources), reverse=True)
    no_encoder(model, monkeypatch)
    answer = ask(model, store, "Where is the harpsichord?", decoder=0, k=3, index=index, max_new_tokens=6)
    assert [s.chunk_id for s in answer.sources] == [s.chunk_id for s in sources]
    # The prompt: "Document: " + the chunks' stored vectors in rank order + the question.
    prompt = ask_prompt(store, sources, "Where is the harpsichord?", 0)
    assert prompt[0] == "Document: " and prompt[2] == "\nQuestion: Where is the harpsichord?\nAnswer:"
    chunks = prompt[1].chunks
    for c, s in zip(chunks, sources, strict=True):
        assert torch.equal(c, torch.from_numpy(store.chunk_vectors([s.chunk_id])[0]))
    expected = model.generate([prompt], max_new_tokens=6, stop=["\n"])[0]
    assert answer.generation.token_ids == expected.token_ids
    assert answer.generation.compressed_vectors == sum(c.shape[0] for c in chunks)
    # Nothing matches: closed-book prompt, no sources.
    nothing = ask(model, store, "the of and", decoder=0, index=index, max_new_tokens=4)
    assert nothing.sources == [] and nothing.generation.compressed_vectors == 0
    with pytest.raises(ValueError, match="empty"):
        ask(model, store, "  ", decoder=0, index=index)


class GreedyHFEngine:
    """Stands in for vllm.LLM: decodes {"prompt_embeds": [L, d]} greedily with the HF decoder."""

    def __init__(self, model):
        self.model = model
        self.seen = []

    def generate(self, inputs, sampling, use_tqdm=False):
        dec = self.model.decoders[0]
        tok = self.model.decoder_tokenizers[0]
        outs = []
        for item in inputs:
            embeds = item["prompt_embeds"]  # [L, d]
            self.seen.append(embeds)
            L = embeds.shape[0]
            ids = generate_ids(
                dec,
                embeds[None].float(),
                torch.ones(1, L, dtype=torch.long),
                torch.arange(L)[None],
                sampling["max_tokens"],
                {tok.eos_token_id},
                0,
            )[0]
            completion = type("Completion", (), {"text": tok.decode(ids, skip_special_tokens=True), "token_ids": ids})
            outs.append(type("Output", (), {"outputs": [completion]}))
        return outs


def test_prompt_embeddings_drive_an_external_engine_like_generate(indexed):
    model, store, docs = indexed
    prompts = [
        ["Document: ", stored_document(store, "doc-1", 0), "\nAnswer:"],
        ["Question: who?\nAnswer:"],
        ["Document: ", Doc(docs["doc-4"]), "\nAnswer:"],
    ]
    engine = GreedyHFEngine(model)
    backend = VLLMBackend(model, 0, engine=engine, sampling_params=dict, dtype="float32")
    got = backend.generate(prompts, 0, DecodeParams(max_new_tokens=6))
    expected = model.generate(prompts, max_new_tokens=6)
    for g, e, seen in zip(got, expected, engine.seen, strict=True):
        assert g.token_ids == e.token_ids
        assert g.prompt_length == e.prompt_length == seen.shape[0]
        assert (g.document_tokens, g.compressed_vectors) == (e.document_tokens, e.compressed_vectors)
    # Independent check of the splice: text embeddings, then the block (vectors + <Cont>), then text.
    embeds = prompt_embeddings(model, ["ab", stored_document(store, "doc-0", 0), "cd"])[0].embeds
    tok, embed = model.decoder_tokenizers[0], model.decoders[0].get_input_embeddings()
    head = tok("ab", add_special_tokens=True)["input_ids"]
    tail = tok("cd", add_special_tokens=False)["input_ids"]
    block = model.decoder_blocks([torch.from_numpy(v) for v in store.get("doc-0")], 0, "cont")
    expected_rows = torch.cat([embed(torch.tensor(head)), *block, embed(torch.tensor(tail))])
    torch.testing.assert_close(embeds, expected_rows)
    with pytest.raises(ValueError, match="runs decoder 0, not decoder 1"):
        backend.generate(prompts, 1, DecodeParams())
