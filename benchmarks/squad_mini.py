"""squad-mini: the project's quality figure. The quickstart recipe with a bigger budget, fine-tuned
at factors 4 and 8, evaluated on at least 1,000 held-out SQuAD questions.

    python benchmarks/squad_mini.py --budget-minutes 120 --questions 1000 --out runs/squad-mini

It prints the Markdown table and writes report.json in --out. Recipe knobs the paper studies
(shares of the budget, shots, batch sizes) are options; record what moved the number.
"""

from __future__ import annotations

import argparse

from arc_encoder.loading import quiet_transformers
from arc_encoder.quickstart import QuickstartConfig, run_quickstart


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=120)
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--finetune-shots", type=int, default=1)
    parser.add_argument("--eval-shots", type=int, default=5)
    parser.add_argument("--pretrain-share", type=float, default=0.45)
    parser.add_argument("--finetune-share", type=float, default=0.30)
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--finetune-batch", type=int, default=4)
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/squad-mini")
    parser.add_argument("--resume", action="store_true", help="reuse the finished training stages in --out")
    args = parser.parse_args()
    quiet_transformers()
    run_quickstart(
        QuickstartConfig(
            budget_minutes=args.budget_minutes,
            out=args.out,
            data=args.data,
            finetune_factors=args.factors,
            finetune_shots=args.finetune_shots,
            eval_shots=args.eval_shots,
            eval_questions=args.questions,
            pretrain_share=args.pretrain_share,
            finetune_share=args.finetune_share,
            pretrain_batch=args.pretrain_batch,
            finetune_batch=args.finetune_batch,
            seed=args.seed,
            device=args.device,
            resume=args.resume,
        )
    )


if __name__ == "__main__":
    main()
