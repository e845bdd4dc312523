"""Few-shot evaluation speed with and without the shared prompt start.

Every prompt of a k-shot evaluation starts with the same shots. `generate` runs the decoder once
over that start and reuses its keys and values (`share_prefix=True`, the default); this benchmark
evaluates the same questions both ways, reports seconds per answer per method and checks that
every prediction is identical. Speed only: an untrained projector is as fast as a trained one.

    python benchmarks/eval_speed.py --questions 40 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from arc_encoder import ARCModel
from arc_encoder.evaluation.runner import evaluate
from arc_encoder.evaluation.tasks import load_jsonl
from arc_encoder.loading import DEFAULT_MODEL, MODEL_HELP, UNTRAINED, load_model, quiet_transformers

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev.jsonl"


def run(model: ARCModel, examples, methods, questions: int, shots: int, share: bool) -> tuple[dict, float]:
    model._prefix_memo = None
    model.generate = functools.partial(ARCModel.generate, model, share_prefix=share)
    start = time.perf_counter()
    result = evaluate(
        model, "squad", examples, methods, shots=shots, limit=questions, seed=0, shuffle=True, progress=False
    )
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL + UNTRAINED, help=MODEL_HELP)
    parser.add_argument("--data", default=str(DEV))
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--methods", default="closed,open,arc,truncate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the timings as JSON here")
    args = parser.parse_args()
    quiet_transformers()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same untrained projector for both runs
    model = load_model(args.model).eval()
    examples = load_jsonl(args.data)
    methods = args.methods.split(",")
    whole, whole_s = run(model, examples, methods, args.questions, args.shots, share=False)
    shared, shared_s = run(model, examples, methods, args.questions, args.shots, share=True)

    rows = []
    print("| method | s/answer, whole prompts | s/answer, shared start | speed-up | same predictions |")
    print("|---|---|---|---|---|")
    for name in methods:
        a, b = whole["metrics"][name]["seconds_per_example"], shared["metrics"][name]["seconds_per_example"]
        same = sum(
            x["prediction"] == y["prediction"] for x, y in zip(whole["predictions"][name], shared["predictions"][name])
        )
        rows.append({"method": name, "whole_s": a, "shared_s": b, "same": same, "questions": args.questions})
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {same}/{args.questions} |")
    print(f"total: {whole_s:.0f} s -> {shared_s:.0f} s ({whole_s / shared_s:.2f}x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "whole_s": whole_s, "shared_s": shared_s}, indent=2))


if __name__ == "__main__":
    main()
