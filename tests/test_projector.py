"""The projector: bottleneck or one linear map; standardized inputs (statistics measured once,
applied before the projector, saved)."""

import numpy as np
import pytest
import torch

from arc_encoder.config import ARCConfig
from arc_encoder.model.arc import ARCModel
from arc_encoder.training.projector_init import calibrate_projector_inputs, fit_projectors_to_embeddings
from conftest import CORPUS


def segments_of(arc, n=6):
    tok = arc.encoder_tokenizer
    words = "the river runs past the old mill and the town where bakers sell bread at dawn".split()
    return [tok(" ".join(words[i : i + 6 + i]), add_special_tokens=False)["input_ids"] for i in range(n)]


def test_calibration_matches_a_hand_computation_and_survives_saving(tiny_arc, tmp_path):
    arc = tiny_arc(projector_input="standardize").eval()
    segs = segments_of(arc)
    assert calibrate_projector_inputs(arc, segs) is True
    assert calibrate_projector_inputs(arc, segs) is False  # once only
    # reference: every pooled vector, one segment at a time
    with torch.no_grad():
        rows = torch.cat([arc.encoder(torch.tensor([s]), [len(s)])[0][0] for s in segs])
    adapter = arc.adapters[0]
    torch.testing.assert_close(adapter.input_mean, rows.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.input_scale, rows.std(0, correction=0).clamp(min=1e-3), atol=1e-5, rtol=1e-4)
    # what the projector reads has mean 0 and spread 1 in every dimension on those segments
    with torch.no_grad():
        z = (rows - adapter.input_mean) / adapter.input_scale
        torch.testing.assert_close(
            arc.encode_segments([segs[0]], 0)[0], adapter.down(z[: len(arc.encode_segments([segs[0]], 0)[0])])
        )
    assert z.mean(0).abs().max() < 1e-4
    arc.save_pretrained(tmp_path / "m")
    again = ARCModel.from_pretrained(tmp_path / "m")
    assert bool(again.adapters[0].calibrated)
    torch.testing.assert_close(again.adapters[0].input_mean, adapter.input_mean)


def test_raw_projectors_keep_the_paper_state_dict(tiny_arc):
    arc = tiny_arc()
    assert not any("input_mean" in k for k in arc.state_dict())
    assert calibrate_projector_inputs(arc, []) is False


def test_unknown_projector_input_is_refused():
    with pytest.raises(ValueError, match="projector_input"):
        ARCConfig(projector_input="whiten")


def test_no_bottleneck_is_one_linear_map_and_stores_encoder_outputs(tiny_arc, tmp_path):
    arc = tiny_arc(bottleneck=None).eval()
    adapter = arc.adapters[0]
    width = arc.encoder.hidden_size
    assert isinstance(adapter.down, torch.nn.Identity) and arc.vector_dim == width
    assert adapter.up.weight.shape == (arc.decoders[0].config.hidden_size, width)
    seg = segments_of(arc, 1)[0]
    with torch.no_grad():
        pooled = arc.encoder(torch.tensor([seg]), [len(seg)])[0][0]  # [m, d_e]
        (vectors,) = arc.encode_segments([seg], 0)
        torch.testing.assert_close(vectors, pooled)  # the store keeps the encoder's outputs
        (block,) = arc.decoder_blocks([vectors], 0, "rec")
        torch.testing.assert_close(block[:-1], pooled @ adapter.up.weight.T)
        torch.testing.assert_close(block[-1], adapter.up.weight @ adapter.rec)
    (compressed,) = arc.compress("the river runs past the old mill")
    assert compressed.chunks[0].shape[-1] == width
    arc.save_pretrained(tmp_path / "m")
    again = ARCModel.from_pretrained(tmp_path / "m")
    assert again.config.bottleneck is None
    torch.testing.assert_close(again.compress("the river runs past the old mill")[0].chunks[0], compressed.chunks[0])


@pytest.mark.parametrize("value", [0, -3, "32", True, 2.5])
def test_a_bad_bottleneck_is_refused(value):
    with pytest.raises(ValueError, match="bottleneck"):
        ARCConfig(bottleneck=value)


@pytest.mark.parametrize("bottleneck", [None, 8])
def test_least_squares_fit_against_numpy(bottleneck):
    """fit_linear: the least-squares map (numpy's lstsq), and with a bottleneck its best rank-r
    approximation (numpy's SVD, Eckart-Young)."""
    import numpy as np

    from arc_encoder.model.adapter import DecoderAdapter

    torch.manual_seed(0)
    adapter = DecoderAdapter(16, bottleneck, 12)
    x, y = torch.randn(200, 16), torch.randn(200, 12)
    r2 = adapter.fit_linear(x, y)
    w = np.linalg.lstsq(x.numpy().astype(np.float64), y.numpy().astype(np.float64), rcond=None)[0]
    if bottleneck:
        u, s, vh = np.linalg.svd(w, full_matrices=False)
        w = (u[:, :bottleneck] * s[:bottleneck]) @ vh[:bottleneck]
    with torch.no_grad():
        got = adapter.expand(adapter.compress(x)).double().numpy()
    np.testing.assert_allclose(got, x.double().numpy() @ w, atol=1e-4)
    fitted = x.double().numpy() @ w
    y64 = y.double().numpy()
    assert r2 == pytest.approx(1 - ((fitted - y64) ** 2).sum() / ((y64 - y64.mean(0)) ** 2).sum(), abs=1e-5)


def test_fitting_to_embeddings_reads_each_token_at_factor_one(tiny_arc):
    """After the fit, the x1 vectors of a segment are the least-squares images of the encoder's
    per-token outputs, close to the decoder's embeddings of those tokens (in-sample R^2 > 0.9 on a
    tiny model with more dimensions than rows), and the configured factor is back afterwards."""
    arc = tiny_arc(bottleneck=None).eval()
    segs = segments_of(arc, n=3)
    r2 = fit_projectors_to_embeddings(arc, segs)
    assert r2[0] > 0.9
    with torch.no_grad(), arc.encoder.pooling_factor(1):
        vectors = arc.encode_segments(segs, 0)
        want = [arc.decoders[0].get_input_embeddings()(torch.tensor(s)) for s in segs]
        got = [arc.adapters[0].expand(v) for v in vectors]
    for g, w in zip(got, want):
        assert g.shape == w.shape
    rows_g, rows_w = torch.cat(got), torch.cat(want)
    assert 1 - (rows_g - rows_w).pow(2).sum() / (rows_w - rows_w.mean(0)).pow(2).sum() == pytest.approx(r2[0], abs=1e-4)
    assert arc.encode_segments(segs[:1], 0)[0].shape[0] == -(-len(segs[0]) // 2)


class SpelledVocabulary:
    """A decoder tokenizer with another vocabulary, as token_spellings reads one: the encoder's
    tokens spelled the SentencePiece way ('▁the' for 'Ġthe'), at permuted ids, every fifth dropped."""

    def __init__(self, encoder_tokenizer, size: int):
        self.all_special_tokens = list(encoder_tokenizer.all_special_tokens)
        self.vocab = {
            token.replace("\u0120", "\u2581"): self.permuted(i, size)
            for token, i in encoder_tokenizer.get_vocab().items()
            if i % 5 or token in self.all_special_tokens
        }

    @staticmethod
    def permuted(i: int, size: int) -> int:
        return (7 * i + 3) % size  # a permutation: 7 and the size share no factor

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_fitting_another_vocabulary_uses_the_tokens_spelled_alike(tiny_arc):
    """A decoder with another tokenizer: each encoder token's row is fitted to the decoder's
    embedding of the token spelled alike; special tokens, non-ASCII byte tokens and tokens the
    decoder lacks are left out. Checked against numpy's least squares on the hand-built rows."""
    arc = tiny_arc(bottleneck=None).eval()
    enc = arc.encoder_tokenizer
    size = arc.decoders[0].get_input_embeddings().weight.shape[0]
    arc.decoder_tokenizers[0] = SpelledVocabulary(enc, size)
    arc._shared_vocab[0] = False
    segs = [enc(text, add_special_tokens=False)["input_ids"] + [enc.eos_token_id] for text in CORPUS[:24]]

    r2 = fit_projectors_to_embeddings(arc, segs)

    names = {i: t for t, i in enc.get_vocab().items()}
    special = set(enc.all_special_tokens)

    def alike(t: int) -> bool:  # kept by construction: not dropped, not special, printable once spelled
        text = names[t].replace("\u0120", " ")
        return t % 5 != 0 and names[t] not in special and all(32 <= ord(c) < 127 for c in text)

    with torch.no_grad(), arc.encoder.pooling_factor(1):
        pooled, counts = arc.pooled_outputs(segs, arc.adapters[0])
    x = torch.cat([pooled[i, :m] for i, m in enumerate(counts)]).double().numpy()
    ids = [t for seg in segs for t in seg]
    rows = [r for r, t in enumerate(ids) if alike(t)]
    assert 0 < len(rows) < len(ids)  # some rows are left out (the eos of every segment at least)
    table = arc.decoders[0].get_input_embeddings().weight.detach().double().numpy()
    y = table[[SpelledVocabulary.permuted(ids[r], size) for r in rows]]
    w = np.linalg.lstsq(x[rows], y, rcond=None)[0]  # [d_e, d_dec]
    torch.testing.assert_close(arc.adapters[0].up.weight.double(), torch.from_numpy(w.T), atol=1e-4, rtol=1e-3)
    fitted = x[rows] @ w
    assert r2[0] == pytest.approx(1 - ((fitted - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum(), abs=1e-5)


def test_fitting_another_vocabulary_needs_enough_tokens_spelled_alike(tiny_arc):
    arc = tiny_arc(bottleneck=None).eval()
    arc.decoder_tokenizers[0] = SpelledVocabulary(arc.encoder_tokenizer, 384)
    arc._shared_vocab[0] = False
    with pytest.raises(ValueError, match=r"spells only \d+ of the \d+ fitting tokens alike; the fit needs at least"):
        fit_projectors_to_embeddings(arc, segments_of(arc, 2))
