"""The quickstart recipe: train an ARC-Encoder on CPU within a time budget and show it works.

Stages (each prints what it does and why, and how much of its document the vectors carry):
  1. pretrain at pooling factor 4 on prose: reconstruction of short spans, through a length
     curriculum, with pooled queries that read their own group only (docs/training.md);
  2. fine-tune at factor 4 on few-shot SQuAD prompts whose documents are all compressed;
  3. evaluate on held-out SQuAD questions (articles never seen in training): closed-book,
     open-book, ARC and truncation to the same budget;
  4. show one example and a reconstruction, save the model, a JSON report and a PNG.

`benchmarks/squad_mini.py` runs the same recipe with a bigger budget and several factors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import write_json
from .evaluation.content import describe, reconstructions, summary_from_flat
from .evaluation.metrics import gain_kept, mean_with_stderr
from .evaluation.runner import evaluate
from .evaluation.tasks import load_jsonl
from .loading import DEFAULT_MODEL
from .model.arc import ARCModel
from .training.checkpoint import list_checkpoints
from .training.config import TrainConfig, config_from_dict
from .training.distributed import Runtime, pick_device
from .training.metrics import read_metrics
from .training.model_init import build_model
from .training.trainer import (
    Trainer,
    build_data,
    distillation_for,
    held_out_batches,
    prepare_projectors,
    seed_everything,
)

DATA_FILES = ("prose/wiki.txt", "squad/train.jsonl", "squad/dev.jsonl")


@dataclass
class QuickstartConfig:
    budget_minutes: float = 30.0
    out: str = "runs/quickstart"
    data: str | None = None  # folder with prose/ and squad/ (see find_data)
    # Start from this trained model (a shipped name or a saved folder): evaluate it within
    # first_table_minutes, then fine-tune it further with the rest of the budget.
    start_from: str = DEFAULT_MODEL
    first_table_minutes: float = 9.0
    # Train from nothing instead: pretrain `preset`, fine-tune at each of `finetune_factors`.
    from_scratch: bool = False
    preset: str = "smollm2-arc4"  # the pretraining model: pooling factor 4
    # ARCConfig overrides on top of RECIPE_ARC (tests use tiny models)
    arc: dict = field(default_factory=dict)
    pretrained: bool = True
    finetune_factors: list[int] = field(default_factory=lambda: [4])
    # In-context examples in fine-tuning prompts. Every shot's document goes through the encoder
    # (and, unless frozen, its backward pass), so on CPU each shot costs fine-tuning steps.
    finetune_shots: int = 1
    # In-context examples in evaluation prompts, as the paper (5). With one shot the 135M decoder
    # copies the shot's answer, and even open-book collapses; shot documents are compressed once.
    eval_shots: int = 5
    # Fine-tune projector and special tokens only (as the paper's new-decoder adaptation): the
    # pretrained encoder then needs no backward pass, several times more steps fit the budget.
    finetune_freeze_encoder: bool = True
    # Weight of the distillation to the decoder reading the documents as text during fine-tuning
    # (model/distill.py; 0: off). Each distilled step runs the decoder once more, without backward.
    finetune_distill: float = 0.0
    eval_questions: int | None = None  # None: as many as the budget allows (at least 50)
    # Share of the budget for each training stage; evaluation gets what remains.
    pretrain_share: float = 0.5
    finetune_share: float = 0.2
    pretrain_steps: int | None = None  # None: as many as the budget allows
    finetune_steps: int | None = None
    pretrain_batch: int = 16
    finetune_batch: int = 4
    seed: int = 0
    device: str = "auto"
    # Continue an interrupted run in the same --out: training stages that finished (their folder
    # holds a checkpoint) are reused, an unfinished one is trained again, evaluation runs again.
    resume: bool = False


# The encoder settings of the recipe: each pooled query reads its own group of tokens only, at
# that group's position, and the projector maps encoder width to decoder width directly (no
# bottleneck: its least-squares start below is then exact). Without them the vectors collapse onto
# one direction every document shares, and the decoder learns to ignore them (docs/experiments.md).
RECIPE_ARC = {"pooled_receptive_field": 0, "pooled_positions": "group", "bottleneck": None}
# Pretraining: reconstruction of spans this long; decoder tokens per step = batch * PRETRAIN_SPAN.
PRETRAIN_SPAN = 32
# Pooling-factor curriculum as shares of the pretraining steps: x1 for the first 20% (each vector
# one token: the projector starts from its least-squares map onto the decoder's embeddings, so the
# decoder reads the vectors from step 0), x2 up to 40%, then the model's own factor.
PRETRAIN_POOLING = [(1, 0.2), (2, 0.4)]
PRETRAIN_WARMUP = 20
FINETUNE_WARMUP = 5

# Settings that change what the training stages produce: a resumed run must match them.
TRAINING_FIELDS = (
    "start_from",
    "from_scratch",
    "preset",
    "arc",
    "pretrained",
    "finetune_shots",
    "finetune_freeze_encoder",
    "finetune_distill",
    "pretrain_share",
    "finetune_share",
    "pretrain_steps",
    "finetune_steps",
    "pretrain_batch",
    "finetune_batch",
    "seed",
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
def arc_overrides(q: QuickstartConfig, **extra) -> dict:
    return {**RECIPE_ARC, **q.arc, **extra}


def held_out_prose(data: Path) -> dict:
    """Held-out pretraining data: distinct SQuAD dev paragraphs (articles absent from the prose),
    one span each, half reconstruction and half continuation."""
    return {
        "sources": [str(data / "squad/dev.jsonl")],
        "text_field": "context",
        "shuffle_buffer": 0,
        "distinct": True,
        "samples_per_document": 1,
        "continuation": 0.5,
        "curriculum": [],
        "curriculum_batches": 0,
    }


def pretrain_config(q: QuickstartConfig, data: Path, out: Path, steps: int) -> TrainConfig:
    return config_from_dict(
        {
            "model": {"preset": q.preset, "arc": arc_overrides(q), "pretrained": q.pretrained},
            "data": {
                "kind": "pretrain",
                "sources": [str(data / "prose/wiki.txt")],
                "seq_len": PRETRAIN_SPAN,
                "compress_tokens": PRETRAIN_SPAN,
                "target_tokens": PRETRAIN_SPAN,
                "prefix": False,
                "continuation": 0.0,
                "shuffle_buffer": 256,
            },
            "optim": {
                "lr_encoder": 1e-4,
                "lr_projector": 1e-3,
                "lr_special": 1e-3,
                "weight_decay": 0.1,
                "warmup_steps": min(PRETRAIN_WARMUP, steps // 5),
                "decay": "none",  # the gap still rises at the end of a CPU budget: keep the peak
            },
            "steps": steps,
            "batch_size": q.pretrain_batch,
            "pooling_schedule": pooling_schedule(steps, pretrain_factor(q)),
            "projector_init": "lstsq",
            "seed": q.seed,
            "device": q.device,
            "checkpoint": {"every": 0, "keep": 1},
            "eval": {"every": max(1, steps // 4), "batches": 4, "data": held_out_prose(data)},
            "log": {"every": max(1, min(10, steps // 10)), "plot": True},
            "out_dir": str(out),
        }
    )


def pooling_schedule(steps: int, factor: int) -> list[list[int]]:
    """PRETRAIN_POOLING at `steps`: [[factor, until_step], ...], levels at or above the model's
    factor and empty stretches left out."""
    schedule, start = [], 0
    for f, share in PRETRAIN_POOLING:
        until = int(share * steps)
        if f < factor and until > start:
            schedule.append([f, until])
            start = until
    return schedule


def finetune_config(
    q: QuickstartConfig, data: Path, init_from: Path, factor: int, out: Path, steps: int
) -> TrainConfig:
    return config_from_dict(
        {
            "model": {
                "init_from": str(init_from),
                # from scratch, the pretraining's settings; a trained start keeps its own
                "arc": arc_overrides(q, pooling_factors=[factor]) if q.from_scratch else {"pooling_factors": [factor]},
                "pretrained": q.pretrained,
            },
            "data": {
                "kind": "finetune",
                "sources": [str(data / "squad/train.jsonl")],
                "n_shots": q.finetune_shots,
                "max_doc_tokens": 1024,
                "shuffle_buffer": 512,
                "chunk_tokens": q.arc.get("chunk_tokens"),
            },
            "optim": {
                "lr_encoder": 2e-5,
                "lr_projector": 2e-4,
                "lr_special": 2e-4,
                "weight_decay": 0.05,
                "warmup_steps": min(FINETUNE_WARMUP, steps // 5),
                "final_lr": 1e-6,
            },
            "steps": steps,
            "batch_size": q.finetune_batch,
            # A trained start (the shipped encoder) was fine-tuned on the order seed q.seed draws:
            # further fine-tuning draws another, so its first steps are not a replay.
            "seed": q.seed if q.from_scratch else q.seed + 1,
            "device": q.device,
            "freeze_encoder": q.finetune_freeze_encoder,
            "distill": {"weight": q.finetune_distill},
            "checkpoint": {"every": 0, "keep": 1},
            "eval": {
                "every": max(1, steps // 4),
                "batches": 4,
                "data": {"sources": [str(data / "squad/dev.jsonl")], "shuffle_buffer": 0, "distinct": True},
            },
            "log": {"every": max(1, min(10, steps // 10)), "plot": True},
            "out_dir": str(out),
        }
    )


def seconds_per_step(arc: ARCModel, data, config: TrainConfig, n: int = 3) -> float:
    """Time forward + backward of `n` real batches (weights untouched; gradients dropped)."""
    arc.train()
    times = []
    for _ in range(n):
        batch = data.next_batch(0)
        start = time.perf_counter()
        loss, tokens = arc(batch.samples, 0, batch.special, distill=distillation_for(config, batch))
        (loss / tokens).backward()
        times.append(time.perf_counter() - start)
    arc.zero_grad(set_to_none=True)
    # the first call pays one-off costs; the optimizer step, evaluation and logging add some
    return sum(times[1:]) / (n - 1) * 1.25


def train_stage(build, budget_s: float, fixed_steps: int | None) -> tuple[Path, int, float]:
    """Size the run to the budget, then train `build(steps)` (a TrainConfig: warm-up and
    curriculum are shares of the steps). Returns (checkpoint, steps, seconds)."""
    start = time.perf_counter()
    config = build(fixed_steps or 2)
    seed_everything(config.seed)
    runtime = Runtime(0, 1, pick_device(config.device))
    arc = build_model(config, log=lambda *_: None).to(runtime.device)
    steps = fixed_steps
    if steps is None:
        probe = build_data(config, arc, runtime)  # a separate pipeline: training data untouched
        if config.freeze_encoder:  # as the Trainer will: no encoder backward to time
            arc.encoder.requires_grad_(False)
        per_step = seconds_per_step(arc, probe, config)
        arc.encoder.requires_grad_(True)
        steps = max(2, int((budget_s - (time.perf_counter() - start)) / per_step))
        say(f"   one step takes ~{per_step:.1f}s here: {steps} steps fit the {budget_s / 60:.1f}-minute budget")
        config = build(steps)
        # the calibration is an estimate: never overrun the budget
        config.time_limit_minutes = max(0.1, (budget_s - (time.perf_counter() - start)) / 60)
    seed_everything(config.seed)
    prepare_projectors(config, arc, runtime, log=say)
    data = build_data(config, arc, runtime)
    held_out = build_data(config, arc, runtime, overrides={"loop": False, **config.eval.data})
    trainer = Trainer(
        config, arc, data, held_out_batches(held_out, [1.0] * len(arc.decoders), config.eval.batches), runtime
    )
    final = trainer.fit()
    say_content(Path(config.out_dir))
    return final, steps, time.perf_counter() - start


def say_content(run_dir: Path) -> None:
    """The last held-out content measure of a run, in plain words."""
    evals = [r["eval"] for r in read_metrics(run_dir) if "eval" in r]
    if evals:
        for line in describe(summary_from_flat(evals[-1])):
            say("   " + line)


def reuse_or_train(
    q: QuickstartConfig, build, run_dir: Path, budget_s: float, fixed_steps: int | None
) -> tuple[Path, int, float]:
    """train_stage, unless --resume finds this stage finished (it checkpoints only at its end)."""
    if q.resume:
        done = list_checkpoints(run_dir)
        if done:
            steps, path = done[-1]
            say(f"   --resume: reusing {path} ({steps} steps)")
            return path, steps, 0.0
        if run_dir.exists():  # interrupted mid-stage: only partial curves, nothing to reuse
            shutil.rmtree(run_dir)
    return train_stage(build, budget_s, fixed_steps)


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
    from .evaluation.prompts import arc_prompt, open_book_prompt

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
def em_difference(result_a: dict, a: str, result_b: dict, b: str) -> dict:
    """EM of method a (in result_a) minus method b (in result_b) and its standard error, over the
    questions both answered. The error comes from the per-question differences (paired), not from
    the two errors apart."""
    b_em = {r["id"]: r["em"] for r in result_b["predictions"][b]}
    mean, stderr = mean_with_stderr([r["em"] - b_em[r["id"]] for r in result_a["predictions"][a] if r["id"] in b_em])
    return {"diff": mean, "stderr": stderr}


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
        stage(
            1,
            f"pretraining at pooling factor {pretrain_factor(q)} on prose",
            f"The encoder learns to squeeze {PRETRAIN_SPAN}-token spans of prose into vectors the frozen decoder\n"
            "   reads back (reconstruction). It starts with one vector per token, mapped onto the decoder's own\n"
            "   token embeddings, and packs 2, then 4 tokens per vector: the decoder reads the vectors from the\n"
            "   first step instead of learning to ignore them.",
        )
        pre_ckpt, pre_steps, pre_s = reuse_or_train(
            q,
            lambda steps: pretrain_config(q, data, out / "pretrain", steps),
            out / "pretrain",
            budget * q.pretrain_share,
            q.pretrain_steps,
        )
        pre = {"checkpoint": str(pre_ckpt), "steps": pre_steps, "seconds": pre_s}
        start, factors = pre_ckpt, q.finetune_factors
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
        stage(
            2,
            f"fine-tuning at pooling factor {factor} on few-shot SQuAD prompts",
            f"Every document in a {q.finetune_shots}-shot prompt is compressed; only the final answer is\n"
            "   supervised. Fine-tuning at a smaller factor than pretraining works best (paper Fig. 5).",
        )
        run_dir = out / f"finetune-x{factor}"
        ckpt, steps, seconds = reuse_or_train(
            q,
            lambda steps: finetune_config(q, data, start, factor, run_dir, steps),
            run_dir,
            ft_budget,
            q.finetune_steps,
        )
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
        curves = {f"pretraining (factor {pretrain_factor(q)})": read_metrics(out / "pretrain"), **curves}
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
        f"arc_minus_{other}_em": em_difference(results[first], "arc", results[first], other)
        for other in ("closed", "mismatched")
    }
    for label in list(results)[1:]:
        found[f"{label.replace(' ', '_')}_minus_{first.replace(' ', '_')}_em"] = em_difference(
            results[label], "arc", results[first], "arc"
        )
    for name, d in found.items():
        say(f"   {name.replace('_', ' ')}: {d['diff']:+.1f} ± {d['stderr']:.1f} (standard error)")
    return found


def pretrain_factor(q: QuickstartConfig) -> int:
    from .config import PRESETS

    factors = q.arc.get("pooling_factors") or PRESETS[q.preset].pooling_factors
    return math.prod(factors)
