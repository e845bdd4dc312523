"""Training step time and model FLOPs utilisation (MFU) on a GPU, random weights built from config.

    python benchmarks/gpu_step.py --shapes embedded,paper --steps 5

Shapes: `embedded` is the shipped pair (SmolLM2-135M minus 18 blocks -> SmolLM2-135M, pooling 4,
bottleneck 512); `paper` is the paper's (Llama-3.2-3B minus 2 blocks -> Llama-3.1-8B, pooling 8,
bottleneck 2048, activation checkpointing as the paper configs set it). Their widths are written
below from the models' public configs, so nothing is downloaded. If the paper shape at full depth
does not fit the GPU, it is measured again with `--paper-blocks` blocks per model (same widths).

FLOPs of one step (attention scores left out: at these lengths they are a few per cent, and
leaving them out can only understate MFU), with N the weights of the matrix products a token
passes through and tokens counted where those products run:
  trained encoder blocks    6 * N_block * tokens   (forward 2, backward to inputs 2, to weights 2)
  frozen encoder blocks     2 * N_block * tokens   (below the trained ones: no backward at all)
  projector (trained)       6 * N_proj * vectors
  frozen decoder blocks     4 * N_block * tokens   (forward 2, backward to inputs 2: the gradient
                                                    flows through them to the vectors; none to weights)
  decoder LM head (frozen)  4 * N_head * supervised tokens (logits are only computed there)
A pooling block counts at its pooled length (its queries); the decoder reads, per sample, the
vectors, one <Cont> token and the T target tokens. MFU = FLOPs / step time / the GPU's peak dense
bf16 rate (its data sheet); the measured rate of one large bf16 matmul is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from arc_encoder.config import ARCConfig
from arc_encoder.loading import quiet_transformers
from arc_encoder.model.arc import ARCModel
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.distributed import Runtime
from arc_encoder.training.trainer import Trainer
from train_step import FixedBatches, continuation_batch

# Public architecture facts (the models' config.json on the hub).
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
)  # fmt: skip
LLAMA_32_3B = dict(
    hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
)  # fmt: skip
LLAMA_31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
)  # fmt: skip
# Toy widths for the CPU dry run (tests/test_gpu_run.py): the same code in a second.
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=512, tie_word_embeddings=False, rope_theta=10000.0,
)  # fmt: skip
SHAPES = {
    # encoder widths, decoder widths, ARCConfig fields, batch, compressed and target tokens per sample
    "embedded": dict(encoder=SMOLLM2_135M, decoder=SMOLLM2_135M, arc=dict(drop_layers=18, pooling_factors=[4],
                     bottleneck=512), batch=16, compressed=256, target=128, checkpointing=False),
    "paper": dict(encoder=LLAMA_32_3B, decoder=LLAMA_31_8B, arc=dict(drop_layers=2, pooling_factors=[8],
                  bottleneck=2048), batch=4, compressed=1024, target=256, checkpointing=True),
    "tiny": dict(encoder=TINY, decoder=TINY, arc=dict(drop_layers=1, pooling_factors=[2], bottleneck=32),
                 batch=2, compressed=32, target=16, checkpointing=True),
}  # fmt: skip
# Dense bf16 tensor-core peak of the SXM parts, TFLOP/s (NVIDIA data sheets; "with sparsity" halved).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}


def write_random_model(folder: Path, widths: dict, blocks: int | None = None) -> str:
    """A Llama-architecture folder (config.json and a byte-level tokenizer: any text, 259 ids)
    that `ARCModel.from_config(..., pretrained=False)` builds random weights from."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    values = dict(widths, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if blocks is not None:
        values["num_hidden_layers"] = min(blocks, values["num_hidden_layers"])
    transformers.LlamaConfig(**values).save_pretrained(folder)
    symbols = ["<pad>", "<bos>", "<eos>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tokenizer = Tokenizer(models.BPE({s: i for i, s in enumerate(symbols)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(folder)
    return str(folder)


def matmul_weights(module: torch.nn.Module) -> int:
    """Weights of the matrix products in a module (2-D parameters; norms and biases left out)."""
    return sum(p.numel() for p in module.parameters() if p.dim() == 2)


def step_flops(arc: ARCModel, batch: int, compressed: int, target: int) -> dict[str, float]:
    """Model FLOPs of one training step by the formula of the module docstring."""
    factors = arc.config.pooling_factors
    layers = list(arc.encoder.layers)
    first_pooled = len(layers) - len(factors)
    tokens, encoder = compressed, 0.0
    lowest_trained = min(
        (i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), default=len(layers)
    )
    for i, layer in enumerate(layers):
        if i >= first_pooled:
            tokens = math.ceil(tokens / factors[i - first_pooled])
        per_token = 6 if i >= lowest_trained else 2
        encoder += per_token * matmul_weights(layer) * batch * tokens
    vectors = batch * tokens  # after the last pooling block
    adapter = arc.adapters[0]
    projector = 6 * (matmul_weights(adapter.down) + matmul_weights(adapter.up)) * vectors
    decoder = arc.decoders[0]
    read = batch * (tokens + 1 + target)  # vectors, <Cont>, target tokens
    blocks = 4 * sum(matmul_weights(layer) for layer in decoder.base_model.layers) * read
    head = 4 * decoder.get_output_embeddings().weight.numel() * batch * target
    return {"encoder": encoder, "projector": projector, "decoder": blocks + head}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def measured_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float | None:
    """bf16 [n, n] @ [n, n] rate on this GPU (what its tensor cores give a large product)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def build_shape(shape: dict, folder: Path, device: torch.device, blocks: int | None) -> ARCModel:
    encoder = write_random_model(folder / "encoder", shape["encoder"], blocks and blocks + shape["arc"]["drop_layers"])
    decoder = write_random_model(folder / "decoder", shape["decoder"], blocks)
    config = ARCConfig(backbone=encoder, decoders=[decoder], **shape["arc"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:  # random weights made where they run: no host copy of an 11B-parameter pair
        return ARCModel.from_config(config, pretrained=False, decoder_dtype=dtype)


def measure(arc: ARCModel, shape: dict, device: torch.device, steps: int, warmup: int, out_dir: Path) -> dict:
    """Median step time of `Trainer.train_step` between log steps (bf16 autocast on a GPU) on one
    fixed random batch."""
    config = config_from_dict(
        {
            "data": {"kind": "pretrain"},
            "steps": steps + warmup,
            "device": device.type,
            "activation_checkpointing": shape["checkpointing"],
            "out_dir": str(out_dir),
            "log": {"progress": False, "plot": False},
        }
    )
    batch = continuation_batch(arc, shape["batch"], shape["compressed"], shape["target"])
    trainer = Trainer(config, arc, FixedBatches(batch), runtime=Runtime(0, 1, device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        trainer.train_step(check=False)  # a step between log steps: no host reads
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = step_flops(arc, shape["batch"], shape["compressed"], shape["target"])
    peak = peak_tflops(device)
    achieved = sum(flops.values()) / seconds / 1e12
    return {
        "step_s": seconds,
        "step_s_all": times,
        "tokens_per_s": shape["batch"] * (shape["compressed"] + shape["target"]) / seconds,
        "tflop_per_step": {k: v / 1e12 for k, v in flops.items()},
        "achieved_tflops": achieved,
        "peak_bf16_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "trained_params": sum(p.numel() for p in arc.trained_parameters().values() if p.requires_grad),
        "frozen_params": sum(p.numel() for p in arc.decoders.parameters()),
    }


def benchmark(
    names: list[str],
    device: torch.device,
    steps: int = 5,
    warmup: int = 2,
    paper_blocks: int = 8,
    shapes: dict | None = None,
    log=print,
) -> dict:
    """{shape name: measurement}, plus the matmul rate; a shape that runs out of GPU memory at full
    depth is measured again at `paper_blocks` blocks per model."""
    shapes = shapes or SHAPES
    results: dict = {"device": str(device), "matmul_bf16_tflops": measured_matmul_tflops(device)}
    for name in names:
        shape = shapes[name]
        record = {k: shape[k] for k in ("batch", "compressed", "target", "checkpointing")}
        for blocks in (None, paper_blocks):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    arc = build_shape(shape, Path(tmp), device, blocks)
                    record.update(measure(arc, shape, device, steps, warmup, Path(tmp) / "run"))
                    decoder_blocks = len(arc.decoders[0].base_model.layers)
                    record["blocks"] = {"encoder": len(arc.encoder.layers), "decoder": decoder_blocks}
                    break
                except torch.OutOfMemoryError as e:
                    record[f"out_of_memory_at_{blocks or 'full'}_depth"] = str(e).splitlines()[0]
                finally:
                    arc = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        log(f"{name}: {json.dumps({k: v for k, v in record.items() if k != 'step_s_all'})}")
        results[name] = record
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="embedded,paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--paper-blocks", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    quiet_transformers()
    results = benchmark(args.shapes.split(","), torch.device(args.device), args.steps, args.warmup, args.paper_blocks)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
