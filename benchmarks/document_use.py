"""Does a trained ARC model read its documents? Held-out losses under four conditions.

For held-out samples of each training task (fine-tuning: SQuAD answers; pretraining:
reconstruction and continuation of prose) the frozen decoder's loss on the supervised tokens is
measured with

  right      the sample's own compressed documents (what training optimises);
  mismatched the last document replaced by another sample's, compressed (same prompt format);
  none       no document at all;
  text       the documents written out as decoder tokens (the open-book ceiling).

`mismatched - right` is what reading the right document is worth. When it is near zero, a gain of
`right` over `none` comes from the vectors teaching the format (e.g. short answers), not content.
Exact-match scores can hide this; the evaluation's `mismatched` method is its generation twin.

    python benchmarks/document_use.py --model runs/quickstart/model --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arc_encoder.cli import quiet_transformers
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.splice import Sample
from arc_encoder.quickstart import QuickstartConfig, finetune_config, find_data, pretrain_config
from arc_encoder.training.distributed import Runtime, pick_device
from arc_encoder.training.trainer import build_data, held_out_batches

CONDITIONS = ("right", "mismatched", "none", "text")


def without_documents(s: Sample) -> Sample:
    return Sample(s.text_ids, [], [], s.targets)


def documents_as_text(s: Sample, arc: ARCModel, decoder: int) -> Sample:
    """Each segment decoded from encoder tokens and re-tokenized for the decoder, unsupervised."""
    ids, targets, previous = [], [], 0
    for segment, offset in zip(s.segments, s.offsets):
        text = arc.encoder_tokenizer.decode(segment)
        tokens = arc.decoder_tokenizers[decoder](text, add_special_tokens=False)["input_ids"]
        ids += s.text_ids[previous:offset] + tokens
        targets += s.targets[previous:offset] + [False] * len(tokens)
        previous = offset
    return Sample(ids + s.text_ids[previous:], [], [], targets + s.targets[previous:])


def mismatched(samples: list[Sample]) -> list[Sample]:
    """Each sample's last segment swapped for the next sample's that differs (wrapping around)."""
    out = []
    for i, s in enumerate(samples):
        others = (samples[(i + k) % len(samples)] for k in range(1, len(samples)))
        other = next((o for o in others if o.segments and o.segments[-1] != s.segments[-1]), None)
        if other is None:
            raise ValueError("every held-out sample has the same document: nothing to swap in")
        out.append(Sample(s.text_ids, s.segments[:-1] + [other.segments[-1]], s.offsets, s.targets))
    return out


@torch.no_grad()
def losses(arc: ARCModel, batches, decoder: int = 0, batch_size: int = 4) -> dict[str, dict[str, float]]:
    """{task: {condition: mean loss per supervised token}} over the held-out batches."""
    by_task: dict[str, tuple[str, list[Sample]]] = {}
    for b in batches:
        special, samples = by_task.setdefault(b.task, (b.special, []))
        samples.extend(s for s in b.samples if s.segments)
    table = {}
    for task, (special, samples) in by_task.items():
        variants = {"right": samples, "mismatched": mismatched(samples),
                    "none": [without_documents(s) for s in samples],
                    "text": [documents_as_text(s, arc, decoder) for s in samples]}
        table[task] = {}
        for condition in CONDITIONS:
            total, tokens = 0.0, 0
            group = variants[condition]
            for i in range(0, len(group), batch_size):
                loss, n = arc.loss(group[i : i + batch_size], decoder, special)
                total, tokens = total + loss.item(), tokens + n
            table[task][condition] = total / tokens
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--data", default=None, help="folder with prose/ and squad/ (as the quickstart)")
    parser.add_argument("--batches", type=int, default=10, help="held-out batches per stage")
    parser.add_argument("--shots", type=int, default=1, help="shots in the fine-tuning prompts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    quiet_transformers()
    data = find_data(args.data)
    arc = ARCModel.from_pretrained(args.model).to(pick_device(args.device)).eval()
    runtime = Runtime(0, 1, arc.device)
    q = QuickstartConfig(finetune_shots=args.shots)
    factor = arc.config.pooling_factor
    configs = [pretrain_config(q, data, Path("unused"), 2),
               finetune_config(q, data, Path(args.model), factor, Path("unused"), 2)]
    table = {}
    for config in configs:
        held = build_data(config, arc, runtime, overrides={"loop": False, **config.eval.data,
                                                            "shuffle_buffer": 256})
        table.update(losses(arc, held_out_batches(held, [1.0], args.batches)[0]))
    print("| task | right | mismatched | none | text | mismatched - right | text gain kept |")
    print("|---|---|---|---|---|---|---|")
    for task, row in table.items():
        kept = (row["none"] - row["right"]) / (row["none"] - row["text"])
        print(f"| {task} | " + " | ".join(f"{row[c]:.3f}" for c in CONDITIONS)
              + f" | {row['mismatched'] - row['right']:+.3f} | {kept:.0%} |")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "losses": table}, indent=2))


if __name__ == "__main__":
    main()
