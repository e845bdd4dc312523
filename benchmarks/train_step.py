"""Training step time on the embedded default vs plain Hugging Face forward + backward.

Ours: one `Trainer.train_step` of the recipe (encoder with pooling, projector, <Cont>, splicing,
frozen decoder, loss at supervised positions only, clipping, AdamW over the trainable groups).
Baseline: the same truncated encoder as a stock HF model and the same frozen HF decoder, run the
way a user would write it: encoder forward, every 4th hidden state kept as a stand-in for pooling,
a linear projector, decoder forward with `inputs_embeds` and `labels` (HF's own loss), backward,
AdamW over encoder + projector. Both see a batch of B x (C compressed + T target) tokens.

    python benchmarks/train_step.py --steps 5        # target: ours / baseline <= 1.15
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from transformers import AutoModel

from arc_encoder.data.batch import Batch
from arc_encoder.loading import quiet_transformers
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.registry import resolve_model
from arc_encoder.model.splice import Sample
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.trainer import Trainer


class FixedBatches:
    """The same batch every step (timing only); resumable like a real pipeline."""

    def __init__(self, batch: Batch):
        self.batch = batch

    def next_batch(self, decoder: int = 0) -> Batch:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def continuation_batch(arc: ARCModel, batch: int, compressed: int, target: int, seed: int = 0) -> Batch:
    """B samples: C random encoder tokens compressed, then T random decoder tokens predicted."""
    rng = random.Random(seed)
    enc_vocab, dec_vocab = len(arc.encoder_tokenizer), len(arc.decoder_tokenizers[0])
    samples = []
    for _ in range(batch):
        segment = [rng.randrange(100, enc_vocab) for _ in range(compressed)]
        text = [rng.randrange(100, dec_vocab) for _ in range(target)]
        samples.append(Sample(text, [segment], [0], [True] * target))
    return Batch(samples, "continuation")


def timed(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-arc4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--compressed", type=int, default=128)
    parser.add_argument("--target", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    arc = ARCModel.from_config(args.preset)
    config = config_from_dict(
        {
            "model": {"preset": args.preset},
            "data": {"kind": "pretrain"},
            "steps": args.steps + args.warmup,
            "device": "cpu",
            "out_dir": "/tmp/arc-train-step-bench",
            "log": {"progress": False},
        }
    )
    batch = continuation_batch(arc, args.batch, args.compressed, args.target)
    trainer = Trainer(config, arc, FixedBatches(batch))
    ours = timed(trainer.train_step, args.steps, args.warmup)

    # ---- baseline: stock HF modules, same depth, widths and tokens
    factor = arc.config.pooling_factor
    encoder = AutoModel.from_pretrained(
        resolve_model(arc.config.backbone), num_hidden_layers=len(arc.encoder.layers), dtype=torch.float32
    )
    encoder.train()
    decoder = arc.decoders[0]  # frozen, eval mode, as in ours
    d_enc, d_dec = encoder.config.hidden_size, decoder.config.hidden_size
    projector = torch.nn.Sequential(
        torch.nn.Linear(d_enc, arc.config.bottleneck, bias=False),
        torch.nn.Linear(arc.config.bottleneck, d_dec, bias=False),
    )
    optimizer = torch.optim.AdamW([*encoder.parameters(), *projector.parameters()], lr=1e-5)
    enc_ids = torch.tensor([s.segments[0] for s in batch.samples])  # [B, C]
    text_ids = torch.tensor([s.text_ids for s in batch.samples])  # [B, T]
    m = -(-args.compressed // factor)
    # HF shifts labels inside: every text token is a target, the first one predicted from the
    # special token's position, as in ours (method.md §13.7)
    labels = torch.cat([torch.full((args.batch, m + 1), -100), text_ids], dim=1)  # [B, m+1+T]

    def baseline_step():
        hidden = encoder(input_ids=enc_ids).last_hidden_state  # [B, C, d_enc]
        pooled = hidden[:, factor - 1 :: factor]  # [B, m, d_enc]
        special = torch.ones(args.batch, 1, d_enc)
        blocks = projector(torch.cat([pooled, special], dim=1))  # [B, m+1, d_dec]
        embeds = torch.cat([blocks, decoder.get_input_embeddings()(text_ids)], dim=1)
        loss = decoder(inputs_embeds=embeds, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*encoder.parameters(), *projector.parameters()], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    baseline = timed(baseline_step, args.steps, args.warmup)
    ours_s, base_s = statistics.median(ours), statistics.median(baseline)
    tokens = args.batch * (args.compressed + args.target)
    print(
        f"{args.preset}, batch {args.batch} x ({args.compressed} compressed + {args.target} target), "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps"
    )
    print(f"  ARC trainer step      {ours_s:7.3f} s  ({tokens / ours_s:6.0f} tokens/s)")
    print(f"  plain HF fwd+bwd+step {base_s:7.3f} s  ({tokens / base_s:6.0f} tokens/s)")
    print(f"  overhead              {ours_s / base_s:7.3f}x  (target <= 1.15)")
    print(
        json.dumps(
            {
                "preset": args.preset,
                "batch": args.batch,
                "compressed": args.compressed,
                "target": args.target,
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "ours_s": ours,
                "baseline_s": baseline,
                "ratio": ours_s / base_s,
            }
        )
    )


if __name__ == "__main__":
    main()
