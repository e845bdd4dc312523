import pytest
import torch

from arc_encoder.model.decoder import load_frozen_decoder
from arc_encoder.model.splice import Sample, loss_positions, splice


def test_splice_layout_and_positions():
    d = 3
    text = torch.arange(5 * d, dtype=torch.float).view(5, d)  # tokens t0..t4
    A, B = torch.full((2, d), -1.0), torch.full((1, d), -2.0)
    out = splice([text], [[A, B]], [[2, 2]])
    # t0 t1 A A B t2 t3 t4
    expected = torch.cat([text[:2], A, B, text[2:]])
    torch.testing.assert_close(out.embeds[0], expected)
    assert out.text_positions[0] == [0, 1, 5, 6, 7]
    assert out.block_positions[0] == [2, 4]
    assert out.position_ids[0].tolist() == list(range(8))


def test_left_padding():
    d = 2
    short, long_ = torch.ones(2, d), torch.ones(4, d)
    out = splice([short, long_], [[], []], [[], []], left_pad=True)
    assert out.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out.position_ids[0].tolist() == [0, 0, 0, 1]
    assert out.text_positions[0] == [2, 3]


def test_loss_positions_paper_and_official():
    d = 2
    s = Sample(text_ids=[10, 11, 12, 13], segments=[[1], [2]], offsets=[1, 1], targets=[True, True, True, False])
    batch = splice([torch.zeros(4, d)], [[torch.zeros(2, d), torch.zeros(2, d)]], [[1, 1]])
    # spliced: t0 A A B B t1 t2 t3 -> t1 (pos 5) follows a block, t2 (6) follows t1
    index, labels, _ = loss_positions(batch, [s], supervise_first_token=True)
    assert index.tolist() == [4, 5] and labels.tolist() == [11, 12]  # t0 has nothing before it
    index, labels, _ = loss_positions(batch, [s], supervise_first_token=False)
    assert index.tolist() == [5] and labels.tolist() == [12]


def test_sample_validation():
    with pytest.raises(ValueError, match="offsets"):
        Sample([1, 2], [[1], [2]], [2, 1])
    with pytest.raises(ValueError, match="outside"):
        Sample([1, 2], [[1]], [3])
    with pytest.raises(ValueError, match="targets"):
        Sample([1, 2], [], [], [True])


def test_splicing_own_embeddings_reproduces_plain_logits(tiny_models):
    """If the 'compressed' vectors are the decoder's own token embeddings, nothing changes."""
    dec = load_frozen_decoder(tiny_models["llama"])
    ids = torch.tensor([5, 17, 42, 99, 7, 250, 31, 8])
    plain = dec(input_ids=ids[None]).logits[0]
    emb = dec.get_input_embeddings()(ids)
    # text = ids minus [2:5], which come back as a block; and a second block at the end
    text = torch.cat([emb[:2], emb[5:7]])
    out = splice([text], [[emb[2:5], emb[7:]]], [[2, 4]])
    spliced = dec(inputs_embeds=out.embeds, attention_mask=out.attention_mask, position_ids=out.position_ids).logits[0]
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)
