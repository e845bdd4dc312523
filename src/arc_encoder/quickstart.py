"""The quickstart: the shipped encoder's configs plus a time budget, and what they give.

Stages (each prints what it does and why, and how much of its document the vectors carry):
  1. by default, evaluate the shipped encoder on held-out SQuAD questions; with `from_scratch`,
     pretrain a fresh one from configs/smollm2-arc4-default.yaml instead;
  2. fine-tune from configs/smollm2-arc4-default-finetune.yaml (the shipped encoder further, or the
     pretrained one at each of `finetune_factors`);
  3. evaluate on held-out SQuAD questions (articles never seen in training): closed-book,
     open-book, ARC and truncation to the same budget;
  4. show one example and a reconstruction, save the model, a JSON report and a PNG.

Training stages run the trainer's own entry point (`arc-encoder train`: `trainer.run`) on those
configs. The recipe lives there only: the quickstart picks the data folder, the output folders
and the number of steps the time budget allows; warm-up, curricula and evaluation cadence keep
their share of the run (`at_steps`). `benchmarks/squad_mini.py` runs the same with a bigger budget.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .evaluation.content import describe, reconstructions, summary_from_flat
from .evaluation.metrics import gain_kept, paired_difference
from .evaluation.prompts import arc_prompt, open_book_prompt
from .evaluation.runner import evaluate
from .evaluation.tasks import load_jsonl
from .loading import DEFAULT_MODEL
from .model.arc import ARCModel
from .model.saved import list_checkpoints, locate
from .training.config import TrainConfig, config_from_dict, expand_env, read_config_tree
from .training.distributed import pick_device
from .training.metrics import read_metrics
from .training.trainer import run

DATA_FILES = ("prose/wiki.txt", "squad/train.jsonl", "squad/dev.jsonl")
# The shipped encoder's training configs (a checkout's configs/ folder).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN_CONFIG = "smollm2-arc4-default.yaml"
FINETUNE_CONFIG = "smollm2-arc4-default-finetune.yaml"


@dataclass
class QuickstartConfig:
    budget_minutes: float = 30.0
    out: str = "runs/quickstart"
    data: str | None = None  # folder with prose/ and squad/ (see find_data)
    # Start from this trained model (a shipped name or a saved folder): evaluate it within
    # first_table_minutes, then fine-tune it further with the rest of the budget.
    start_from: str = DEFAULT_MODEL
    first_table_minutes: float = 9.0
    # Train from nothing instead: pretrain (PRETRAIN_CONFIG), fine-tune at each of
    # `finetune_factors` (None: the pretrained model's own factor).
    from_scratch: bool = False
    finetune_factors: list[int] | None = None
    # Set on top of every stage config's `model` section (tests use tiny models).
    model: dict = field(default_factory=dict)
    # In-context examples in evaluation prompts, as the paper (5). With one shot the 135M decoder
    # copies the shot's answer, and even open-book collapses; shot documents are compressed once.
    eval_shots: int = 5
    eval_questions: int | None = None  # None: as many as the budget allows (at least 50)
    # Share of the budget for each training stage; evaluation gets what remains.
    pretrain_share: float = 0.5
    finetune_share: float = 0.2
    pretrain_steps: int | None = None  # None: as many as the budget allows
    finetune_steps: int | None = None
    # Departures from the configs, each None to keep the config's value: fine-tuning shots,
    # batch sizes, a frozen encoder, the weight of distillation to the decoder reading the text.
    finetune_shots: int | None = None
    pretrain_batch: int | None = None
    finetune_batch: int | None = None
    finetune_freeze_encoder: bool | None = None
    finetune_distill: float | None = None
    seed: int = 0  # the evaluation's draw of questions and shots (training: the configs' seeds)
    device: str = "auto"
    # Continue an interrupted run in the same --out: training stages that finished (their folder
    # holds a checkpoint) are reused, an unfinished one is trained again, evaluation runs again.
    resume: bool = False


# Settings that change what the training stages produce: a resumed run must match them.
TRAINING_FIELDS = (
    "start_from",
    "from_scratch",
    "finetune_factors",
    "model",
    "pretrain_share",
    "finetune_share",
    "pretrain_steps",
    "finetune_steps",
    "finetune_shots",
    "pretrain_batch",
    "finetune_batch",
    "finetune_freeze_encoder",
    "finetune_distill",
)
SETTINGS_FILE = "quickstart-config.json"


def find_data(explicit: str | None) -> Path:
    """--data, else $ARC_ENCODER_DATA, else ../shared/data beside the checkout."""
    here = Path(__file__).resolve()
    candidates = [explicit, os.environ.get("ARC_ENCODER_DATA")]
    candidates += [str(p / "shared" / "data") for p in here.parents[2:4]]
    candidates.append(str(Path.cwd().parent / "shared" / "data"))
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in DATA_FILES):
            return Path(c)
    tried = ", ".join(str(c) for c in candidates if c)
    raise FileNotFoundError(
        "the quickstart needs prose and SQuAD-style questions: a folder holding "
        f"{', '.join(DATA_FILES)}. Tried: {tried}. Point --data (or $ARC_ENCODER_DATA) at such a "
        "folder; for your own data, train with `arc-encoder train CONFIG` whose data sources may be "
        "local text/JSONL files or `hf:NAME` datasets, then `arc-encoder eval`."
    )


def say(text: str) -> None:
    print(text, flush=True)


def stage(n: int, title: str, why: str) -> None:
    say(f"\n== Stage {n}: {title}\n   {why}")


# ----------------------------------------------------------------------------- training stages
def with_changes(tree: dict, changes: dict[str, Any]) -> dict:
    """A copy of a config tree with dotted keys set ("optim.lr_encoder": 1e-4); a dict value is
    merged into the section it names."""
    tree = copy.deepcopy(tree)
    for key, value in changes.items():
        *sections, last = key.split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = with_changes(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    return tree


def stage_config(name: str, q: QuickstartConfig, data: Path, out_dir: Path, changes: dict[str, Any]) -> TrainConfig:
    """configs/NAME as `arc-encoder train` reads it, its data under `data`, with the quickstart's
    changes: the output folder, `q.model`, and `changes` (None values keep the config's)."""
    if not (CONFIGS / name).is_file():
        raise FileNotFoundError(f"the quickstart trains from the checkout's configs: {CONFIGS / name} is missing")
    tree = read_config_tree(CONFIGS / name)
    wanted = {"out_dir": str(out_dir), "device": q.device, "model": q.model}
    wanted |= {k: v for k, v in changes.items() if v is not None}
    # Within the time budget: one checkpoint, at the end (each costs seconds and disk).
    wanted |= {"checkpoint.every": 0, "checkpoint.keep": 1}
    return config_from_dict(expand_env(with_changes(tree, wanted), {**os.environ, "ARC_ENCODER_DATA": str(data)}))


def at_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """The config's run at `steps` optimizer steps: warm-up, the pooling-factor and span-length
    curricula and the evaluation and log cadence keep their share of the run."""
    scale = steps / config.steps
    tree = config.to_dict()
    tree["steps"] = steps
    tree["optim"]["warmup_steps"] = min(int(config.optim.warmup_steps * scale), steps - 1)
    schedule = []
    for factor, until in config.pooling_schedule:
        until = min(int(until * scale), steps)
        if until > (schedule[-1][1] if schedule else 0):  # stretches shorter than a step vanish
            schedule.append([factor, until])
    tree["pooling_schedule"] = schedule
    if "curriculum_batches" in tree["data"]:
        tree["data"]["curriculum_batches"] = int(tree["data"]["curriculum_batches"] * scale)
    for section in ("eval", "log"):  # rounded up: never more evaluations than the config's run has
        if tree[section]["every"]:
            tree[section]["every"] = max(1, math.ceil(tree[section]["every"] * scale))
    return config_from_dict(tree)


def seconds_per_step(config: TrainConfig, timing_dir: Path, steps: int = 3) -> tuple[float, float]:
    """Train `steps` steps of the config through the trainer, in a folder removed afterwards.
    Returns (seconds per optimizer step, seconds the run spent around its steps: loading the
    model, preparing the data, saving). The first step pays one-off costs and is left out."""
    probe = dataclasses.replace(
        at_steps(config, steps),
        out_dir=str(timing_dir),
        pooling_schedule=[],  # timed at the model's own factor
        eval=dataclasses.replace(config.eval, every=0),
        log=dataclasses.replace(config.log, every=1, progress=False, plot=False),
        time_limit_minutes=None,
    )
    shutil.rmtree(timing_dir, ignore_errors=True)  # left by an interrupted timing run
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run(probe)
    wall = time.perf_counter() - start
    # the trainer logs input tokens per second of each step: their ratio is the step's seconds
    per_step = [r["input_tokens"] / r["tokens_per_s"] for r in read_metrics(timing_dir) if "tokens_per_s" in r]
    shutil.rmtree(timing_dir)
    mean = sum(per_step[1:]) / len(per_step[1:])
    return mean, max(0.0, wall - sum(per_step))


def train_stage(config: TrainConfig, budget_s: float, fixed_steps: int | None) -> tuple[Path, int, float]:
    """Train the config with `fixed_steps`, or with as many steps as `budget_s` allows (timed on a
    few steps first) and a time limit that keeps the run within it. Returns (checkpoint, steps,
    seconds)."""
    start = time.perf_counter()
    if fixed_steps is not None:
        config = at_steps(config, fixed_steps)
    else:
        per_step, overhead = seconds_per_step(config, Path(config.out_dir + "-timing"))
        per_step *= 1.25  # held-out evaluation and logging add some
        left = budget_s - (time.perf_counter() - start) - overhead
        steps = max(2, int(left / per_step))
        say(f"   one step takes ~{per_step:.1f}s here: {steps} steps fit the {budget_s / 60:.1f}-minute budget")
        # the timing is an estimate: never overrun the budget
        config = dataclasses.replace(at_steps(config, steps), time_limit_minutes=max(0.1, left / 60))
    final = run(config)
    say_content(Path(config.out_dir))
    return final, config.steps, time.perf_counter() - start


def say_content(run_dir: Path) -> None:
    """The last held-out content measure of a run, in plain words."""
    evals = [r["eval"] for r in read_metrics(run_dir) if "eval" in r]
    if evals:
        for line in describe(summary_from_flat(evals[-1])):
            say("   " + line)


def reuse_or_train(
    q: QuickstartConfig, config: TrainConfig, budget_s: float, fixed_steps: int | None
) -> tuple[Path, int, float]:
    """train_stage, unless --resume finds this stage finished (it checkpoints only at its end)."""
    run_dir = Path(config.out_dir)
    if q.resume:
        done = list_checkpoints(run_dir)
        if done:
            steps, path = done[-1]
            say(f"   --resume: reusing {path} ({steps} steps)")
            return path, steps, 0.0
        if run_dir.exists():  # interrupted mid-stage: only partial curves, nothing to reuse
            shutil.rmtree(run_dir)
    return train_stage(config, budget_s, fixed_steps)


def pretrain_stage_config(q: QuickstartConfig, data: Path, out: Path) -> TrainConfig:
    return stage_config(PRETRAIN_CONFIG, q, data, out / "pretrain", {"batch_size": q.pretrain_batch})


def finetune_stage_config(
    q: QuickstartConfig, data: Path, init_from: str | Path, factor: int, out: Path
) -> TrainConfig:
    changes = {
        "model.init_from": str(init_from),
        "data.n_shots": q.finetune_shots,
        "batch_size": q.finetune_batch,
        "freeze_encoder": q.finetune_freeze_encoder,
        "distill.weight": q.finetune_distill,
    }
    if q.from_scratch:  # a trained start keeps its own factor
        changes["model.arc.pooling_factors"] = [factor]
    else:
        # A trained start may serve several decoders (the shipped model also carries Gemma's
        # adapter): the quickstart fine-tunes and measures its first one only.
        changes["model.arc.decoders"] = locate(init_from, role="model.init_from").config.decoders[:1]
    config = stage_config(FINETUNE_CONFIG, q, data, out / f"finetune-x{factor}", changes)
    if not q.from_scratch:
        # The shipped encoder was fine-tuned on the order the config's seed draws: further
        # fine-tuning draws another, so its first steps are not a replay.
        config = dataclasses.replace(config, seed=config.seed + 1)
    return config


def prepare_out(q: QuickstartConfig) -> Path:
    """A new or empty --out; with --resume, one whose saved settings match these."""
    out, current = Path(q.out), asdict(q)
    settings = out / SETTINGS_FILE
    if out.exists() and any(out.iterdir()):
        if not q.resume:
            raise FileExistsError(
                f"{out} is not empty: choose another --out, remove it, or pass --resume to continue the run it holds"
            )
        if settings.is_file():
            try:
                saved = json.loads(settings.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"--resume: {settings} is not valid JSON ({e}); remove it to resume without checking the settings"
                ) from None
            changed = [k for k in TRAINING_FIELDS if k in saved and saved[k] != current[k]]
            if changed:
                raise ValueError(
                    f"--resume: {out} was trained with other settings ({', '.join(changed)}: "
                    f"{', '.join(repr(saved[k]) for k in changed)}); use another --out"
                )
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings, current)
    return out


# ----------------------------------------------------------------------------- evaluation stage
def eval_question_count(arc: ARCModel, examples, shots: int, budget_s: float, methods: int, batch: int = 8) -> int:
    """How many questions the remaining budget allows: time one batch of open-book and one of ARC
    answers, as the evaluation batches them (the shots' keys and values computed once, see
    ARCModel.generate; a first batch pays for that, so the estimate errs on the safe side)."""
    shot_examples, probe = examples[:shots], examples[shots : shots + batch]
    t = time.perf_counter()
    arc.generate([[open_book_prompt(shot_examples, e)] for e in probe], max_new_tokens=8)
    t_open = (time.perf_counter() - t) / len(probe)
    t = time.perf_counter()
    arc.generate([arc_prompt(shot_examples, e) for e in probe], max_new_tokens=8)
    t_arc = (time.perf_counter() - t) / len(probe)
    per_question = t_open + (methods - 1) * t_arc  # open-book is the costly one
    return max(50, int(budget_s / per_question * 0.8))


def show_example(arc: ARCModel, results: dict[str, dict], examples_by_id: dict) -> dict:
    """One held-out question: the paragraph, its size before and after, and every method's answer
    (the ARC rows under their names in `results`, the last one picked for)."""
    rows = {}
    for i, (label, result) in enumerate(results.items()):
        for name, predictions in result["predictions"].items():
            if name == "arc" or i == 0:
                rows[label if name == "arc" else name] = {r["id"]: r for r in predictions}
    arc_rows, control = rows[list(results)[-1]], rows.get("mismatched", {})
    # prefer a question ARC answers right only from the right document, then any ARC got right
    right = [i for i, r in arc_rows.items() if r.get("em")]
    pick = next((i for i in right if not control.get(i, {}).get("em")), next(iter(right), next(iter(arc_rows))))
    ex = examples_by_id[pick]
    (recon,) = reconstructions(arc, [ex.passages[0]])
    shown = {
        "id": pick,
        "paragraph": ex.passages[0],
        "question": ex.question,
        "gold": ex.answers,
        "paragraph_tokens": recon["tokens"],
        "vectors": recon["vectors"],
        "answers": {name: rows[name][pick]["prediction"] for name in rows if pick in rows[name]},
        "reconstruction": recon["reconstruction"],
        "reconstruction_rouge_l": recon["rouge_l"],
    }
    say(f"\n   paragraph ({shown['paragraph_tokens']} decoder tokens -> {shown['vectors']} vectors):")
    say("   " + ex.passages[0][:400] + ("..." if len(ex.passages[0]) > 400 else ""))
    say(f"   question: {ex.question}   gold: {ex.answers[0]!r}")
    for name, answer in shown["answers"].items():
        say(f"   {name:>9}: {answer!r}")
    say(
        f"   reconstruction from the vectors with <Rec> (ROUGE-L {recon['rouge_l']:.2f} against the "
        f"paragraph's start): {recon['reconstruction'][:300]!r}"
    )
    return shown


# ----------------------------------------------------------------------------- report
def em_by_question(result: dict, method: str) -> dict[str, float]:
    return {r["id"]: r["em"] for r in result["predictions"][method]}


def summary_table(results: dict[str, dict]) -> list[dict]:
    """One row per ARC model (keyed by its row name) and, from the first evaluation, one per baseline."""
    rows = []
    for i, (label, result) in enumerate(results.items()):
        for name, m in result["metrics"].items():
            if name != "arc" and i > 0:
                continue  # baselines once
            rows.append(
                {
                    "method": label if name == "arc" else name,
                    "em": m["em"]["mean"],
                    "em_se": m["em"]["stderr"],
                    "f1": m["f1"]["mean"],
                    "f1_se": m["f1"]["stderr"],
                    "pooling_factor": m.get("pooling_factor"),
                    "positions": m["positions_per_example"],
                    "seconds": m["seconds_per_example"],
                    "gain_kept_em": (m.get("gain_kept") or {}).get("em"),
                    "gain_kept_f1": (m.get("gain_kept") or {}).get("f1"),
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    say("\n| method | EM | F1 | pooling factor | decoder positions | s/answer | open-book gain kept (EM / F1) |")
    say("|---|---|---|---|---|---|---|")
    for r in rows:
        pf = f"{r['pooling_factor']:.2f}" if r["pooling_factor"] else "-"
        pos = f"{r['positions']:.0f}" if r["positions"] else "-"
        sec = f"{r['seconds']:.2f}" if r["seconds"] else "-"
        kept = (
            f"{r['gain_kept_em']:.0%} / {r['gain_kept_f1']:.0%}"
            if r["gain_kept_em"] is not None and r["gain_kept_f1"] is not None
            else "-"
        )
        say(
            f"| {r['method']} | {r['em']:.1f} ± {r['em_se']:.1f} | {r['f1']:.1f} ± {r['f1_se']:.1f} | "
            f"{pf} | {pos} | {sec} | {kept} |"
        )


def plot_report(path: Path, curves: dict[str, list[dict]], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, (stage_name, records) in zip(axes[:2], curves.items()):
        train = [(r["step"], r["loss_avg"]) for r in records if "loss_avg" in r]
        if train:
            ax.plot(*zip(*train), label="train loss")
        evals = [(r["step"], r["eval"]) for r in records if "eval" in r]
        for key in sorted({k for _, e in evals for k in e}):
            ax.plot(
                [s for s, e in evals if key in e],
                [e[key] for _, e in evals if key in e],
                marker="o",
                label=f"held-out {key}",
            )
        ax.set_title(stage_name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=8)
    ax = axes[2]
    names = [r["method"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["em"] for r in rows], 0.4, yerr=[r["em_se"] for r in rows], label="EM")
    ax.bar([i + 0.2 for i in x], [r["f1"] for r in rows], 0.4, yerr=[r["f1_se"] for r in rows], label="F1")
    ax.set_xticks(list(x), names)
    ax.set_title("held-out SQuAD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the recipe
EVAL_STAGE_WHY = (
    "Articles of these questions never appear in training. Same prompt, shots and greedy\n"
    "   decoding for every method; truncation keeps as many document tokens as ARC uses vectors;\n"
    "   'mismatched' is ARC reading another question's document: what the format alone scores."
)
BASELINES = ["closed", "open", "arc", "mismatched", "truncate"]


def run_quickstart(q: QuickstartConfig) -> dict:
    """From the shipped encoder (default): evaluate it, fine-tune it further, evaluate again.
    With `from_scratch`: pretrain, fine-tune at each of `finetune_factors`, evaluate each."""
    t0 = time.perf_counter()
    budget = q.budget_minutes * 60
    data = find_data(q.data)
    out = prepare_out(q)
    torch.manual_seed(q.seed)
    say(f"arc-encoder quickstart: budget {q.budget_minutes:.0f} min, data {data}, output {out}")
    dev = load_jsonl(data / "squad/dev.jsonl")
    device = pick_device(q.device)
    results: dict[str, dict] = {}  # ARC row name -> evaluation
    evaluation: dict[str, dict] = {}
    questions = q.eval_questions

    def evaluate_stage(label: str, arc: ARCModel, methods: list[str], seconds: float) -> None:
        nonlocal questions
        if questions is None:
            questions = eval_question_count(arc, dev, q.eval_shots, seconds, len(methods))
        say(f"   {questions} questions, {q.eval_shots} shots, methods: {', '.join(methods)}")
        t = time.perf_counter()
        results[label] = evaluate(
            arc, "squad", dev, methods, shots=q.eval_shots, limit=questions, seed=q.seed, shuffle=True, progress=True
        )
        evaluation[label] = {"questions": questions, "seconds": time.perf_counter() - t}
        if results and label != next(iter(results)):  # baselines come from the first evaluation
            first = results[next(iter(results))]["metrics"]
            m = results[label]["metrics"]["arc"]
            m["gain_kept"] = {
                k: gain_kept(m[k]["mean"], first["closed"][k]["mean"], first["open"][k]["mean"]) for k in ("em", "f1")
            }

    pre = None
    if q.from_scratch:
        pretraining = pretrain_stage_config(q, data, out)
        pretrain_factor = pretraining.arc_config().pooling_factor
        levels = " -> ".join(str(f) for f in [f for f, _ in pretraining.pooling_schedule] + [pretrain_factor])
        stage(
            1,
            f"pretraining at pooling factor {pretrain_factor} on prose ({CONFIGS.name}/{PRETRAIN_CONFIG})",
            f"The encoder learns to squeeze {pretraining.data['seq_len']}-token spans of prose into vectors the\n"
            "   frozen decoder reads back (reconstruction). It starts with one vector per token, mapped onto\n"
            f"   the decoder's own token embeddings, and packs more tokens per vector ({levels}): the decoder\n"
            "   reads the vectors from the first step instead of learning to ignore them.",
        )
        pre_ckpt, pre_steps, pre_s = reuse_or_train(q, pretraining, budget * q.pretrain_share, q.pretrain_steps)
        pre = {"checkpoint": str(pre_ckpt), "steps": pre_steps, "seconds": pre_s}
        start, factors = pre_ckpt, q.finetune_factors or [pretrain_factor]
        ft_budget = budget * q.finetune_share / len(factors)
    else:
        stage(
            1,
            f"the shipped encoder {q.start_from} on held-out SQuAD questions",
            "Trained by this project (configs/smollm2-arc4-default*.yaml) on prose and SQuAD train articles.\n   "
            + EVAL_STAGE_WHY,
        )
        shipped = ARCModel.from_pretrained(q.start_from).to(device).eval()
        factor = shipped.config.pooling_factor
        evaluate_stage(f"arc{factor} shipped", shipped, BASELINES, q.first_table_minutes * 60 - 20)
        print_table(summary_table(results))
        say_differences(results, f"arc{factor} shipped")
        del shipped
        start, factors = q.start_from, [factor]
        arc_seconds = results[f"arc{factor} shipped"]["metrics"]["arc"]["seconds_per_example"]
        ft_budget = max(60.0, budget - (time.perf_counter() - t0) - 1.3 * arc_seconds * questions - 60)

    finetune_runs = {}
    for factor in factors:
        finetuning = finetune_stage_config(q, data, start, factor, out)
        stage(
            2,
            f"fine-tuning at pooling factor {factor} on few-shot SQuAD prompts ({CONFIGS.name}/{FINETUNE_CONFIG})",
            f"Every document in a {finetuning.data_config().n_shots}-shot prompt is compressed; only the final "
            "answer is\n   supervised. Fine-tuning at a smaller factor than pretraining works best (paper Fig. 5).",
        )
        ckpt, steps, seconds = reuse_or_train(q, finetuning, ft_budget, q.finetune_steps)
        finetune_runs[factor] = {"checkpoint": str(ckpt), "steps": steps, "seconds": seconds}

    for i, factor in enumerate(factors):
        label = f"arc{factor}" if q.from_scratch else f"arc{factor} fine-tuned"
        stage(3, f"evaluating {label.upper()} on held-out SQuAD questions", EVAL_STAGE_WHY)
        arc = ARCModel.from_pretrained(finetune_runs[factor]["checkpoint"]).to(device).eval()
        remaining = budget - (time.perf_counter() - t0)
        evaluate_stage(label, arc, BASELINES if not results else ["arc"], remaining / (len(factors) - i) - 30)

    first_label = next(iter(results))
    stage(4, "one example and a reconstruction", "What the model saw, and what the decoder makes of the vectors alone.")
    last = factors[0]
    arc = ARCModel.from_pretrained(finetune_runs[last]["checkpoint"]).to(device).eval()
    example = show_example(arc, results, {e.id: e for e in dev})

    rows = summary_table(results)
    print_table(rows)
    model_dir = out / "model"
    shutil.copytree(
        finetune_runs[last]["checkpoint"],
        model_dir,
        dirs_exist_ok=q.resume,
        ignore=shutil.ignore_patterns("trainer_state*", "optimizer*", "train_config*"),
    )
    curves = {f"fine-tuning (factor {last})": read_metrics(out / f"finetune-x{last}")}
    if q.from_scratch:
        curves = {f"pretraining (factor {pretrain_factor})": read_metrics(out / "pretrain"), **curves}
    plot_report(out / "report.png", curves, rows)
    differences = say_differences(results, first_label)
    report = {
        "config": asdict(q),
        "data": str(data),
        "wall_seconds": time.perf_counter() - t0,
        "pretrain": pre,
        "finetune": {str(k): v for k, v in finetune_runs.items()},
        "evaluation": evaluation,
        "table": rows,
        **differences,
        "example": example,
        "model": str(model_dir),
        "metrics": {label: r["metrics"] for label, r in results.items()},
    }
    write_json(out / "report.json", report)
    for label, result in results.items():
        write_json(out / f"predictions-{label.replace(' ', '-')}.json", result["predictions"], indent=1)
    say(
        f"wall time {report['wall_seconds'] / 60:.1f} min. Saved: {model_dir} (load with "
        f"ARCModel.from_pretrained), {out / 'report.json'}, {out / 'report.png'}"
    )
    return report


def say_differences(results: dict[str, dict], first: str) -> dict:
    """Paired EM differences: the first ARC model against closed-book and a mismatched document,
    and every later one (fine-tuned) against the first."""
    found = {
        f"arc_minus_{other}_em": (em_by_question(results[first], "arc"), em_by_question(results[first], other))
        for other in ("closed", "mismatched")
    }
    for label in list(results)[1:]:
        found[f"{label.replace(' ', '_')}_minus_{first.replace(' ', '_')}_em"] = (
            em_by_question(results[label], "arc"),
            em_by_question(results[first], "arc"),
        )
    found = {name: dict(zip(("diff", "stderr"), paired_difference(*pair))) for name, pair in found.items()}
    for name, d in found.items():
        say(f"   {name.replace('_', ' ')}: {d['diff']:+.1f} ± {d['stderr']:.1f} (standard error)")
    return found
