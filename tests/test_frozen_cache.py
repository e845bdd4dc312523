"""The frozen-block cache: the encoder's outputs and gradients as without it, a bounded store, refusals."""

import pytest
import torch

from arc_encoder.config import ARCConfig
from arc_encoder.model.encoder import Encoder
from arc_encoder.model.frozen_cache import FrozenBlockCache
from conftest import tiny_config
from test_train_loop import make_config, new_trainer, snapshot


def encoder_with_frozen(frozen: int, **overrides) -> Encoder:
    """A 3-block tiny encoder (the last one pools by 4) whose embeddings and first `frozen` blocks are frozen."""
    torch.manual_seed(0)
    cfg = ARCConfig(**{"backbone": "x", "drop_layers": 0, "pooling_factors": [4], **overrides})
    hf = tiny_config("llama", layers=3)
    hf._attn_implementation = "eager"
    enc = Encoder(hf, cfg)
    enc.embed_tokens.requires_grad_(False)
    for layer in list(enc.layers)[:frozen]:
        layer.requires_grad_(False)
    return enc


def segments_of(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 384, (n,), generator=g).tolist() for n in lengths]


def test_outputs_match_the_uncached_encoder_for_hits_misses_and_repeats():
    enc = encoder_with_frozen(2)
    first = segments_of([5, 9, 3], seed=0)
    second = [first[1], *segments_of([12], seed=1), first[1], first[2]]  # two hits, a miss, a repeat
    expected = [enc.encode_ids(batch, 0) for batch in (first, second)]
    cache = enc.cache_frozen_blocks(max_mb=16)
    assert cache.blocks == 2  # the pooling block (the third) is never cached
    for batch, (want, want_lengths) in zip((first, second), expected):
        got, lengths = enc.encode_ids(batch, 0)
        assert lengths == want_lengths
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (cache.hits, cache.misses, len(cache)) == (3, 4, 4)
    assert cache.stats()["hit_rate"] == pytest.approx(3 / 7)


def test_gradients_of_the_trained_block_match():
    enc = encoder_with_frozen(2)
    batch = segments_of([7, 4, 11], seed=2)
    grads = []
    for cached in (False, True):
        enc.zero_grad()
        if cached:
            enc.cache_frozen_blocks(max_mb=16)
            enc.encode_ids(batch, 0)  # fill the cache: the measured pass reads it
        out, _ = enc.encode_ids(batch, 0)
        (out**2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


def test_the_store_keeps_the_most_recent_segments_within_its_size():
    d = 64  # the tiny encoder's width: a segment of n tokens keeps n * d float32
    cache = FrozenBlockCache(blocks=1, max_mb=25 * d * 4 / 2**20)  # room for 25 tokens
    enc = encoder_with_frozen(1)
    a, b, c = segments_of([10, 10, 10], seed=3)
    cache.hidden(enc, [a, b], 0)
    cache.hidden(enc, [a], 0)  # a is now the most recent
    cache.hidden(enc, [c], 0)  # 30 tokens: b, the least recent, goes
    assert set(cache._store) == {tuple(a), tuple(c)}
    assert cache.bytes == 20 * d * 4 <= cache.max_bytes
    cache.hidden(enc, segments_of([40], seed=4), 0)  # larger than the whole store: not kept
    assert len(cache) == 2


def test_refusals_name_the_problem():
    enc = encoder_with_frozen(2)
    enc.embed_tokens.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen lower encoder"):
        enc.cache_frozen_blocks(16)
    assert encoder_with_frozen(0).cache_frozen_blocks(16) is None  # nothing frozen: no cache
    with pytest.raises(ValueError, match="memory tokens"):
        encoder_with_frozen(2, pooling="memory", memory_tokens=4, pooling_factors=[]).cache_frozen_blocks(16)
    with pytest.raises(ValueError, match="positive size"):
        FrozenBlockCache(1, 0)


def test_training_with_the_cache_matches_training_without(tiny_models, tmp_path):
    states = []
    for mb in (0, 64):
        config = make_config(tmp_path / str(mb), tiny_models["llama"], train_encoder_blocks=1, frozen_block_cache_mb=mb)
        trainer = new_trainer(config)
        for _ in range(3):
            trainer.train_step()
        states.append(snapshot(trainer.arc))
    cache = trainer.arc.encoder.frozen_cache
    assert cache.blocks == 2 and cache.hits > 0  # 3 blocks after drop_layers=1; the last trains
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], rtol=1e-4, atol=1e-5)


def test_the_config_key_is_checked(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="set train_encoder_blocks"):
        make_config(tmp_path, tiny_models["llama"], frozen_block_cache_mb=64)
    with pytest.raises(ValueError, match="frozen_block_cache_mb must be"):
        make_config(tmp_path, tiny_models["llama"], train_encoder_blocks=1, frozen_block_cache_mb=-1)
