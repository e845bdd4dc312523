"""Averaging saved models: the mean of every trained tensor, one architecture only."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.average import average_models


@pytest.fixture
def two_saved(tiny_arc, tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"m{seed}")
        tiny_arc(seed=seed).save_pretrained(paths[-1])
    return paths


def test_every_trained_tensor_is_the_mean(two_saved, tmp_path):
    a, b = (load_file(p / "model.safetensors") for p in two_saved)
    mean = average_models(ARCModel, two_saved).trained_state()
    assert mean.keys() == a.keys()
    for key in a:
        torch.testing.assert_close(mean[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-7)
    assert not torch.equal(a["adapters.0.up.weight"], b["adapters.0.up.weight"])  # the case is not trivial


def test_other_architectures_and_a_single_model_are_refused(two_saved, tiny_arc, tmp_path):
    tiny_arc(seed=3, bottleneck=16).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="differs from .* in \\['bottleneck'\\]"):
        average_models(ARCModel, [two_saved[0], tmp_path / "narrow"])
    with pytest.raises(ValueError, match="at least two"):
        average_models(ARCModel, two_saved[:1])


def test_the_command_writes_a_model_that_loads(two_saved, tmp_path):
    out = tmp_path / "soup"
    result = CliRunner().invoke(app, ["convert", "average", str(out), *map(str, two_saved)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == str(out)
    loaded = ARCModel.from_pretrained(out).trained_state()
    expected = average_models(ARCModel, two_saved).trained_state()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key
    again = CliRunner().invoke(app, ["convert", "average", str(out), *map(str, two_saved)])
    assert again.exit_code == 1 and "is not empty" in again.output
