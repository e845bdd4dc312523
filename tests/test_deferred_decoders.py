"""A saved model reads each decoder the first time it is used, and answers as one read eagerly."""

import pytest
import torch

from arc_encoder import Doc
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.deferred import DeferredDecoder
from arc_encoder.model.saved import load
from conftest import build_tiny_arc

TEXT = "Paris is the capital of France and its largest city. The zebra is mentioned here."
PROMPT = ["Document: ", Doc(TEXT), "\nQuestion: what is mentioned?\nAnswer:"]


@pytest.fixture(scope="module")
def folder(tiny_models, tmp_path_factory):
    """Two tiny decoders of different widths: llama (0) and llama-wide (1)."""
    path = tmp_path_factory.mktemp("deferred") / "model"
    decoders = [tiny_models["llama"], tiny_models["llama-wide"]]
    build_tiny_arc(tiny_models, seed=7, decoders=decoders, chunk_tokens=16).save_pretrained(path)
    return path


def read(model):
    return [model.decoders.is_read(i) for i in range(len(model.decoders))]


def answer(model, decoder):
    torch.manual_seed(0)
    return model.generate([PROMPT], decoder=decoder, max_new_tokens=6)[0].text


def test_nothing_is_read_before_use_and_only_the_used_decoder_after(folder):
    model = ARCModel.from_pretrained(folder).eval()
    assert read(model) == [False, False]
    assert model.decoder_widths == [64, 96]
    model.compress([TEXT], decoder=1)  # the encoder and adapter only (and the tokenizer, to count)
    assert read(model) == [False, False]
    answer(model, "llama-wide")
    assert read(model) == [False, True]
    assert isinstance(model.decoders._modules["0"], DeferredDecoder)


def test_answers_equal_those_of_a_model_read_eagerly(folder):
    lazy = ARCModel.from_pretrained(folder).eval()
    eager = load(ARCModel, folder).eval()
    assert read(eager) == [True, True]
    for decoder in (0, 1):
        assert answer(lazy, decoder) == answer(eager, decoder)
    for a, b in zip(lazy.decoders, eager.decoders):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name


def test_a_decoder_read_late_takes_the_models_dtype_and_saving_reads_none(folder, tmp_path):
    model = ARCModel.from_pretrained(folder).to_dtype(torch.bfloat16).eval()
    assert model.decoders[1].dtype == torch.bfloat16
    assert read(model) == [False, True]
    model.save_pretrained(tmp_path / "again")
    assert read(model) == [False, True]
    assert ARCModel.from_pretrained(tmp_path / "again").decoder_widths == [64, 96]


def test_a_replacement_of_another_width_is_refused_on_use(folder, tiny_models):
    model = ARCModel.from_pretrained(folder, decoders=[tiny_models["llama"], tiny_models["llama"]])
    model.decoders[0]
    with pytest.raises(ValueError, match="width 64, but this model's adapter for it was trained for width 96"):
        model.decoders[1]


def test_training_reads_every_decoder(folder, tmp_path):
    from arc_encoder.training.config import config_from_dict
    from arc_encoder.training.trainer import Trainer

    model = ARCModel.from_pretrained(folder)
    config = config_from_dict(
        {
            "model": {"init_from": str(folder)},
            "data": {"kind": "pretrain"},
            "steps": 2,
            "decoder_weights": [1.0, 0.0],
            "out_dir": str(tmp_path),
        }
    )
    Trainer(config, model, data=[])
    assert read(model) == [True, True]
