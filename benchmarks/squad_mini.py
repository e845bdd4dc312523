"""squad-mini: the project's quality figure. The quickstart with a bigger budget and at least 1,000
held-out SQuAD questions (5 shots): by default the shipped encoder, then further fine-tuning;
with --from-scratch the shipped encoder's configs trained from nothing (fine-tuned at each --factors).

    python benchmarks/squad_mini.py --budget-minutes 120 --questions 1000 --out runs/squad-mini
    python benchmarks/squad_mini.py --from-scratch --budget-minutes 180 --out runs/squad-mini-scratch

It prints the Markdown table and writes report.json in --out. Every option left out keeps the
quickstart's default (`arc_encoder.quickstart.QuickstartConfig`), so the two stay one recipe.
"""

from __future__ import annotations

import argparse

from arc_encoder.loading import DEFAULT_MODEL, quiet_transformers
from arc_encoder.quickstart import QuickstartConfig, run_quickstart


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS
    )
    parser.add_argument("--budget-minutes", type=float, default=120)
    parser.add_argument("--questions", dest="eval_questions", type=int, default=1000)
    parser.add_argument("--out", default="runs/squad-mini")
    parser.add_argument("--start-from", help=f"shipped encoder or saved folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--from-scratch", action="store_true", help="pretrain a fresh encoder instead")
    parser.add_argument("--factors", dest="finetune_factors", type=int, nargs="+", help="with --from-scratch")
    parser.add_argument("--finetune-shots", type=int)
    parser.add_argument("--eval-shots", type=int)
    parser.add_argument("--pretrain-share", type=float)
    parser.add_argument("--finetune-share", type=float)
    parser.add_argument("--pretrain-batch", type=int)
    parser.add_argument("--finetune-batch", type=int)
    parser.add_argument("--data")
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", help="reuse the finished training stages in --out")
    args = parser.parse_args()
    quiet_transformers()
    run_quickstart(QuickstartConfig(**vars(args)))


if __name__ == "__main__":
    main()
