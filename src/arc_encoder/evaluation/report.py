"""Evaluation reports: a Markdown table for the terminal and a score-vs-pooling-factor plot."""

from __future__ import annotations

from pathlib import Path

from arc_encoder.evaluation.tasks import metric_for_task


def _score(values: dict, name: str) -> str:
    score = values[name]
    if score["stderr"] is None:
        return f"{score['mean']:.1f}"
    return f"{score['mean']:.1f} ± {score['stderr']:.1f}"


def markdown_table(runs: list[dict]) -> str:
    """One row per (model, method): scores, pooling factor, decoder positions, time, gain kept."""
    task = runs[0]["config"]["task"]
    names = metric_for_task(task)
    main = names[0]
    header = ["model", "method", *names, "pooling factor", "positions/ex", "s/ex", f"gain kept ({main})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    refused = []
    for run in runs:
        label = run["config"].get("model", "")
        for method, values in run["metrics"].items():
            if "not_applicable" in values:  # refused by the window: no scores, never a cut prompt
                lines.append("| " + " | ".join([label, method, *["n/a"] * (len(header) - 2)]) + " |")
                refused.append(f"{label}: not applicable: {values['not_applicable']}")
                continue
            pf = values.get("pooling_factor")
            gain = values.get("gain_kept", {}).get(main)
            row = [
                label,
                method,
                *(_score(values, n) for n in names),
                "-" if pf is None or method == "open" else f"{pf:.2f}",
                f"{values['positions_per_example']:.0f}",
                f"{values['seconds_per_example']:.2f}",
                "-" if gain is None else f"{100 * gain:.0f}%",
            ]
            lines.append("| " + " | ".join(row) + " |")
    if refused:
        lines.append("")
        lines += refused
    for run in runs:
        stack = run["config"].get("haystack")
        if stack:
            lines.append(
                f"\n{run['config'].get('model', '')}: haystacks of {stack['multiple']}x a {stack['window']}-position "
                f"window: {stack['paragraphs_per_example']:.1f} paragraphs, open-book sequence "
                f"{stack['open_book_positions_per_example']:.0f} positions per question; BM25 puts the question's "
                f"paragraph in its top {stack['top_k']} for {stack['bm25_recall_at_k']:.0f}% of questions"
            )
    for run in runs:
        effect = run["metrics"].get("arc", {}).get("minus_mismatched")
        if effect:
            label = run["config"].get("model", "")
            scores = ", ".join(f"{v['mean']:+.1f} ± {v['stderr'] or 0:.1f} {n.upper()}" for n, v in effect.items())
            lines.append(f"\n{label}: ARC - mismatched, paired over the same examples: {scores}")
    return "\n".join(lines)


def plot_scores(runs: list[dict], path: str | Path) -> Path:
    """Main score against measured pooling factor, one line per compressing method; the
    closed- and open-book scores of the first run as horizontal references."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    task = runs[0]["config"]["task"]
    main = metric_for_task(task)[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("arc", "truncate", "llmlingua"):
        points = sorted(
            (run["metrics"][method]["pooling_factor"], run["metrics"][method][main]["mean"])
            for run in runs
            if method in run["metrics"] and run["metrics"][method].get("pooling_factor") is not None
        )
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    for method, style in (("open", "--"), ("closed", ":")):
        for run in runs:
            if main in run["metrics"].get(method, {}):
                ax.axhline(run["metrics"][method][main]["mean"], linestyle=style, color="grey", label=f"{method}-book")
                break
    ax.set_xlabel("pooling factor (document tokens / decoder positions)")
    ax.set_ylabel(main)
    ax.set_title(f"{task}, {runs[0]['config']['shots']}-shot")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
