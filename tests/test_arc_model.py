"""ARCModel end to end on tiny random models: training signal, batching, generation, saving."""

import json
import re

import pytest
import torch

from arc_encoder import ARCConfig, ARCModel, Doc
from arc_encoder.model.decoder import common_prefix_length, with_cache
from arc_encoder.model.prompting import build_prompts, splice_prompts
from arc_encoder.model.saved import load_state
from arc_encoder.model.splice import Sample, splice
from arc_encoder.model.weights import read_weights
from conftest import FAMILIES


def tokens(model, text):
    return (
        model.decoder_tokenizers[0](text)["input_ids"],
        model.encoder_tokenizer(text, add_special_tokens=False)["input_ids"],
    )


def reconstruction_sample(model, text):
    dec, enc = tokens(model, text)
    return Sample(dec, [enc], [0], [True] * len(dec))


TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France and its largest city.",
    "Numbers like 1887 appear in history texts.",
]


def test_optimizer_step_updates_only_trainable_parts(tiny_arc):
    model = tiny_arc()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.trained_parameters().values(), lr=1e-2)
    loss, n = model([reconstruction_sample(model, t) for t in TEXTS], special="rec")
    (loss / n).backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith("decoders."):
            assert torch.equal(before[k], after[k]), f"frozen decoder weight {k} changed"
    assert not torch.equal(
        before["encoder.layers.0.self_attn.q_proj.weight"], after["encoder.layers.0.self_attn.q_proj.weight"]
    )
    assert not torch.equal(before["adapters.0.down.weight"], after["adapters.0.down.weight"])
    assert not torch.equal(before["adapters.0.rec"], after["adapters.0.rec"])
    assert torch.equal(before["adapters.0.cont"], after["adapters.0.cont"])
    assert all(not p.requires_grad for p in model.decoders.parameters())


def test_batched_loss_equals_per_sample(tiny_arc):
    model = tiny_arc().eval()
    samples = [reconstruction_sample(model, t) for t in TEXTS]
    total, count = model(samples, special="rec")
    parts = [model([s], special="rec") for s in samples]
    torch.testing.assert_close(total, sum(p[0] for p in parts), atol=1e-4, rtol=1e-5)
    assert count == sum(p[1] for p in parts)


def test_batched_compress_equals_single(tiny_arc):
    model = tiny_arc().eval()
    together = model.compress(TEXTS, batch_size=8)
    for text, c in zip(TEXTS, together):
        alone = model.compress([text])[0]
        torch.testing.assert_close(c.chunks[0], alone.chunks[0], atol=1e-5, rtol=1e-5)
        assert c.n_vectors == -(-len(tokens(model, text)[1]) // 2)


def test_generate_with_cache_equals_recompute_loop(tiny_arc):
    model = tiny_arc(seed=3).eval()
    prompt = ["Document: ", Doc(TEXTS[0]), "\nQuestion: who?\nAnswer:"]
    out = model.generate([prompt], max_new_tokens=10)[0]
    # Reference: greedy decoding that re-runs the whole spliced sequence every step, no cache.
    text_ids, blocks, offsets, _ = build_prompts(model, [prompt], 0)
    dec = model.decoders[0]
    ids = list(text_ids[0])
    eos = model.decoder_tokenizers[0].eos_token_id
    generated = []
    with torch.no_grad():
        for _ in range(10):
            batch = splice([dec.get_input_embeddings()(torch.tensor(ids))], blocks, offsets)
            logits = dec(inputs_embeds=batch.embeds, position_ids=batch.position_ids).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == eos:
                break
            generated.append(nxt)
            ids.append(nxt)
    assert out.token_ids == generated
    assert len(generated) > 0


def test_batched_generate_equals_single(tiny_arc):
    model = tiny_arc(seed=4).eval()
    prompts = [
        ["Document: ", Doc(TEXTS[0]), "\nAnswer:"],
        ["Question: where?\nAnswer:"],
        ["Document: ", Doc(TEXTS[1]), " and ", Doc(TEXTS[2]), "\nAnswer:"],
    ]
    together = model.generate(prompts, max_new_tokens=6)
    for p, t in zip(prompts, together):
        assert model.generate([p], max_new_tokens=6)[0].token_ids == t.token_ids


SHOTS = [
    "Document: ",
    Doc(TEXTS[0]),
    "\nQuestion: what jumps?\nAnswer: the fox\n\n",
    "Document: ",
    Doc(TEXTS[1]),
    "\nQuestion: capital of France?\nAnswer: Paris\n\n",
]


def test_common_prefix_length_by_hand():
    rows = [
        torch.tensor([[1.0], [2.0], [3.0], [4.0]]),
        torch.tensor([[1.0], [2.0], [5.0]]),
        torch.tensor([[1.0], [2.0], [3.0], [9.0], [9.0]]),
    ]
    assert common_prefix_length(rows) == 2
    # identical rows still leave one position each to run with the batch
    assert common_prefix_length([rows[0], rows[0].clone()]) == 3


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: sliding layers, never split
def test_shared_prefix_generate_equals_whole_prompts(tiny_models, family):
    model = ARCModel.from_config(
        ARCConfig(
            backbone=tiny_models[family],
            drop_layers=1,
            bottleneck=32,
            decoders=[tiny_models[family]],
            pooling_factors=[2],
        )
    ).eval()
    questions = [
        ["Document: ", Doc(TEXTS[2]), "\nQuestion: which number?\nAnswer:"],
        ["Question: who?\nAnswer:"],
        ["Document: ", Doc(TEXTS[0][:20]), "\nAnswer:"],
    ]
    prompts = [SHOTS + q for q in questions]
    whole = model.generate(prompts, max_new_tokens=8, share_prefix=False)
    assert model._prefix_memo.entry is None
    shared = model.generate(prompts, max_new_tokens=8)
    assert [g.token_ids for g in shared] == [g.token_ids for g in whole]
    assert [g.prompt_length for g in shared] == [g.prompt_length for g in whole]
    if family == "gemma3":
        assert model._prefix_memo.entry is None
        return
    # the next-token logits agree with the whole prompts' to float precision, not just the argmax
    batch, _ = splice_prompts(model, prompts, 0)
    dec = model.decoders[0]
    with torch.no_grad():
        full = dec(
            inputs_embeds=batch.embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits[:, -1]
        embeds, mask, positions, cache = model._prefix_memo.split(dec, 0, batch)
        split = dec(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **with_cache(dec, cache)
        ).logits[:, -1]
    assert embeds.shape[1] < batch.embeds.shape[1]
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-4)
    memo = model._prefix_memo.entry
    # the shots, their documents' vectors and "Document: " of the final question are shared
    assert memo is not None and memo[1].shape[0] > 30
    # a later batch of one reuses the memo, and still answers as the whole prompt does
    alone = model.generate([SHOTS + questions[0]], max_new_tokens=8)[0]
    assert model._prefix_memo.entry is memo
    assert alone.token_ids == whole[0].token_ids


def test_shared_prefix_memo_shrinks_to_what_batches_share(tiny_arc):
    model = tiny_arc(seed=7).eval()

    def about(text, *questions):
        return [SHOTS + ["Document: ", Doc(text), f"\nQuestion: {q}\nAnswer:"] for q in questions]

    first, second, third = about(TEXTS[2], "why?", "when?"), about(TEXTS[1], "who?", "how?"), about(TEXTS[0], "what?")
    model.generate(first, max_new_tokens=4)  # memo: shots + the paragraph both questions ask about
    got = model.generate(second, max_new_tokens=6)  # shares its own paragraph, not the first's
    memo = model._prefix_memo.entry
    batch, _ = splice_prompts(model, first + second + third, 0)
    rows = [batch.embeds[i][batch.attention_mask[i].bool()] for i in range(5)]
    assert memo[1].shape[0] == common_prefix_length(rows)  # the shots and "Document: ", no paragraph
    got += model.generate(third, max_new_tokens=6)
    assert model._prefix_memo.entry is memo  # the shrunk memo serves the next batch
    whole = model.generate(second + third, max_new_tokens=6, share_prefix=False)
    assert [g.token_ids for g in got] == [g.token_ids for g in whole]


def test_stored_vectors_give_the_same_answer(tiny_arc):
    model = tiny_arc(seed=5).eval()
    compressed = model.compress([TEXTS[1]])[0]
    a = model.generate(["Document: ", Doc(TEXTS[1]), "\nAnswer:"], max_new_tokens=6)[0]
    b = model.generate(["Document: ", compressed, "\nAnswer:"], max_new_tokens=6)[0]
    assert a.token_ids == b.token_ids
    assert a.compression_ratio == pytest.approx(compressed.document_tokens / compressed.n_vectors)


def test_sampling_is_seeded_and_stop_strings_cut(tiny_arc):
    model = tiny_arc(seed=6).eval()
    p = ["Question: who?\nAnswer:"]
    a = model.generate(p, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1)[0]
    b = model.generate(p, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1)[0]
    assert a.token_ids == b.token_ids
    full = model.generate(p, max_new_tokens=12)[0].text
    if len(full) > 3:
        stop = full[2:4]
        cut = model.generate(p, max_new_tokens=12, stop=[stop])[0].text
        assert stop not in cut and full.startswith(cut)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_forward_backward_generate(tiny_models, family):
    torch.manual_seed(0)
    model = ARCModel.from_config(
        ARCConfig(
            backbone=tiny_models[family],
            drop_layers=1,
            decoders=[tiny_models[family]],
            bottleneck=16,
            pooling_factors=[2],
        )
    )
    loss, n = model([reconstruction_sample(model, t) for t in TEXTS], special="rec")
    assert torch.isfinite(loss) and n > 0
    (loss / n).backward()
    assert model.encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    out = model.generate(["Document: ", Doc(TEXTS[0]), "\nAnswer:"], max_new_tokens=4)
    assert len(out) == 1


def test_two_decoders_of_different_widths(tiny_models):
    model = ARCModel.from_config(
        ARCConfig(
            backbone=tiny_models["llama"],
            drop_layers=1,
            decoders=[tiny_models["llama"], tiny_models["llama-wide"]],
            bottleneck=16,
        )
    )
    assert model.adapters[1].up.weight.shape == (96, 16)
    out = model.generate(["Document: ", Doc(TEXTS[0]), "\nAnswer:"], decoder=1, max_new_tokens=3)
    assert len(out) == 1
    c = model.compress([TEXTS[0]], decoder=0)[0]
    with pytest.raises(ValueError, match="decoder 0 cannot feed decoder 1"):
        model.generate(["x", c], decoder=1)


def test_save_load_bit_exact(tiny_arc, tmp_path):
    model = tiny_arc(seed=7, pooling="last", causal=True).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = ARCModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    loaded.decoders.read_all()  # read on first use otherwise (model/deferred.py)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a, b = model.compress(TEXTS), loaded.compress(TEXTS)
    for x, y in zip(a, b):
        assert torch.equal(x.chunks[0], y.chunks[0])
    assert model.fingerprint() == loaded.fingerprint()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda meta: "{not json", "Expecting property name"),
        (lambda meta: [1, 2], "expected a JSON object, got list"),
        (lambda meta: {k: v for k, v in meta.items() if k != "config"}, "'config' is missing"),
        (lambda meta: {**meta, "config": {**meta["config"], "bottleneck": "32"}}, "config.bottleneck"),
        (lambda meta: {**meta, "config": {**meta["config"], "poolin": "mean"}}, "unknown key(s) ['poolin']"),
        (lambda meta: {**meta, "format_version": 99}, "unsupported format_version 99"),
    ],
)
def test_a_corrupt_model_config_is_named(tiny_arc, tmp_path, edit, message):
    tiny_arc().save_pretrained(tmp_path / "m")
    file = tmp_path / "m" / "arc_config.json"
    edited = edit(json.loads(file.read_text()))
    file.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match=re.escape(str(file)) + ": .*" + re.escape(message)):
        ARCModel.from_pretrained(tmp_path / "m")


def test_mismatched_checkpoint_refused(tiny_arc, tiny_models, tmp_path):
    tiny_arc(bottleneck=32).save_pretrained(tmp_path / "a")
    other = tiny_arc(bottleneck=16)
    with pytest.raises(ValueError, match="shape mismatch.*adapters.0.down.weight"):
        load_state(other, read_weights(tmp_path / "a" / "model.safetensors"), "checkpoint")
    replaced = ARCModel.from_pretrained(tmp_path / "a", decoders=[tiny_models["llama-wide"]])
    with pytest.raises(ValueError, match="width"):  # when the decoder is read (model/deferred.py)
        replaced.decoders[0]
    (tmp_path / "a" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read weights"):
        ARCModel.from_pretrained(tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        ARCModel.from_pretrained(tmp_path / "nothing")


def test_bad_input_is_named(tiny_arc):
    model = tiny_arc()
    with pytest.raises(ValueError, match="empty"):
        model.compress(["   "])
    with pytest.raises(TypeError, match="str"):
        model.compress([3])
    with pytest.raises(ValueError, match="decoder index 2 does not exist"):
        model.compress(["text"], decoder=2)
    with pytest.raises(TypeError, match="prompt parts"):
        model.generate([["text", 5]])
    with pytest.raises(ValueError, match="chunk_tokens=600 exceeds the encoder's 512 positions"):
        tiny_arc(chunk_tokens=600).compress(["word " * 600])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pooling_factor'\] in the top level \(ARCConfig\)"):
        ARCConfig.from_dict({"pooling_factor": 4})
    with pytest.raises(ValueError, match="pooling"):
        ARCConfig(pooling="max")


def test_long_documents_are_chunked_never_dropped(tiny_arc):
    model = tiny_arc(chunk_tokens=16, max_chunks=10)
    text = " ".join(TEXTS * 2)
    whole = model.encoder_tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = model.chunks_of(text)
    assert [i for ch in chunks for i in ch.encoder_ids] == whole  # every token once, in order
    assert all(1 <= len(ch.encoder_ids) <= 16 for ch in chunks)
    assert "".join(text[ch.start : ch.end] for ch in chunks) == text
    # cut at word boundaries: every chunk after the first starts a word, none ends inside one
    assert all(" " in text[ch.start - 1 : ch.start + 1] for ch in chunks[1:])
    c = model.compress([text])[0]
    assert [x.shape[0] for x in c.chunks] == [-(-len(ch.encoder_ids) // 2) for ch in chunks]
    with pytest.raises(ValueError, match="max_chunks"):
        model.compress([text * 3])


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # mean pooling x2
        {"pooling_factors": [2, 3]},  # two pooling blocks: ceil(ceil(n/2)/3)
        {"pooling": "memory", "memory_tokens": 3, "pooling_factors": []},
        {"special_tokens": False},
    ],
)
def test_prompt_positions_are_counted_before_compressing(tiny_arc, overrides):
    """prompt_positions (token counts only) against the positions the spliced prompt really takes
    (Generation.prompt_length), for text, documents of several chunks and stored vectors."""
    from arc_encoder.model.prompting import prompt_positions

    model = tiny_arc(chunk_tokens=16, **overrides).eval()
    long_text = " ".join(TEXTS)
    stored = model.compress([TEXTS[1]])[0]
    prompts = [
        ["Document: ", Doc(long_text), "\nQuestion: what?\nAnswer:"],
        [Doc(TEXTS[0]), stored, "Answer:"],
        ["Question: who?\nAnswer:"],
        [stored],
    ]
    assert len(model.chunks_of(long_text)) > 2
    for prompt in prompts:
        assert prompt_positions(model, prompt, 0) == model.generate([prompt], max_new_tokens=1)[0].prompt_length
    # by hand, x2 pooling with a special token per chunk: chunks of n tokens take ceil(n/2) + 1
    if not overrides:
        lengths = [len(c.encoder_ids) for c in model.chunks_of(long_text)]
        assert prompt_positions(model, [Doc(long_text)], 0) == sum(-(-n // 2) + 1 for n in lengths)


def test_a_prompt_too_long_is_refused_before_the_encoder_runs(tiny_arc, monkeypatch):
    model = tiny_arc(chunk_tokens=16, max_chunks=256).eval()  # the tiny decoder has 512 positions
    calls = []
    encode = model.encode_segments
    monkeypatch.setattr(model, "encode_segments", lambda *a, **k: calls.append(1) or encode(*a, **k))
    long_text = " ".join(TEXTS * 40)  # chunks of 16 tokens take 9 positions each at x2
    assert len(model.chunks_of(long_text)) * 9 > 512
    with pytest.raises(ValueError, match="more than decoder 0's 512"):
        model.generate([["Document: ", Doc(long_text), "Answer:"]], max_new_tokens=4)
    assert calls == []  # refused from the token counts
    model.generate([["Document: ", Doc(TEXTS[0]), "Answer:"]], max_new_tokens=1)
    assert calls  # the counter does see the encoder


def test_nothing_runs_past_the_decoders_positions(tiny_arc):
    model = tiny_arc(chunk_tokens=64).eval()  # the tiny decoder has 512 positions
    question = "\nQuestion: what is it?\nAnswer:"
    prompt_length = model.generate([["Document: ", Doc(TEXTS[0]), question]], max_new_tokens=1)[0].prompt_length
    message = rf"takes {prompt_length} decoder positions \+ 600 new tokens, more than .*512"
    with pytest.raises(ValueError, match=message):
        model.generate([["Document: ", Doc(TEXTS[0]), question]], max_new_tokens=600)
    with pytest.raises(ValueError, match="more than decoder 0's 512"):
        model.generate(["word " * 520], max_new_tokens=1)
    long = Sample(text_ids=[5] * 600, segments=[], offsets=[], targets=[True] * 600)
    with pytest.raises(ValueError, match="takes 600 decoder positions, more than decoder 0's 512"):
        model([long])
