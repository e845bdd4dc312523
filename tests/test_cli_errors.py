"""`arc-encoder` turns a user's mistake into one line and exit code 2; --debug shows the traceback."""

import sys

import pytest

from arc_encoder.cli import _options, main


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["arc-encoder", *args])
    monkeypatch.setitem(_options, "debug", False)
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    return exit_.value.code, err


@pytest.fixture
def model_dir(saved_model):
    return saved_model[0]


def cases(model, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = str(tmp_path / "v.safetensors")
    use = ["compress", "--model", model]
    return [
        ([*use, "   ", "--out", out], "cannot compress an empty or whitespace-only document"),
        (
            [*use, "@" + str(tmp_path / "missing.txt"), "--out", out],
            "missing.txt: no such file",
        ),
        (
            [*use, "@" + str(tmp_path / "latin1.txt"), "--out", out],
            "latin1.txt: not UTF-8 text",
        ),
        ([*use, "a text", "--out", str(tmp_path / "no" / "v.st")], "does not exist"),
        ([*use, "a text", "--out", out, "--decoder", "3"], "decoder index 3 does not exist"),
        (
            ["compress", "--model", str(tmp_path / "nothing"), "a text", "--out", out],
            "neither a saved model folder nor a model name",
        ),
        ([*use, "caf\udce9", "--out", out], "the text is not valid UTF-8"),
    ]


def test_user_mistakes_are_one_line_with_exit_code_2(model_dir, tmp_path, monkeypatch, capsys):
    for args, message in cases(model_dir, tmp_path):
        code, err = run_main(monkeypatch, capsys, *args)
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_debug_shows_the_traceback(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["arc-encoder", "--debug", "compress", "--model", model_dir, "  ", "--out", str(tmp_path / "v")]
    )
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        main()
