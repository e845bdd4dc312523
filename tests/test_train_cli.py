"""`arc-encoder train` end to end with the real data pipeline on a tiny model and a tiny text file."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.saved import list_checkpoints
from training_data import tiny_run


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(tmp_path, tiny_models) -> str:
    config = tiny_run(tmp_path, tiny_models)
    config["checkpoint"] = {"every": 2, "keep": 2}
    config["eval"] = {"every": 2, "batches": 2}
    config["log"]["plot"] = True
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_train_command_trains_resumes_and_refuses(tiny_models, tmp_path):
    pytest.importorskip("arc_encoder.data.pretrain")
    runner = CliRunner()
    config = write_config(tmp_path, tiny_models)
    result = runner.invoke(app, ["train", config, "steps=2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]

    result = runner.invoke(app, ["train", config, "steps=4", "--resume"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert (tmp_path / "run" / "curves.png").is_file()
    ARCModel.from_pretrained(tmp_path / "run" / "checkpoints" / "step_00000004")

    result = runner.invoke(app, ["train", config, "optim.lr_encoder=5e-3", "--resume"])
    assert result.exit_code == 2 and "optim.lr_encoder: 0.001 -> 0.005" in result.output
    result = runner.invoke(app, ["train", config])
    assert result.exit_code == 2 and "--resume" in result.output


def test_train_command_names_bad_configs(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  kind: pretrain\n")
    result = runner.invoke(app, ["train", str(path), "optim.lr_encodr=1e-4"])
    assert result.exit_code == 2 and "'lr_encodr'" in result.output and "'optim'" in result.output
    result = runner.invoke(app, ["train", str(path), "steps=ten"])
    assert result.exit_code == 2 and "steps" in result.output
