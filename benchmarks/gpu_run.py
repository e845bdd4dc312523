"""The prepared GPU run: one command for a bare single-GPU machine without network, where only
PyTorch and transformers are installed (docs/scale.md, "Prepared GPU run").

    python3 benchmarks/gpu_run.py OUT [--steps tests,bench,answers] [--minutes 8] [--dry-run]

In order, within `--minutes` of wall time for this call:
  1. installs the carried wheels (.gpurun/wheels, `make gpu-wheels`) that the machine lacks;
  2. stages the carried parts of the embedded SmolLM2 GGUF (.gpurun/parts, `make gpu-parts`) into
     the stage folder, which outlives this call while the machine stays warm, and the carried
     SQuAD files (.gpurun/data, `make gpu-data`); with `answers` asked for, refuses at once,
     naming them, while parts or data are missing;
  3. tests: `pytest -m gpu tests/test_gpu.py` (OUT/gpu-tests.log);
  4. bench: step time and MFU at the embedded and paper shapes (benchmarks/gpu_step.py; OUT/bench.json);
  5. answers: configs/smollm2-arc4-answers.yaml from the shipped smollm2-arc4, bf16, for the minutes
     left, then its delta (`arc-encoder convert delta --float16 --max-mb 16`, OUT/delta/) and its
     metrics (OUT/answers-metrics.jsonl).
OUT/results.json sums up every step; OUT/run.log is this script's output. Exit status 0 when every
step asked for succeeded, 1 when one failed, 3 when parts or data are missing.

`--dry-run` is the same run on the CPU in seconds: toy widths for the benchmark, a tiny random
model saved as the warm start, three training steps; the staged file (any file: tests split a
small one) is only assembled and checked, not converted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import carried_wheels
import staged_files

ROOT = Path(__file__).resolve().parents[1]
# What `carry` brings (wheels/, parts/, data/; ignored by git), and where it is kept between calls.
CARRIED = Path(os.environ.get("ARC_GPURUN_CARRIED", ROOT / ".gpurun"))
STAGE = Path(os.environ.get("ARC_GPURUN_STAGE", Path.home() / ".cache" / "arc-gpurun"))
ANSWERS_CONFIG = ROOT / "configs" / "smollm2-arc4-answers.yaml"
DATA_FILES = ("squad/train.jsonl", "squad/train_extra.jsonl", "squad/dev.jsonl")  # what the config reads
RESERVE_MINUTES = 1.0  # after training: the delta, the metrics, the summary
MISSING = 3  # exit status: parts or data not all here


class Run:
    """Wall-time budget, a log mirrored to OUT/run.log, and the summary written to OUT/results.json."""

    def __init__(self, out: Path, minutes: float):
        self.out, self.minutes, self.started = out, minutes, time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "run.log", "a", encoding="utf-8")
        self.results: dict = {"minutes": minutes, "steps": {}}

    def say(self, message: str) -> None:
        line = f"[{self.elapsed() / 60:5.2f} min] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def minutes_left(self) -> float:
        return self.minutes - self.elapsed() / 60

    def step(self, name: str, job) -> bool:
        """Run one step, recording its result, seconds and any error; True if it succeeded."""
        self.say(f"{name}: start")
        began = time.monotonic()
        record: dict = {}
        try:
            record = job() or {}
            record["ok"] = record.get("ok", True)
        except Exception as e:  # a failed step is reported; the later steps still run
            record = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.log_file.write(traceback.format_exc())
        record["seconds"] = round(time.monotonic() - began, 1)
        self.results["steps"][name] = record
        self.say(f"{name}: {'ok' if record['ok'] else 'FAILED ' + record.get('error', '')} ({record['seconds']} s)")
        self.save()
        return record["ok"]

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))


def python_path() -> str:
    """src/ and the installed wheels first, for this process's children."""
    return os.pathsep.join([str(ROOT / "src"), str(STAGE / "site"), os.environ.get("PYTHONPATH", "")])


def prepare(run: Run, answers: bool, dry_run: bool) -> int:
    """Wheels in, carried parts and data staged; MISSING if the answers step could not run."""
    installed = carried_wheels.install(CARRIED / "wheels", STAGE / "site") if (CARRIED / "wheels").is_dir() else []
    sys.path[:0] = [str(ROOT / "src"), str(STAGE / "site")]
    os.environ["PYTHONPATH"] = python_path()
    run.results["wheels_installed"] = installed
    run.say(f"wheels installed: {installed or 'none needed'}")
    if (CARRIED / "parts").is_dir():
        arrived = staged_files.stage(CARRIED / "parts", STAGE / "parts")
        run.say(f"model parts staged now: {arrived or 'none'}")
    if (CARRIED / "data").is_dir():
        shutil.copytree(CARRIED / "data", STAGE / "data", dirs_exist_ok=True)
    if not answers:
        return 0
    try:
        model_file = staged_files.assemble(STAGE / "parts", STAGE / "model.gguf")
    except staged_files.MissingParts as e:
        run.say(f"refused: {e}")
        return MISSING
    run.results["model_file"] = {"path": str(model_file), "sha256": staged_files.sha256_of(model_file)}
    absent = [f for f in DATA_FILES if not (STAGE / "data" / f).is_file()]
    if absent:
        run.say(f"refused: the answers step needs {absent} under .gpurun/data (`make gpu-data`), carried in a call")
        return MISSING
    return 0


def gpu_tests(run: Run) -> dict:
    log = run.out / "gpu-tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    command += [str(ROOT / "tests" / "test_gpu.py")]
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=240)
    summary = log.read_text().strip().splitlines()[-1:]
    return {"ok": done.returncode == 0, "exit_status": done.returncode, "summary": summary[0] if summary else ""}


def bench(run: Run, device, dry_run: bool) -> dict:
    import gpu_step

    names = ["tiny"] if dry_run else ["embedded", "paper"]
    results = gpu_step.benchmark(names, device, steps=2 if dry_run else 5, warmup=1 if dry_run else 2, log=run.say)
    (run.out / "bench.json").write_text(json.dumps(results, indent=2))
    return {name: {k: results[name].get(k) for k in ("step_s", "tokens_per_s", "mfu", "blocks")} for name in names}


def tiny_warm_start(folder: Path) -> str:
    """The dry run's stand-in for smollm2-arc4: a tiny random ARC model saved as a model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import gpu_step
    from arc_encoder.config import ARCConfig
    from arc_encoder.model.arc import ARCModel

    backbone = gpu_step.write_random_model(folder / "backbone", gpu_step.TINY)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(backbone)).save_pretrained(backbone)  # its weights
    config = ARCConfig(backbone=backbone, drop_layers=1, decoders=[backbone], bottleneck=32, pooling_factors=[2])
    ARCModel.from_config(config).save_pretrained(folder / "init")
    return str(folder / "init")


def answers(run: Run, device, dry_run: bool) -> dict:
    from arc_encoder.model.registry import EMBEDDED, materialise_embedded
    from arc_encoder.model.saved import latest_checkpoint
    from arc_encoder.training.config import load_config
    from arc_encoder.training.trainer import run as train

    work = STAGE / "answers"
    shutil.rmtree(work, ignore_errors=True)  # a fresh run each time (an earlier one's checkpoints would refuse it)
    os.environ["ARC_ENCODER_DATA"] = str(STAGE / "data")
    overrides = [f"out_dir={work / 'run'}", f"device={device.type}", "log.progress=false", "log.plot=false"]
    overrides += ["checkpoint.every=0", "precision=bf16" if device.type == "cuda" else "precision=fp32"]
    if dry_run:
        overrides += [f"model.init_from={tiny_warm_start(work)}", "steps=3", "optim.warmup_steps=1", "batch_size=2"]
        overrides += ["eval.every=2", "eval.batches=1", "data.max_doc_tokens=96", "data.shuffle_buffer=4"]
    else:  # the shipped encoder's backbone and decoder, from the staged GGUF into the cache
        os.environ.setdefault("ARC_ENCODER_CACHE", str(STAGE / "cache"))
        materialise_embedded(EMBEDDED["smollm2-135m"], parts=[STAGE / "model.gguf"])
    minutes = run.minutes_left() - (0 if dry_run else RESERVE_MINUTES)
    if minutes <= 0.2:
        return {"ok": False, "error": f"only {minutes:.2f} min left for training: raise --minutes"}
    config = load_config(ANSWERS_CONFIG, [*overrides, f"time_limit_minutes={minutes:.2f}"])
    run.say(f"answers: training for up to {minutes:.2f} min, {config.precision} on {device}")
    train(config)
    checkpoint = latest_checkpoint(work / "run")
    metrics = work / "run" / "metrics.jsonl"
    shutil.copyfile(metrics, run.out / "answers-metrics.jsonl")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    delta = subprocess.run(
        [sys.executable, "-m", "arc_encoder", "convert", "delta", str(checkpoint), str(run.out / "delta")]
        + ["--float16", "--max-mb", "16"],
        capture_output=True,
        text=True,
    )
    if delta.returncode != 0:
        return {"ok": False, "error": f"convert delta: {delta.stderr.strip()}"}
    train_records = [r for r in records if "loss" in r]
    return {
        "steps": train_records[-1]["step"] if train_records else 0,
        "last_loss_avg": train_records[-1].get("loss_avg") if train_records else None,
        "tokens_per_s": train_records[-1].get("tokens_per_s") if train_records else None,
        "eval": [r for r in records if "eval" in r][-1:],
        "delta": json.loads(delta.stdout.strip().splitlines()[-1]),
    }


def describe_machine(device) -> dict:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for results.json, logs, bench.json and the delta")
    parser.add_argument(
        "--steps", default="tests,bench,answers", help="tests,bench,answers or a part of them; stage: only stage"
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="wall time for this call, everything included")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, toy sizes (CI)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - {"stage", "tests", "bench", "answers"})
    if unknown:
        parser.error(f"unknown step(s) {unknown}: use stage, tests, bench, answers")
    run = Run(args.out, args.minutes)
    status = prepare(run, "answers" in steps, args.dry_run)
    if status:
        run.results["refused"] = True
        run.save()
        return status
    import torch

    from arc_encoder.loading import quiet_transformers

    quiet_transformers()
    if not (args.dry_run or torch.cuda.is_available()):
        run.say("refused: no CUDA device here (use --dry-run for the CPU rehearsal)")
        return 1
    device = torch.device("cpu" if args.dry_run else "cuda")
    run.results["machine"] = describe_machine(device)
    jobs = {"tests": lambda: gpu_tests(run), "bench": lambda: bench(run, device, args.dry_run)}
    jobs["answers"] = lambda: answers(run, device, args.dry_run)
    jobs["stage"] = lambda: {"staged": sorted(p.name for p in (STAGE / "parts").glob("*.part*"))}
    ok = [run.step(name, jobs[name]) for name in steps]
    run.say(f"done in {run.elapsed() / 60:.2f} min; results in {args.out / 'results.json'}")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
