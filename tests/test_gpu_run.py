"""The prepared GPU run (benchmarks/gpu_run.py) rehearsed on the CPU: staged parts refused until all
have arrived, then tests, benchmark and the answers stage end to end in seconds; the step FLOPs
formula against a hand count; the carried-wheel list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import carried_wheels  # noqa: E402
import staged_files  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_run.py"


def squad_lines(n: int, start: int = 0) -> str:
    """SQuAD records in the data folder's format (one question per line)."""
    lines = []
    for i in range(start, start + n):
        context = f"Town {i} was founded in {1800 + i} by a miller named Arno {i}. It lies on a river."
        answer = f"{1800 + i}"
        record = {"id": str(i), "title": f"Town_{i}", "context": context, "question": f"When was town {i} founded?"}
        lines.append(json.dumps({**record, "answers": [answer], "answer_starts": [context.index(answer)]}))
    return "\n".join(lines) + "\n"


def gpu_run(tmp_path: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ARC_GPURUN_CARRIED": str(tmp_path / "carried"), "ARC_GPURUN_STAGE": str(tmp_path / "stage")}
    env["PYTHONPATH"] = str(ROOT / "src")
    command = [sys.executable, str(SCRIPT), str(tmp_path / out), "--dry-run", *args]
    # A guard against a hang, not a speed check: the dry run takes about a minute alone, and several
    # times that on a machine busy with other work (a 170 s limit failed beside a training run).
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def test_split_stage_and_assemble_check_every_part(tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(2500))
    manifest = staged_files.split(source, tmp_path / "parts", part_bytes=1000)
    assert [p["bytes"] for p in manifest["parts"]] == [1000, 1000, 500]
    stage = tmp_path / "stage"
    (tmp_path / "parts" / "model.bin.part3").rename(tmp_path / "later")  # arrives with a later call
    assert staged_files.stage(tmp_path / "parts", stage) == ["model.bin.part1", "model.bin.part2"]
    with pytest.raises(staged_files.MissingParts, match=r"needs 3 parts; missing here: model.bin.part3"):
        staged_files.assemble(stage, tmp_path / "whole")
    corrupt = tmp_path / "parts" / "model.bin.part3"
    corrupt.write_bytes(b"x" * 500)
    with pytest.raises(ValueError, match="part3: SHA-256 differs from the manifest"):
        staged_files.stage(tmp_path / "parts", stage)
    (tmp_path / "later").rename(corrupt)
    assert staged_files.stage(tmp_path / "parts", stage) == ["model.bin.part3"]
    assert staged_files.assemble(stage, tmp_path / "whole").read_bytes() == source.read_bytes()


def test_the_dry_run_refuses_missing_parts_then_runs_end_to_end(tmp_path):
    carried = tmp_path / "carried"
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(3000))
    staged_files.split(source, carried / "parts", part_bytes=2000)
    (carried / "parts" / "model.gguf.part2").rename(tmp_path / "part2")
    (carried / "data" / "squad").mkdir(parents=True)
    (carried / "data" / "squad" / "train.jsonl").write_text(squad_lines(12))
    (carried / "data" / "squad" / "train_extra.jsonl").write_text(squad_lines(6, start=50))
    (carried / "data" / "squad" / "dev.jsonl").write_text(squad_lines(6, start=100))

    # first call: part 1 only; the answers step is refused at once, naming the part missing
    first = gpu_run(tmp_path, "out1")
    assert first.returncode == 3, first.stdout + first.stderr
    assert "missing here: model.gguf.part2" in first.stdout
    assert json.loads((tmp_path / "out1" / "results.json").read_text())["refused"] is True

    # second call carries part 2: staged, assembled, checked; every step runs
    (tmp_path / "part2").rename(carried / "parts" / "model.gguf.part2")
    second = gpu_run(tmp_path, "out2", "--minutes", "2")
    assert second.returncode == 0, second.stdout + second.stderr + (tmp_path / "out2" / "run.log").read_text()
    out = tmp_path / "out2"
    results = json.loads((out / "results.json").read_text())
    assert results["model_file"]["sha256"] == staged_files.sha256_of(source)
    steps = results["steps"]
    assert all(steps[name]["ok"] for name in ("tests", "bench", "answers")), steps
    assert "skipped" in steps["tests"]["summary"]  # no CUDA here: the GPU tests skip
    bench = json.loads((out / "bench.json").read_text())
    assert bench["tiny"]["step_s"] > 0 and bench["tiny"]["mfu"] is None  # no peak rate known for a CPU
    assert steps["answers"]["steps"] == 3 and steps["answers"]["eval"]
    assert 0 < steps["answers"]["delta"]["megabytes"] <= 16
    assert {p.name for p in (out / "delta").iterdir()} == {"arc_config.json", "model.safetensors"}
    # what comes back from the device: at most 8 files, at most 2 folders down
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files), files


def test_step_flops_match_a_hand_count():
    import gpu_step
    from arc_encoder.config import ARCConfig
    from arc_encoder.model.arc import ARCModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = gpu_step.write_random_model(Path(tmp), gpu_step.TINY)
        config = ARCConfig(backbone=folder, drop_layers=1, decoders=[folder], bottleneck=32, pooling_factors=[2])
        arc = ARCModel.from_config(config, pretrained=False)
    # a Llama block of width 64: q, o 64x64; k, v 64x32 (2 of 4 heads); gate, up, down 64x128
    block = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    b, c, t = 2, 32, 16
    encoder = 6 * block * b * c + 6 * block * b * (c // 2)  # block 2 pools by 2: it runs on 16 tokens
    projector = 6 * (64 * 32 + 32 * 64) * b * (c // 2)
    decoder = 4 * 3 * block * b * (c // 2 + 1 + t) + 4 * 512 * 64 * b * t
    assert gpu_step.step_flops(arc, b, c, t) == {"encoder": encoder, "projector": projector, "decoder": decoder}
    arc.encoder.layers[0].requires_grad_(False)  # a frozen lower block: forward only
    assert gpu_step.step_flops(arc, b, c, t)["encoder"] == encoder - 4 * block * b * c


def test_carried_wheels_leave_out_what_torch_and_transformers_bring():
    listed = dict(line.split("==") for line in carried_wheels.carried())
    assert "gguf" in listed and "pytest" in listed  # needed for the GGUF and the GPU tests
    assert not {"torch", "transformers", "numpy", "tokenizers", "safetensors"} & set(listed)
    assert carried_wheels.wheel_distribution(Path("charset_normalizer-3.5.3-py3-none-any.whl")) == "charset-normalizer"
