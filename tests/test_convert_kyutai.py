"""Importing / exporting the official Kyutai ARC-Encoder checkpoints.

No released checkpoint can be downloaded here, so the official encoder is re-stated below from the
spec (2.1-2.5, 3, 10.3), independently of the library: Meta-style blocks with the official tensor
names, interleaved-pair complex RoPE, fp32 RMSNorm, GQA, bidirectional attention, the pooled
block, `<Cont>` and the bridge MLP. Random weights are written in the official layouts, converted,
and the library's output (what the decoder would read) must match the reference.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.convert.kyutai import (
    export_kyutai,
    half_to_interleaved,
    import_kyutai,
    interleaved_to_half,
    pooling_from_official,
    unscaled_rope_view,
)
from arc_encoder.model.arc import ARCModel

# Tiny official configuration: 4 backbone layers, the last one truncated -> 3 encoder blocks.
MODEL_ARGS = dict(
    dim=64,
    n_layers=4,
    head_dim=16,
    hidden_dim=192,
    n_heads=4,
    n_kv_heads=2,
    norm_eps=1e-5,
    vocab_size=384,
    rope_theta=500000.0,
)
# Meta's original params.json form of the same backbone: hidden_dim = 32*ceil(int(8*64/3)/32) = 192
META_PARAMS = dict(
    dim=64,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=384,
    multiple_of=32,
    ffn_dim_multiplier=1.0,
    norm_eps=1e-5,
    rope_theta=500000.0,
    use_scaled_rope=True,
)
N_TRUNCATED = 1
BOTTLENECK = 24
DECODER_DIM = 64  # the tiny llama / mistral decoders of conftest
LENGTHS = [3, 8, 10, 13]  # shorter than the factor, divisible, not divisible


# ------------------------------------------------------------------------ reference (method.md §2, §3)
def rms_norm(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rope_interleaved(x, positions, theta):
    """x [T, H, hd]: dims (2k, 2k+1) are one complex number rotated by pos * theta^(-2k/hd)."""
    hd = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # [hd/2]
    angles = positions.double()[:, None] * freqs[None]  # [T, hd/2]
    rotation = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2))
    return torch.view_as_real(xc * rotation[:, None, :]).flatten(-2)


def official_block(w, i, queries, keys_in, q_pos, k_pos, a):
    """One Meta block whose rows `queries` attend every row of `keys_in` (no mask)."""
    p = f"layers.{i}."
    H, KV, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
    xq = rms_norm(queries, w[p + "attention_norm.weight"], a["norm_eps"])
    xk = rms_norm(keys_in, w[p + "attention_norm.weight"], a["norm_eps"])
    q = rope_interleaved((xq @ w[p + "attention.wq.weight"].T).view(-1, H, hd), q_pos, a["rope_theta"])
    k = rope_interleaved((xk @ w[p + "attention.wk.weight"].T).view(-1, KV, hd), k_pos, a["rope_theta"])
    v = (xk @ w[p + "attention.wv.weight"].T).view(-1, KV, hd)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(len(queries), H * hd)
    h = queries + out @ w[p + "attention.wo.weight"].T
    y = rms_norm(h, w[p + "ffn_norm.weight"], a["norm_eps"])
    ffn = (
        torch.nn.functional.silu(y @ w[p + "feed_forward.w1.weight"].T) * (y @ w[p + "feed_forward.w3.weight"].T)
    ) @ w[p + "feed_forward.w2.weight"].T
    return h + ffn


def split_groups(n, rate):
    """Spec 2.4 for a negative rate: group sizes, remainder spread over the front groups."""
    p = -rate
    if n // p == 0:
        return [n]
    if n % p == 0:
        return [p] * (n // p)
    g = n // p + 1
    sizes = [n // g] * g
    for j in range(n % g):
        sizes[j] += 1
    return sizes


def official_forward(w, a, rates, pool, ids, cont, layer1, layer2):
    """Token ids of one segment -> the decoder-space vectors the decoder reads, [m + 1, d_dec]."""
    kept = a["n_layers"] - N_TRUNCATED
    h = w["tok_embeddings.weight"].float()[torch.tensor(ids)]
    first_pooled = kept - len(rates)
    for i in range(kept):
        n = h.shape[0]
        rate = rates[i - first_pooled] if i >= first_pooled else -1
        if rate == -1:
            h = official_block(w, i, h, h, torch.arange(n), torch.arange(n), a)
            continue
        groups, start = [], 0
        for size in split_groups(n, rate):
            member = h[start : start + size]
            groups.append(member.mean(0) if pool == "mean" else member[-1])
            start += size
        pooled = torch.stack(groups)  # pre-norm residual stream of each group
        h = official_block(w, i, pooled, h, torch.arange(len(groups)), torch.arange(n), a)
    h = torch.cat([h, cont.float()])  # <Cont> after the segment's vectors
    return (h @ layer1.float().T) @ layer2.float().T


# ------------------------------------------------------------------------ official files
def random_official(slots, seed=0, legacy_special=False):
    """Random tensors with official names: (embedder state, bridge state), bridges per slot."""
    g = torch.Generator().manual_seed(seed)
    a = MODEL_ARGS
    d, q, kv, f = a["dim"], a["n_heads"] * a["head_dim"], a["n_kv_heads"] * a["head_dim"], a["hidden_dim"]

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    emb = {"tok_embeddings.weight": rnd(a["vocab_size"], d, scale=1.0)}
    for i in range(a["n_layers"] - N_TRUNCATED):
        p = f"layers.{i}."
        emb.update(
            {
                p + "attention.wq.weight": rnd(q, d, scale=d**-0.5),
                p + "attention.wk.weight": rnd(kv, d, scale=d**-0.5),
                p + "attention.wv.weight": rnd(kv, d, scale=d**-0.5),
                p + "attention.wo.weight": rnd(d, q, scale=q**-0.5),
                p + "feed_forward.w1.weight": rnd(f, d, scale=d**-0.5),
                p + "feed_forward.w3.weight": rnd(f, d, scale=d**-0.5),
                p + "feed_forward.w2.weight": rnd(d, f, scale=f**-0.5),
                p + "attention_norm.weight": 1 + rnd(d, scale=0.2),
                p + "ffn_norm.weight": 1 + rnd(d, scale=0.2),
            }
        )
    bridge = {}
    for k in range(slots):
        suffix = "" if legacy_special else f".{k}"
        emb[f"rec_tok{suffix}.weight"] = rnd(1, d, scale=1.0)
        emb[f"cont_tok{suffix}.weight"] = rnd(1, d, scale=1.0)
        prefix = f"{k}." if slots > 1 else ""
        bridge[prefix + "layer1.weight"] = rnd(BOTTLENECK, d, scale=d**-0.5)
        bridge[prefix + "layer2.weight"] = rnd(DECODER_DIM, BOTTLENECK, scale=BOTTLENECK**-0.5)
    return emb, bridge


def embedder_args(rates, pool="mean"):
    return {
        "n_truncated_layers": N_TRUNCATED,
        "pooling_module": {"pool_type": f"{pool}_pooled_queries", "where": "before"},
        "memory_tokens": 0,
        "rec_tok": True,
        "cont_tok": True,
        "compress_rates": list(rates),
        "trained_layers": 27,
        "causal_embedder": False,
        "train_embedding_mtx": True,
    }


def bridge_args(slots):
    return {
        "bridge_type": "multi_module" if slots > 1 else "mlp",
        "in_dim": MODEL_ARGS["dim"],
        "hidden_dim": BOTTLENECK,
        "out_dim": DECODER_DIM,
    }


def write_hub(folder, emb, bridge, slots, rates, pool="mean", dtype=torch.float32, config=None):
    """The PyTorchModelHubMixin export: constructor arguments + one prefixed safetensors file."""
    folder.mkdir(parents=True)
    config = (
        config
        if config is not None
        else {
            "bridge_args": bridge_args(slots),
            "embedder_args": embedder_args(rates, pool),
            "empty_init": slots,
            "llms": [],
            "model_args": {**MODEL_ARGS, "max_batch_size": 1},
        }
    )
    (folder / "config.json").write_text(json.dumps(config))
    state = {f"embedder.{k}": v.to(dtype) for k, v in emb.items()}
    state.update({f"bridge_module.{k}": v.to(dtype) for k, v in bridge.items()})
    save_file(state, str(folder / "model.safetensors"))
    return folder


def write_converted(folder, emb, bridge, slots, rates, pool="mean"):
    """`load_and_save_released_models` output: params.json without model arguments."""
    (folder / "embedder").mkdir(parents=True)
    (folder / "bridge_module").mkdir()
    params = {
        "param_dtype": "float32",
        "embedder_params": embedder_args(rates, pool),
        "bridge_module": bridge_args(slots),
    }
    (folder / "params.json").write_text(json.dumps(params, indent=4))
    save_file(emb, str(folder / "embedder" / "consolidated.safetensors"))
    save_file(bridge, str(folder / "bridge_module" / "consolidated.safetensors"))
    return folder


def write_meta_params(path):
    path.write_text(json.dumps(META_PARAMS))
    return path


def segments(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, MODEL_ARGS["vocab_size"], (n,), generator=g).tolist() for n in LENGTHS]


def assert_matches_reference(model, emb, bridge, slots, rates, pool, cast=None):
    cast = cast or (lambda t: t)
    w = {k: cast(v) for k, v in emb.items()}
    segs = segments()
    for k in range(slots):
        prefix = f"{k}." if slots > 1 else ""
        cont = w.get(f"cont_tok.{k}.weight", w.get("cont_tok.weight"))
        with torch.no_grad():
            vectors = model.encode_segments(segs, decoder=k)  # one padded batch
            blocks = model.decoder_blocks(vectors, k, "cont")
        for ids, got in zip(segs, blocks):
            want = official_forward(
                w,
                MODEL_ARGS,
                rates,
                pool,
                ids,
                cont,
                cast(bridge[prefix + "layer1.weight"]),
                cast(bridge[prefix + "layer2.weight"]),
            )
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def tokenizer_dir(tiny_models):
    return tiny_models["llama"]  # a folder holding the tiny 384-token tokenizer


# ------------------------------------------------------------------------ unit pieces
def test_rope_permutation_is_the_spec_reordering_and_invertible():
    hd, heads = 8, 3
    w = torch.arange(heads * hd, dtype=torch.float32)[:, None].expand(-1, 2).clone()
    got = interleaved_to_half(w, heads)[:, 0].long().tolist()
    want = [h * hd + r for h in range(heads) for r in [0, 2, 4, 6, 1, 3, 5, 7]]
    assert got == want
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, heads), heads), w)


def test_permuted_projection_rotates_like_the_official_rope():
    """HF half-split RoPE on permuted rows == official interleaved RoPE on original rows, up to
    the same permutation (so dot products between queries and keys agree)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    hd, heads, T = 16, 2, 5
    x = torch.randn(T, 32)
    wq = torch.randn(heads * hd, 32)
    pos = torch.arange(T)
    official = rope_interleaved((x @ wq.T).view(T, heads, hd), pos, 500000.0)
    config = LlamaConfig(
        hidden_size=32,
        num_attention_heads=heads,
        head_dim=hd,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    cos, sin = LlamaRotaryEmbedding(config)(x[None], pos[None])
    q = (x @ interleaved_to_half(wq, heads).T).view(1, T, heads, hd).transpose(1, 2)
    hf, _ = apply_rotary_pos_emb(q, q, cos, sin)
    hf = hf.transpose(1, 2)[0]  # [T, heads, hd] in half-split order
    back = half_to_interleaved(hf.reshape(T, heads * hd).T.contiguous(), heads).T.reshape(T, heads, hd)
    torch.testing.assert_close(back, official, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "rates, factors", [([-8], [8]), ([-2, -2, -2], [2, 2, 2]), ([-1], [1]), ([-2, -1, -2], [2, 1, 2]), ([], [])]
)
def test_compress_rates_map_to_pooling_factors(rates, factors):
    assert pooling_from_official(embedder_args(rates)) == ("mean", factors)
    assert pooling_from_official(embedder_args(rates, "last"))[0] == "last"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"compress_rates": [3]}, "compress rate"),
        ({"compress_rates": [0]}, "compress rate"),
        ({"pooling_module": {"pool_type": "sum_pooled_queries", "where": "before"}}, "pool_type"),
        ({"pooling_module": {"pool_type": "mean", "where": "before"}}, "pool_type"),
        ({"pooling_module": {"pool_type": "mean_pooled_queries", "where": "between"}}, "where"),
        ({"memory_tokens": 8, "compress_rates": []}, "memory"),
    ],
)
def test_unsupported_official_pooling_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        pooling_from_official({**embedder_args([-4]), **change})


# ------------------------------------------------------------------------ import vs reference
@pytest.mark.parametrize(
    "layout, rates, pool, dtype, legacy",
    [
        ("hub", [-4], "mean", torch.float32, False),
        ("hub", [-4], "last", torch.bfloat16, True),  # bf16 weights, old keys without the slot index
        ("converted", [-2, -1, -2], "mean", torch.float32, False),
    ],
)
def test_single_decoder_import_matches_official_forward(tmp_path, tiny_models, layout, rates, pool, dtype, legacy):
    emb, bridge = random_official(1, legacy_special=legacy)
    src = tmp_path / "ARC4_Encoder_Llama"
    extra = {}
    if layout == "hub":
        write_hub(src, emb, bridge, 1, rates, pool, dtype)
    else:
        write_converted(src, emb, bridge, 1, rates, pool)
        extra["backbone_params"] = write_meta_params(tmp_path / "params.json")
    summary = import_kyutai(
        src, tmp_path / "ours", tokenizer_dir(tiny_models), decoders=[tiny_models["llama"]], **extra
    )
    assert summary["pooling_factors"] == [-r for r in rates] and summary["drop_layers"] == 1
    model = ARCModel.from_pretrained(tmp_path / "ours", decoders=[tiny_models["llama"]]).eval()
    assert model.config.pooling == pool and not model.config.causal
    assert model.encoder.hf_config.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}

    def cast(t):  # the reference sees the stored (rounded) values
        return t.to(dtype).float()

    assert_matches_reference(model, emb, bridge, 1, rates, pool, cast)


@pytest.mark.parametrize("layout", ["hub", "converted"])
def test_multi_decoder_import_matches_official_forward_per_slot(tmp_path, tiny_models, layout):
    emb, bridge = random_official(2, seed=3)
    src = tmp_path / "ARC8_Encoder_multi"
    if layout == "hub":
        write_hub(src, emb, bridge, 2, [-4])
    else:
        write_converted(src, emb, bridge, 2, [-4])
    decoders = [tiny_models["llama"], tiny_models["mistral"]]
    extra = {} if layout == "hub" else {"backbone_params": write_meta_params(tmp_path / "p.json")}
    import_kyutai(src, tmp_path / "ours", tokenizer_dir(tiny_models), decoders=decoders, **extra)
    model = ARCModel.from_pretrained(tmp_path / "ours", decoders=decoders).eval()
    assert model.config.decoders == decoders
    assert_matches_reference(model, emb, bridge, 2, [-4], "mean")


def test_multi_decoder_defaults_are_llama_then_mistral(tmp_path, tiny_models):
    emb, bridge = random_official(2)
    src = write_hub(tmp_path / "snapshot", emb, bridge, 2, [-8])
    summary = import_kyutai(src, tmp_path / "ours", tokenizer_dir(tiny_models))
    assert summary["decoders"] == ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3"]
    recorded = json.loads((tmp_path / "ours" / "arc_config.json").read_text())
    assert recorded["config"]["decoders"] == summary["decoders"]
    assert recorded["config"]["pooling_factors"] == [8] and recorded["decoder_dims"] == [64, 64]


def test_single_decoder_default_comes_from_the_release_name(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "ARC8_Encoder_Mistral", emb, bridge, 1, [-8])
    summary = import_kyutai(src, tmp_path / "ours", tokenizer_dir(tiny_models))
    assert summary["decoders"] == ["mistralai/Mistral-7B-v0.3"]
    cached = write_hub(
        tmp_path / "models--kyutai--ARC4_Encoder_Llama" / "snapshots" / "abc123", emb, bridge, 1, [-4]
    )  # the hub cache layout
    summary = import_kyutai(cached, tmp_path / "ours_cached", tokenizer_dir(tiny_models))
    assert summary["decoders"] == ["meta-llama/Llama-3.1-8B"]
    other = write_hub(tmp_path / "somewhere", emb, bridge, 1, [-8])
    with pytest.raises(ValueError, match="--decoder"):
        import_kyutai(other, tmp_path / "ours2", tokenizer_dir(tiny_models))


def test_pooling_factor_override_and_missing_rates(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    config = {"model_args": MODEL_ARGS, "bridge_args": bridge_args(1)}  # no embedder arguments
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [], config=config)
    with pytest.raises(ValueError, match="--pooling-factor"):
        import_kyutai(src, tmp_path / "a", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    summary = import_kyutai(src, tmp_path / "b", tokenizer_dir(tiny_models), [tiny_models["llama"]], pooling_factor=4)
    # without n_truncated_layers the depth comes from the blocks in the file
    assert summary["pooling_factors"] == [4] and summary["drop_layers"] == 1
    model = ARCModel.from_pretrained(tmp_path / "b", decoders=[tiny_models["llama"]]).eval()
    assert_matches_reference(model, emb, bridge, 1, [-4], "mean")


def test_encoder_tokenizer_treats_special_strings_as_text(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4])
    import_kyutai(src, tmp_path / "ours", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    model = ARCModel.from_pretrained(tmp_path / "ours", decoders=[tiny_models["llama"]])
    ids = model.tokenize_document("a <bos> b")[0]
    assert model.encoder_tokenizer.bos_token_id not in ids  # method.md §9.4


# ------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("multi", [False, True])
def test_round_trip_ours_official_ours_is_bit_exact(tmp_path, tiny_models, tiny_arc, multi):
    decoders = [tiny_models["llama"], tiny_models["mistral"]] if multi else [tiny_models["llama"]]
    model = tiny_arc(decoders=decoders, pooling_factors=[2, 3], seed=5)
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.rec.normal_()  # not the all-ones init, so a <Rec>/<Cont> swap would show
            adapter.cont.normal_()
    model.save_pretrained(tmp_path / "ours")
    export_kyutai(tmp_path / "ours", tmp_path / "official")
    params = json.loads((tmp_path / "official" / "params.json").read_text())
    assert params["embedder_params"]["compress_rates"] == [-2, -3]
    assert params["bridge_module"]["bridge_type"] == ("multi_module" if multi else "mlp")
    import_kyutai(tmp_path / "official", tmp_path / "back", tmp_path / "ours" / "encoder")
    before = load_file(str(tmp_path / "ours" / "model.safetensors"))
    after = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    config = json.loads((tmp_path / "back" / "arc_config.json").read_text())["config"]
    assert config["decoders"] == decoders and config["pooling_factors"] == [2, 3]
    assert config["drop_layers"] == model.config.drop_layers


def test_exported_folder_runs_the_official_forward(tmp_path, tiny_models, tiny_arc):
    """Our model, exported, computes in the reference exactly what our encoder computes."""
    model = tiny_arc(pooling_factors=[4], seed=2).eval()
    model.save_pretrained(tmp_path / "ours")
    export_kyutai(tmp_path / "ours", tmp_path / "official")
    emb = load_file(str(tmp_path / "official" / "embedder" / "consolidated.safetensors"))
    bridge = load_file(str(tmp_path / "official" / "bridge_module" / "consolidated.safetensors"))
    hf = model.encoder.hf_config
    args = dict(
        dim=64,
        n_layers=4,
        head_dim=16,
        hidden_dim=hf.intermediate_size,
        n_heads=4,
        n_kv_heads=2,
        norm_eps=hf.rms_norm_eps,
        vocab_size=384,
        rope_theta=hf.rope_parameters["rope_theta"],
    )
    segs = segments()
    with torch.no_grad():
        blocks = model.decoder_blocks(model.encode_segments(segs, 0), 0, "cont")
    for ids, got in zip(segs, blocks):
        want = official_forward(
            emb, args, [-4], "mean", ids, emb["cont_tok.0.weight"], bridge["layer1.weight"], bridge["layer2.weight"]
        )
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ errors
def hub_with(tmp_path, edit):
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4])
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(src / "model.safetensors"))
    return src


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("embedder.layers.1.attention.wk.weight"), r"missing.*layers\.1\.attention\.wk"),
        (lambda s: s.update({"embedder.norm.weight": torch.ones(64)}), r"unknown.*norm\.weight"),
        (lambda s: s.update({"llms.0.x": torch.ones(1)}), r"unknown.*llms\.0\.x"),
        (lambda s: s.update({"bridge_module.layer3.weight": torch.ones(1)}), r"unknown.*layer3"),
        (
            lambda s: s.update({"embedder.layers.2.attention.wk.weight": torch.ones(16, 64)}),
            r"layers\.2\.attention\.wk\.weight: expected \(32, 64\), found \(16, 64\)",
        ),
        (
            lambda s: s.update({"bridge_module.layer2.weight": torch.ones(64, 7)}),
            r"0\.layer2\.weight: expected \(64, 24\), found \(64, 7\)",
        ),
        (
            lambda s: s.update({"embedder.cont_tok.0.weight": torch.ones(2, 64)}),
            r"cont_tok\.0\.weight: expected \(1, 64\), found \(2, 64\)",
        ),
        (lambda s: s.update({"embedder.mem_embeddings.0.weight": torch.ones(4, 64)}), "memory"),
        (lambda s: s.update({"embedder.layers.3.ffn_norm.weight": torch.ones(64)}), r"unknown.*layers\.3\.ffn_norm"),
    ],
)
def test_bad_hub_files_are_refused(tmp_path, tiny_models, edit, message):
    src = hub_with(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        import_kyutai(src, tmp_path / "ours", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    assert not (tmp_path / "ours").exists()


def test_truncated_and_missing_files_are_refused(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4])
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read weights"):
        import_kyutai(src, tmp_path / "a", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    conv = write_converted(tmp_path / "conv", emb, bridge, 1, [-4])
    (conv / "bridge_module" / "consolidated.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="bridge_module"):
        import_kyutai(conv, tmp_path / "b", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    (conv / "params.json").write_text("{not json")
    with pytest.raises(ValueError, match="params.json"):
        import_kyutai(conv, tmp_path / "c", tokenizer_dir(tiny_models), [tiny_models["llama"]])


def test_folder_of_neither_layout_is_refused(tmp_path, tiny_models, tiny_arc):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected either the hub export"):
        import_kyutai(tmp_path / "empty", tmp_path / "a", tokenizer_dir(tiny_models))
    tiny_arc().save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="already in this library's format"):
        import_kyutai(tmp_path / "ours", tmp_path / "b", tokenizer_dir(tiny_models))
    with pytest.raises(FileNotFoundError):
        import_kyutai(tmp_path / "nowhere", tmp_path / "c", tokenizer_dir(tiny_models))


def test_converted_folder_without_model_args_assumes_llama_3_2_3b(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    src = write_converted(tmp_path / "conv", emb, bridge, 1, [-4])
    with pytest.raises(ValueError, match="Llama-3.2-3B's were assumed.*--backbone-params"):
        import_kyutai(src, tmp_path / "a", tokenizer_dir(tiny_models), [tiny_models["llama"]])


def test_decoder_mismatches_are_refused(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4])
    with pytest.raises(ValueError, match="1 projector"):
        import_kyutai(src, tmp_path / "a", tokenizer_dir(tiny_models), [tiny_models["llama"], tiny_models["mistral"]])
    with pytest.raises(ValueError, match="width 96.*outputs 64"):
        import_kyutai(src, tmp_path / "b", tokenizer_dir(tiny_models), [tiny_models["llama-wide"]])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError):
        import_kyutai(src, tmp_path / "full", tokenizer_dir(tiny_models), [tiny_models["llama"]])


def test_causal_checkpoint_imports_with_a_warning(tmp_path, tiny_models):
    emb, bridge = random_official(1)
    config = {
        "model_args": MODEL_ARGS,
        "bridge_args": bridge_args(1),
        "embedder_args": {**embedder_args([-4]), "causal_embedder": True},
    }
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4], config=config)
    with pytest.warns(UserWarning, match="causal"):
        summary = import_kyutai(src, tmp_path / "a", tokenizer_dir(tiny_models), [tiny_models["llama"]])
    assert summary["causal"] is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pooling="memory", pooling_factors=[], memory_tokens=4), "pooling 'memory'"),
        (dict(causal=True), "causal"),
    ],
)
def test_export_refuses_what_the_official_code_cannot_express(tmp_path, tiny_arc, overrides, message):
    tiny_arc(**overrides).save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match=message):
        export_kyutai(tmp_path / "ours", tmp_path / "official")
    assert not (tmp_path / "official").exists()


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "qwen2"])
def test_export_refuses_non_llama_backbones(tmp_path, tiny_models, tiny_arc, family):
    tiny_arc(backbone=tiny_models[family]).save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="Llama-architecture"):
        export_kyutai(tmp_path / "ours", tmp_path / "official")


def test_export_refuses_scaled_rope_and_mixed_widths(tmp_path, tiny_models, tiny_arc):
    tiny_arc(decoders=[tiny_models["llama"], tiny_models["llama-wide"]]).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="one output width"):
        export_kyutai(tmp_path / "a", tmp_path / "a_out")
    tiny_arc().save_pretrained(tmp_path / "b")
    config_file = tmp_path / "b" / "encoder" / "config.json"
    values = json.loads(config_file.read_text())
    values["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    config_file.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="plain RoPE"):
        export_kyutai(tmp_path / "b", tmp_path / "b_out")


# ------------------------------------------------------------------------ RoPE scaling of decoders
def scaled_llama(tmp_path, tiny_models, v5_style=False):
    """A copy of the tiny llama decoder whose config carries Llama-3.1's RoPE scaling, as the hub
    config.json writes it (rope_theta + rope_scaling) or as transformers 5 saves it."""
    import shutil

    folder = tmp_path / "llama31"
    shutil.copytree(tiny_models["llama"], folder)
    values = json.loads((folder / "config.json").read_text())
    values.pop("rope_parameters", None)
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    if v5_style:
        values["rope_parameters"] = {**scaling, "rope_theta": 500000.0}
    else:
        values["rope_theta"], values["rope_scaling"] = 500000.0, scaling
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize("v5_style", [False, True])
def test_unscaled_rope_view_loads_the_decoder_with_plain_rope(tmp_path, tiny_models, v5_style):
    from transformers import AutoConfig

    folder = scaled_llama(tmp_path, tiny_models, v5_style)
    assert AutoConfig.from_pretrained(folder).rope_parameters["rope_type"] == "llama3"
    view = unscaled_rope_view(folder, tmp_path / "view")
    config = AutoConfig.from_pretrained(view)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    assert (view / "model.safetensors").is_symlink()


def test_import_with_unscaled_rope_records_the_views(tmp_path, tiny_models):
    emb, bridge = random_official(2)
    src = write_hub(tmp_path / "hub", emb, bridge, 2, [-4])
    scaled = scaled_llama(tmp_path, tiny_models)
    summary = import_kyutai(
        src, tmp_path / "ours", tokenizer_dir(tiny_models), [str(scaled), tiny_models["mistral"]], unscaled_rope=True
    )
    view = tmp_path / "ours" / "decoders" / "0"
    assert summary["decoders"] == [str(view.resolve()), tiny_models["mistral"]]  # mistral untouched
    model = ARCModel.from_pretrained(tmp_path / "ours")
    rope = model.decoders[0].config.rope_parameters
    assert rope["rope_type"] == "default" and rope["rope_theta"] == 500000.0
    with pytest.raises(ValueError, match="local decoder folders"):
        import_kyutai(
            src,
            tmp_path / "b",
            tokenizer_dir(tiny_models),
            ["meta-llama/Llama-3.1-8B", tiny_models["mistral"]],
            unscaled_rope=True,
        )


# ------------------------------------------------------------------------ CLI
def test_cli_convert_both_ways(tmp_path, tiny_models, tiny_arc, monkeypatch):
    from pathlib import Path

    runner = CliRunner()
    emb, bridge = random_official(1)
    src = write_hub(tmp_path / "hub", emb, bridge, 1, [-4])
    decoder = Path(tiny_models["llama"])
    monkeypatch.chdir(decoder.parent)  # a relative --decoder is recorded as an absolute path
    result = runner.invoke(
        app,
        [
            "convert",
            "kyutai",
            str(src),
            str(tmp_path / "ours"),
            "--tokenizer",
            tokenizer_dir(tiny_models),
            "--decoder",
            decoder.name,
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["pooling_factors"] == [4]
    recorded = json.loads((tmp_path / "ours" / "arc_config.json").read_text())["config"]["decoders"]
    assert recorded == [str(decoder.resolve())]
    result = runner.invoke(app, ["convert", "to-kyutai", str(tmp_path / "ours"), str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "off" / "embedder" / "consolidated.safetensors").is_file()
    result = runner.invoke(
        app,
        [
            "convert",
            "kyutai",
            str(tmp_path / "nothing"),
            str(tmp_path / "x"),
            "--tokenizer",
            tokenizer_dir(tiny_models),
        ],
    )
    assert result.exit_code == 1 and "error:" in result.output
