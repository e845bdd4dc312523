"""The encoder against a naive, independent re-statement of method.md §2.3 for Llama blocks."""

import math

import pytest
import torch

from arc_encoder.config import ARCConfig
from arc_encoder.model.encoder import Encoder
from conftest import tiny_config


def rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, positions, theta):
    """Half-split rotation (HF layout): dims i and i + hd/2 share frequency theta^(-2i/hd)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    angles = positions.float()[:, None] * inv[None]  # [T, hd/2]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def naive_block(layer, cfg, queries_in, keys_in, q_pos, k_pos, allowed):
    """One Llama block where rows `queries_in` attend rows `keys_in` (allowed: [Q, K] bool)."""
    a = layer.self_attn
    heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    eps = cfg.rms_norm_eps
    xq = rms(queries_in, layer.input_layernorm.weight, eps)
    xk = rms(keys_in, layer.input_layernorm.weight, eps)
    q = rope((xq @ a.q_proj.weight.T).view(-1, heads, hd), q_pos, cfg.rope_parameters["rope_theta"])
    k = rope((xk @ a.k_proj.weight.T).view(-1, kv, hd), k_pos, cfg.rope_parameters["rope_theta"])
    v = (xk @ a.v_proj.weight.T).view(-1, kv, hd)
    outs = []
    for h in range(heads):
        g = h // (heads // kv)
        scores = q[:, h] @ k[:, g].T / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append(torch.softmax(scores, -1) @ v[:, g])
    o = queries_in + torch.cat(outs, -1) @ a.o_proj.weight.T
    m = layer.mlp
    y = rms(o, layer.post_attention_layernorm.weight, eps)
    return o + (torch.nn.functional.silu(y @ m.gate_proj.weight.T) * (y @ m.up_proj.weight.T)) @ m.down_proj.weight.T


def make_encoder(**overrides):
    torch.manual_seed(0)
    cfg = ARCConfig(**{"backbone": "x", "drop_layers": 0, "pooling_factors": [4], **overrides})
    hf = tiny_config("llama", layers=3)
    hf._attn_implementation = "eager"
    return Encoder(hf, cfg).eval(), hf


def naive_encoder(enc, hf, h, groups, mode="mean", causal=False, schedule=None, field=None, group_positions=False):
    """Run the plain blocks then pooled blocks naively, for one segment."""
    n_plain = len(enc.layers) - len(schedule)
    n = h.shape[0]
    for layer in enc.layers[:n_plain]:
        t = torch.arange(n)
        allowed = (t[None] <= t[:, None]) if causal else torch.ones(n, n, dtype=torch.bool)
        h = naive_block(layer, hf, h, h, t, t, allowed)
    for layer, layer_groups in zip(enc.layers[n_plain:], groups):
        members, start = [], 0
        for size in layer_groups:
            members.append(list(range(start, start + size)))
            start += size
        P = torch.stack([h[g].mean(0) if mode == "mean" else h[g[-1]] for g in members])
        allowed = torch.ones(len(members), h.shape[0], dtype=torch.bool)
        for j, g in enumerate(members):
            if causal:
                allowed[j, g[-1] + 1 :] = False
            if field is not None:  # only the tokens of groups j-field .. j+field
                near = [t for k, other in enumerate(members) if abs(k - j) <= field for t in other]
                outside = [t for t in range(h.shape[0]) if t not in near]
                allowed[j, outside] = False
        q_pos = torch.tensor([g[0] for g in members]) if group_positions else torch.arange(len(members))
        h = naive_block(layer, hf, P, h, q_pos, torch.arange(h.shape[0]), allowed)
    return h


@pytest.mark.parametrize("mode", ["mean", "last"])
@pytest.mark.parametrize("causal", [False, True])
def test_pooled_encoder_matches_naive_loop(mode, causal):
    enc, hf = make_encoder(pooling=mode, causal=causal)
    ids = torch.randint(3, 300, (1, 10))
    out, lengths = enc(ids, [10])
    assert lengths == [3]
    want = naive_encoder(enc, hf, enc.embed_tokens(ids[0]), [[4, 3, 3]], mode, causal, [4])
    torch.testing.assert_close(out[0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field", [0, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("group_positions", [False, True])
def test_local_receptive_field_and_group_positions_match_naive_loop(field, causal, group_positions):
    enc, hf = make_encoder(
        causal=causal, pooled_receptive_field=field, pooled_positions="group" if group_positions else "index"
    )
    ids = torch.randint(3, 300, (2, 14))
    out, lengths = enc(ids, [14, 9])  # 14 by 4 -> [4, 4, 3, 3]; 9 by 4 -> [3, 3, 3]
    assert lengths == [4, 3]
    for row, (n, groups) in enumerate([(14, [4, 4, 3, 3]), (9, [3, 3, 3])]):
        want = naive_encoder(
            enc,
            hf,
            enc.embed_tokens(ids[row, :n]),
            [groups],
            causal=causal,
            schedule=[4],
            field=field,
            group_positions=group_positions,
        )
        torch.testing.assert_close(out[row, : len(groups)], want, atol=1e-5, rtol=1e-5)


def test_wide_receptive_field_equals_whole_segment():
    ids = torch.randint(3, 300, (1, 12))
    whole, _ = make_encoder()[0](ids, [12])
    wide, _ = make_encoder(pooled_receptive_field=3)[0](ids, [12])  # 3 groups: +-3 covers all
    own, _ = make_encoder(pooled_receptive_field=0)[0](ids, [12])
    torch.testing.assert_close(wide, whole)
    assert not torch.allclose(own, whole, atol=1e-4)


def test_schedule_of_factors_matches_naive_loop():
    enc, hf = make_encoder(pooling_factors=[2, 2])
    ids = torch.randint(3, 300, (1, 9))
    out, lengths = enc(ids, [9])
    # 9 by 2 -> 5 groups [2, 2, 2, 2, 1]; then 5 by 2 -> 3 groups [2, 2, 1]
    want = naive_encoder(enc, hf, enc.embed_tokens(ids[0]), [[2, 2, 2, 2, 1], [2, 2, 1]], schedule=[2, 2])
    assert lengths == [3]
    torch.testing.assert_close(out[0], want, atol=1e-5, rtol=1e-5)


def test_factor_one_pooled_block_equals_plain_block():
    enc, _ = make_encoder()
    h = torch.randn(2, 7, 64)
    layer = enc.layers[-1]
    plain = enc._plain_block(layer, "full_attention", h, [7, 5])
    pooled, lengths = enc._pooled_block(layer, "full_attention", h, [7, 5], 1)
    assert lengths == [7, 5]
    torch.testing.assert_close(pooled[0], plain[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pooled[1, :5], plain[1, :5], atol=1e-6, rtol=1e-6)


def test_scheduled_factor_equals_an_encoder_built_with_that_factor():
    """A pooling-factor curriculum step at x2 (or x1) runs exactly what an encoder configured
    with that factor runs, with the same weights; outside the context the configured x4 is back."""
    enc, _ = make_encoder(pooled_receptive_field=0, pooled_positions="group")
    ids = torch.randint(3, 300, (2, 11))
    for factor in (1, 2):
        other, _ = make_encoder(pooling_factors=[factor], pooled_receptive_field=0, pooled_positions="group")
        other.load_state_dict(enc.state_dict())
        with enc.pooling_factor(factor):
            got, lengths = enc(ids, [11, 7])
        if factor == 1:  # the configured pooling block still runs at x1: each vector reads its token
            want, want_lengths = enc._pooled_block(enc.layers[-1], "full_attention", *_below_last(enc, ids, [11, 7]), 1)
        else:
            want, want_lengths = other(ids, [11, 7])
        assert lengths == want_lengths == [math.ceil(11 / factor), math.ceil(7 / factor)]
        torch.testing.assert_close(got, want)
    assert enc(ids, [11, 7])[1] == [3, 2]
    with pytest.raises(ValueError, match="one pooling block"):
        with make_encoder(pooling_factors=[2, 2])[0].pooling_factor(1):
            pass


def _below_last(enc, ids, lengths):
    h = enc.embed_tokens(ids)
    for layer in enc.layers[:-1]:
        h = enc._plain_block(layer, "full_attention", h, lengths)
    return h, lengths


def test_padding_is_masked():
    enc, _ = make_encoder()
    a = torch.randint(3, 300, (1, 12))
    b = torch.randint(3, 300, (1, 5))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :5] = a[0], b[0]
    batch[1, 5:] = 7  # garbage in the padding must not leak
    out, lengths = enc(batch, [12, 5])
    solo_b, _ = enc(b, [5])
    assert lengths == [3, 2]
    torch.testing.assert_close(out[1, :2], solo_b[0], atol=1e-5, rtol=1e-5)


def test_memory_tokens_output_fixed_count():
    enc, _ = make_encoder(pooling="memory", pooling_factors=[], memory_tokens=3)
    memory = torch.randn(3, 64)
    ids = torch.randint(3, 300, (2, 9))
    out, lengths = enc(ids, [9, 4], memory)
    assert out.shape == (2, 3, 64) and lengths == [3, 3]
    solo, _ = enc(ids[1:, :4], [4], memory)
    torch.testing.assert_close(out[1], solo[0], atol=1e-5, rtol=1e-5)
