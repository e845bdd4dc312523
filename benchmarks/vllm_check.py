"""GPU check of the vLLM backend: same greedy answers as the PyTorch decoder, and the speed of each.

Needs a CUDA machine with vLLM (pip install 'arc-encoder[vllm]'). Prompts mix a document
compressed on the fly (Doc) and stored vectors (Compressed); both paths get identical spliced
embeddings (model/generate.py prompt_embeddings), so in float32 their greedy tokens should agree except where
two logits are within kernel rounding of each other.

    python benchmarks/vllm_check.py --model smollm2-arc4 --prompts 64 --max-new-tokens 16
    python benchmarks/vllm_check.py --model runs/my-model --dtype bfloat16   # speed in serving dtype
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from arc_encoder import Doc
from arc_encoder.loading import DEFAULT_MODEL, MODEL_HELP, load_model
from arc_encoder.serving.vllm_backend import VLLMBackend
from arc_encoder.serving.worker import DecodeParams

DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after the engineer Gustave Eiffel.",
    "The Amazon rainforest covers much of the Amazon basin of South America, mostly in Brazil.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
    "Marie Curie was the first person to win Nobel Prizes in two different sciences.",
]
QUESTIONS = ["Who is it named after?", "Where is it?", "What is it?", "Who won?"]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="vLLM dtype (float32 for the agreement check)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")

    model = load_model(args.model).to("cuda").eval()
    stored = model.compress(DOCUMENTS)  # Compressed parts, as a store would give them back
    prompts = []
    for i in range(args.prompts):
        k = i % len(DOCUMENTS)
        document = stored[k] if i % 2 else Doc(DOCUMENTS[k])
        prompts.append(["Document: ", document, f"\nQuestion: {QUESTIONS[k]}\nAnswer:"])

    def hf():
        return model.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=len(prompts))

    backend = VLLMBackend(model, 0, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization)
    params = DecodeParams(max_new_tokens=args.max_new_tokens)

    def vllm():
        return backend.generate(prompts, 0, params)

    results = {}
    for name, run in (("hf", hf), ("vllm", vllm)):
        run()  # warm-up: CUDA graphs, allocator, kernels
        torch.cuda.synchronize()
        t = time.perf_counter()
        outputs = run()
        torch.cuda.synchronize()
        results[name] = (outputs, time.perf_counter() - t)
    (hf_out, hf_s), (vllm_out, vllm_s) = results["hf"], results["vllm"]
    prefix = [common_prefix(a.token_ids, b.token_ids) for a, b in zip(hf_out, vllm_out)]
    report = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "vllm_dtype": args.dtype,
        "identical_answers": sum(a.token_ids == b.token_ids for a, b in zip(hf_out, vllm_out)),
        "same_first_token": sum(
            p >= 1 or (not a.token_ids and not b.token_ids) for p, a, b in zip(prefix, hf_out, vllm_out)
        ),
        "mean_common_prefix": sum(prefix) / len(prefix),
        "prompt_lengths_equal": all(a.prompt_length == b.prompt_length for a, b in zip(hf_out, vllm_out)),
        "hf_seconds": round(hf_s, 3),
        "vllm_seconds": round(vllm_s, 3),
        "hf_tokens_per_s": round(sum(len(o.token_ids) for o in hf_out) / hf_s, 1),
        "vllm_tokens_per_s": round(sum(len(o.token_ids) for o in vllm_out) / vllm_s, 1),
        "example": {"hf": hf_out[0].text, "vllm": vllm_out[0].text},
    }
    print(json.dumps(report, indent=2))
    if report["same_first_token"] < 0.9 * len(prompts) or not report["prompt_lengths_equal"]:
        raise SystemExit("vLLM and the PyTorch decoder disagree: see the report above")


if __name__ == "__main__":
    main()
