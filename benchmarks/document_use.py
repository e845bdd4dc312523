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
A second table lets the decoder write the supervised tokens greedily (reconstructions: tokens at
their place, exact spans, ROUGE-L; answers: SQuAD EM/F1 with the right and another document).
Exact-match scores can hide this; the evaluation's `mismatched` method is its generation twin.

    python benchmarks/document_use.py [--model smollm2-arc4] [--decoder NAME] [--data ../shared/data] [--span 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arc_encoder.evaluation.content import CONDITIONS, content_report, describe
from arc_encoder.loading import DEFAULT_MODEL, MODEL_HELP, quiet_transformers
from arc_encoder.model.arc import ARCModel
from arc_encoder.quickstart import QuickstartConfig, find_data, finetune_stage_config, pretrain_stage_config
from arc_encoder.training.distributed import Runtime, pick_device
from arc_encoder.training.trainer import build_pipeline, held_out_batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--data", default=None, help="folder with prose/ and squad/ (as the quickstart)")
    parser.add_argument("--batches", type=int, default=10, help="held-out batches per stage")
    parser.add_argument(
        "--shots", type=int, default=None, help="shots in the fine-tuning prompts (default: its config's)"
    )
    parser.add_argument("--reconstruct", type=int, default=3, help="documents reconstructed greedily")
    parser.add_argument(
        "--span", type=int, default=None, help="tokens per held-out prose span (default: pretraining's)"
    )
    parser.add_argument("--decoder", default="0", help="the decoder measured: a name or an index")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args()
    quiet_transformers()
    data = find_data(args.data)
    arc = ARCModel.from_pretrained(args.model).to(pick_device(args.device)).eval()
    decoder = arc.decoder_index(args.decoder)
    runtime = Runtime(0, 1, arc.device)
    q = QuickstartConfig(finetune_shots=args.shots)
    factor = arc.config.pooling_factor
    configs = [
        pretrain_stage_config(q, data, Path("unused")),  # the held-out data of the shipped model's stages
        finetune_stage_config(q, data, args.model, factor, Path("unused")),
    ]
    if args.span:
        configs[0].data.update(seq_len=args.span, compress_tokens=args.span, target_tokens=args.span)
    table, reconstructions = {}, None
    for config in configs:
        held = build_pipeline(config, arc, runtime, overrides={"loop": False, **config.eval.data})
        weights = [float(i == decoder) for i in range(len(arc.decoders))]  # held-out batches for this decoder
        batches = held_out_batches(held, weights, args.batches)[decoder]
        texts = None
        if config.data["kind"] == "pretrain" and args.reconstruct:
            texts = [
                arc.encoder_tokenizer.decode(b.samples[0].segments[0], skip_special_tokens=True)
                for b in batches[: args.reconstruct]
            ]
        report = content_report(arc, batches, decoder, reconstruct=texts)
        table.update(report["tasks"])
        reconstructions = report.get("reconstructions", reconstructions)
    print("\n".join(describe(table)))
    print("| task | right | mismatched | none | text | mismatched - right | text gain kept |")
    print("|---|---|---|---|---|---|---|")
    for task, row in table.items():
        kept = (row["none"] - row["right"]) / (row["none"] - row["text"])
        print(
            f"| {task} | "
            + " | ".join(f"{row[c]:.3f}" for c in CONDITIONS)
            + f" | {row['mismatched'] - row['right']:+.3f} | {kept:.0%} |"
        )
    print("\nWritten greedily from the vectors (teacher forcing overstates copying):")
    print("| task | tokens at their place | exact spans | ROUGE-L | answer EM | answer F1 | EM, another's document |")
    print("|---|---|---|---|---|---|---|")
    for task, row in table.items():
        cells = [row.get(k) for k in ("greedy_accuracy", "greedy_exact", "greedy_rouge_l")]
        cells += [row.get(k) for k in ("answer_em", "answer_f1", "answer_em_mismatched")]
        print(f"| {task} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "decoder": arc.config.decoders[decoder],
                    "losses": table,
                    "reconstructions": reconstructions,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
