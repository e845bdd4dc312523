"""The training recipe: pretraining, fine-tuning, multi-decoder and new-decoder adaptation.

One optimizer step:
  1. choose the decoder (sampled with the configured weights from a generator seeded by
     (seed, step), so every rank and every resumed run picks the same one; or round robin);
  2. for each of `grad_accum` micro-batches of that decoder's data: summed loss -> backward
     (DDP synchronises only on the last one);
  3. add up loss and supervised-token counts over micro-batches and ranks, and scale the gradients
     by world_size / tokens: every supervised token of the step weighs the same, wherever it was;
  4. clip, stop on a non-finite loss or gradient norm, AdamW step, schedule step;
  5. stop if a weight is no longer finite on any rank. Every stop is agreed by all ranks: the loss
     is reduced over ranks, the gradient norm is of reduced gradients, and the weight check is one
     all-reduce of per-tensor flags, so no rank stops while the others wait for it.
Only the chosen decoder's adapter gets gradients; the others keep grad None, which AdamW skips,
so their weights and moments stay untouched.

Data: an object with `next_batch(decoder)` (PretrainData, FinetuneData: batches tokenized for
that decoder), or, for a single decoder, any iterable of `Batch`; with `state_dict()` /
`load_state_dict()`, so a resumed run continues from the same position.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..atomic import write_folder
from ..data import FinetuneData, PretrainData
from ..data.batch import Batch
from ..data.mixture import DataMixture
from ..data.sources import seeded_rng
from ..devices import DTYPES, cast_weights
from ..evaluation.content import content_summary, content_sums, flat_summary, greedy_summary, greedy_sums
from ..model.arc import ARCModel
from ..model.contrast import Contrast
from ..model.distill import Distillation
from ..model.saved import WEIGHTS_FILE, latest_checkpoint
from ..model.teacher_cache import TeacherCache
from . import checkpoint as ckpt
from .config import RESUME_SAFE, TrainConfig, pooling_factor_at, resume_differences, save_config
from .distributed import (
    Runtime,
    all_reduce_sum,
    barrier,
    compile_blocks,
    enable_activation_checkpointing,
    gather_objects,
    init_distributed,
    optimizer_options,
    set_matmul_precision,
    wrap,
)
from .lora import LORA_FILE, add_encoder_lora, has_lora, lora_state, merged_state
from .metrics import PLOT_FILE, MetricsLog, plot_curves
from .model_init import fresh_decoders
from .projector_init import calibrate_projector_inputs, fit_projectors_to_embeddings
from .run_teacher_cache import open_cache
from .schedule import lr_lambda
from .sharded_build import build_for_rank, load_shards_from_rank0, share_rng_state, weights_from_rank0


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_decoder(step: int, weights: list[float], order: str, seed: int) -> int:
    """Which decoder optimizer step `step` trains: a pure function of (seed, step)."""
    active = [i for i, w in enumerate(weights) if w > 0]
    if order == "round_robin":
        return active[step % len(active)]
    return random.Random(seed * 1_000_003 + step).choices(range(len(weights)), weights=weights)[0]


def param_groups(arc: ARCModel, config: TrainConfig) -> list[dict]:
    """AdamW groups: encoder, projectors, special (+ memory) tokens, each with its own peak LR."""
    encoder, projector, special = [], [], []
    for name, p in arc.trained_parameters().items():
        if not p.requires_grad:
            continue
        if name.startswith("encoder."):
            encoder.append(p)
        elif name.endswith((".rec", ".cont", ".memory")):
            special.append(p)
        else:
            projector.append(p)
    o = config.optim
    groups = [
        ("encoder", encoder, o.lr_encoder),
        ("projector", projector, o.lr_projector),
        ("special", special, o.lr_special),
    ]
    return [{"name": name, "params": params, "lr": lr} for name, params, lr in groups if params]


def freeze_lower_blocks(encoder, trained: int) -> None:
    """Freeze the embeddings and every block but the last `trained` (no backward below them)."""
    n = len(encoder.layers)
    if trained > n:
        raise ValueError(f"train_encoder_blocks={trained}, but the encoder has only {n} blocks")
    encoder.embed_tokens.requires_grad_(False)
    for layer in list(encoder.layers)[: n - trained]:
        layer.requires_grad_(False)


def choose_trained(arc: ARCModel, config: TrainConfig) -> None:
    """Freeze what the config does not train: the whole encoder, its lower blocks, or its blocks
    under LoRA updates. The adapters always train; the decoders never do."""
    if config.freeze_encoder:
        arc.encoder.requires_grad_(False)
    elif config.train_encoder_blocks is not None:
        freeze_lower_blocks(arc.encoder, config.train_encoder_blocks)
    elif config.encoder_lora.rank:
        add_encoder_lora(arc.encoder, config.encoder_lora)


def distillation_for(config: TrainConfig, batch: Batch, cache: TeacherCache | None = None) -> Distillation | None:
    """The distillation a batch is trained with under this config (None: none); with the run's
    teacher cache, the KL over its top-k logits."""
    d = config.distill
    if not (d.weight > 0 and batch.task in d.tasks):
        return None
    return Distillation(d.weight, d.temperature, cache, d.k if cache is not None else None)


def contrast_for(config: TrainConfig) -> Contrast | None:
    """The content-gap hinge every batch is trained with under this config (None: off)."""
    c = config.contrast
    return Contrast(c.weight, c.margin) if c.weight > 0 else None


def input_tokens(batch: Batch) -> int:
    """Encoder and decoder tokens a batch feeds in (for tokens/s)."""
    return sum(len(s.text_ids) + sum(len(seg) for seg in s.segments) for s in batch.samples)


def host_record(record: dict) -> dict:
    """A step's record with its device tensors read: loss and gradient norm as floats, token
    counts as ints (one sync for the lot)."""
    keys = ("loss", "grad_norm", "tokens", "input_tokens")
    values = torch.stack([record[k].double() for k in keys]).tolist()
    out = {**record, **dict(zip(keys, values))}
    out["tokens"], out["input_tokens"] = int(out["tokens"]), int(out["input_tokens"])
    return out


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        arc: ARCModel,
        data,
        eval_batches: list[list[Batch]] | None = None,
        runtime: Runtime | None = None,
    ):
        """`eval_batches[k]`: held-out batches for decoder k (empty for decoders not evaluated)."""
        self.config = config
        self.arc = arc
        self.runtime = runtime or Runtime(0, 1, torch.device("cpu"))
        n_decoders = len(arc.decoders)
        self.weights = config.decoder_weights or [1.0] * n_decoders
        if len(self.weights) != n_decoders:
            raise ValueError(f"decoder_weights has {len(self.weights)} entries for {n_decoders} decoder(s)")
        if not hasattr(data, "next_batch"):
            if sum(w > 0 for w in self.weights) > 1:
                raise ValueError("multi-decoder training needs a data source with next_batch(decoder)")
            if not isinstance(data, Iterable):
                raise TypeError(f"data must be iterable or have next_batch(decoder), got {type(data).__name__}")
        if eval_batches is not None and len(eval_batches) != n_decoders:
            raise ValueError(f"eval_batches has {len(eval_batches)} lists for {n_decoders} decoder(s)")
        self.data = data
        self.iterator = None  # for plain iterables; created in fit(), after a possible resume
        self.eval_batches = eval_batches
        self.out_dir = Path(config.out_dir)
        self.step = 0  # optimizer steps done
        # 0, or the first unchecked step whose loss or gradient norm was not finite (see train_step)
        self._first_nonfinite = torch.zeros((), dtype=torch.long, device=self.runtime.device)
        self.last_checkpoint: Path | None = None

        device = self.runtime.device
        arc.decoders.read_all()  # a model from from_pretrained reads its decoders on use: all now
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.uses_bf16(device.type))
        # build_model reads the decoders in this dtype already; a model built elsewhere is cast
        # here, before it moves, so a GPU never holds their float32 copy
        cast_weights(arc.decoders, DTYPES[config.frozen_decoder_dtype(device.type)])
        shard_decoders = config.fsdp_decoders == "shard"
        # A multi-rank FSDP2 run: only rank 0 holds the weights (on the host; other ranks may hold
        # the model on the meta device, see sharded_build); every rank receives its shards after
        # sharding. Otherwise every process moves its whole model to its device.
        from_rank0 = weights_from_rank0(config, self.runtime)
        # distill.cache: the teacher's top-k logits, refused if built for other decoders or data
        self.teacher_cache = open_cache(config, arc, from_rank0)
        if not from_rank0:
            arc.to(device)
        choose_trained(arc, config)
        if config.frozen_block_cache_mb and arc.encoder.cache_frozen_blocks(config.frozen_block_cache_mb) is None:
            warnings.warn("frozen_block_cache_mb: every encoder block trains or pools: no cache", stacklevel=2)
        weights = None
        if from_rank0:
            share_rng_state()
            if self.runtime.is_main:
                weights = arc.state_dict()  # the full tensors, held until every rank has its shards
                if not shard_decoders:  # replicated decoders are no FSDP2 group: moved whole
                    arc.decoders.to(device)
        if config.pooling_schedule:
            with arc.encoder.pooling_factor(config.pooling_schedule[0][0]):  # refused now, not at step 1
                pass
        if config.activation_checkpointing:
            enable_activation_checkpointing(arc)
        if config.compile:  # after checkpointing (the recomputation is compiled too), before sharding
            compile_blocks(arc)
        set_matmul_precision(device, config.tf32)
        arc.train()
        self.module = wrap(
            arc,
            config.parallel,
            self.runtime,
            bf16=config.uses_bf16(device.type),
            shard_decoders=shard_decoders,
        )
        if from_rank0:
            load_shards_from_rank0(arc, weights, device)
            del weights
        # After wrapping: FSDP2 replaces parameters with sharded ones.
        self.param_names = {p: n for n, p in arc.trained_parameters().items()}
        groups = param_groups(arc, config)
        self.trainable = [p for g in groups for p in g["params"]]
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            groups, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, **optimizer_options(device)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lr_lambda(g["lr"], config.steps, o) for g in groups]
        )

    # ------------------------------------------------------------------------- resume
    def resume(self) -> Path:
        """Restore the latest complete checkpoint of out_dir; refuse an incompatible config."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {self.out_dir / ckpt.CHECKPOINTS}")
        state = self._read_checkpoint(path, ckpt.load_trainer_state, path)
        diffs = resume_differences(state["config"], self.config.to_dict())
        if state["world_size"] != self.runtime.world_size:
            diffs.append(f"world size: {state['world_size']} -> {self.runtime.world_size} (data sharding)")
        if diffs:
            raise ValueError(
                f"cannot resume from {path}: the configuration changed:\n  "
                + "\n  ".join(diffs)
                + "\nOnly "
                + ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_SAFE)
                + " may change when resuming."
            )
        self._read_checkpoint(path, ckpt.load_model_state, self.arc, path / WEIGHTS_FILE)
        ckpt.load_optimizer_state(self.optimizer, state["optimizer"], self.param_names)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scheduler.last_epoch != state["step"]:
            raise ValueError(f"{path}: scheduler at {self.scheduler.last_epoch}, trainer at {state['step']}")
        # A changed `steps` reshapes the decay from here on: rebuild the factors, refresh the LRs.
        self.scheduler.lr_lambdas = [
            lr_lambda(g["initial_lr"], self.config.steps, self.config.optim) for g in self.optimizer.param_groups
        ]
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["lr"] = group["initial_lr"] * factor(self.scheduler.last_epoch)
        mine = state["ranks"][self.runtime.rank]
        self.data.load_state_dict(mine["data"])
        ckpt.set_rng_state(mine["rng"])
        self.step = state["step"]
        self.last_checkpoint = path
        return path

    def _read_checkpoint(self, path: Path, read, *args):
        """read(*args); a corrupt file is an error naming it and the checkpoint to fall back on."""
        try:
            return read(*args)
        except ckpt.CorruptCheckpoint as e:
            older = [p for _, p in ckpt.list_checkpoints(self.out_dir) if p != path]
            hint = (
                f"the previous complete checkpoint is {older[-1]}: move {path.name} out of {path.parent} "
                "to resume from it"
                if older
                else "there is no older checkpoint to fall back on"
            )
            raise ValueError(f"--resume: {e}; {hint}") from None

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Every rank gathers; rank 0 writes. Returns the checkpoint folder."""
        final = ckpt.checkpoint_dir(self.out_dir, self.step)
        model_state = ckpt.model_state(self.arc)
        optimizer_state = ckpt.optimizer_state(self.optimizer, self.param_names)
        ranks = gather_objects({"rng": ckpt.rng_state(), "data": self.data.state_dict()})
        barrier()
        if self.runtime.is_main:
            state = {
                "step": self.step,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "ranks": ranks,
                "world_size": self.runtime.world_size,
                "config": self.config.to_dict(),
            }

            def write(folder: Path) -> None:
                # an ordinary saved model: LoRA updates merged into the weights they adapt
                self.arc.save_pretrained(folder, state_dict=merged_state(self.arc, model_state))
                if has_lora(self.arc):
                    save_file(lora_state(self.arc, model_state), str(folder / LORA_FILE))
                ckpt.save_trainer_state(folder, state)
                save_config(self.config, folder / ckpt.CONFIG_FILE)

            write_folder(final, write)
            ckpt.prune(self.out_dir, self.config.checkpoint.keep)
        barrier()
        self.last_checkpoint = final
        return final

    # ------------------------------------------------------------------------- one step
    def next_batch(self, decoder: int) -> Batch:
        try:
            batch = self.data.next_batch(decoder) if self.iterator is None else next(self.iterator)
        except StopIteration:
            raise RuntimeError(
                f"the data of decoder {decoder} ran out at step {self.step + 1}; "
                "training data must repeat (loop over its sources)"
            ) from None
        if not isinstance(batch, Batch):
            raise TypeError(f"data sources must yield Batch objects, got {type(batch).__name__}")
        return batch

    def train_step(self, check: bool = True) -> dict:
        """One optimizer step. `check`: read the loss and gradient norm on the host, stop on a
        non-finite one before the update and on non-finite weights after it (the record holds
        floats). Without it the step never waits for the device: the record holds device tensors,
        a non-finite loss or norm is remembered on the device, and the next checked step (or
        `verify`) stops naming the first step it happened at."""
        decoder = choose_decoder(self.step, self.weights, self.config.decoder_order, self.config.seed)
        accum = self.config.optim.grad_accum
        device = self.runtime.device
        loss_sum_total = torch.zeros((), dtype=torch.float64, device=device)
        tokens = inputs = 0  # supervised and input tokens of this rank: host ints from the batches
        task = None
        factor = pooling_factor_at(self.config.pooling_schedule, self.step)
        for micro in range(accum):
            batch = self.next_batch(decoder)
            task = batch.task
            sync = micro == accum - 1 or not hasattr(self.module, "no_sync")
            with (
                contextlib.nullcontext() if sync else self.module.no_sync(),
                self.autocast,
                self.arc.encoder.pooling_factor(factor),
            ):
                loss_sum, n_tokens = self.module(
                    batch.samples,
                    decoder,
                    batch.special,
                    distill=distillation_for(self.config, batch, self.teacher_cache),
                    contrast=contrast_for(self.config),
                )
            loss_sum.backward()
            loss_sum_total += loss_sum.detach().double()
            tokens += n_tokens
            inputs += input_tokens(batch)
        counts = torch.tensor([tokens, inputs], dtype=torch.float64).to(device)
        totals = all_reduce_sum(torch.cat([loss_sum_total[None], counts]))  # [3]: loss sum, tokens, inputs
        loss = totals[0] / totals[1]
        # Data parallelism averaged the gradients over ranks; make them d(sum of losses)/d(w) / tokens.
        grads = [p.grad for p in self.trainable if p.grad is not None]
        torch._foreach_mul_(grads, self.runtime.world_size / totals[1])
        grad_norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give a DTensor norm
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.double()  # float64 like the host's arithmetic the clip used to be
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if check:  # an earlier unchecked step's loss or norm is reported first
            self._stop_if_unchecked_step_diverged(self.step + 1)
        if check and not finite.item():  # the checked step's sync before the update
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"training stopped at step {self.step + 1}: loss {loss.item()}, gradient norm {grad_norm.item()} "
                f"(decoder {decoder}, {task} batch); {self._last_good()}"
            )
        if not check:  # remembered on the device: 0, or the first step whose loss or norm was not finite
            first = self._first_nonfinite
            self._first_nonfinite = torch.where((first == 0) & ~finite, self.step + 1, first)
        clip = self.config.optim.grad_clip
        if clip > 0:  # the same coefficient as torch's clip_grad_norm_; x 1.0 leaves a gradient as it is
            torch._foreach_mul_(grads, torch.where(grad_norm > clip, clip / (grad_norm + 1e-6), 1.0))
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        record = {
            "step": self.step,
            "loss": loss,
            "tokens": totals[1],
            "input_tokens": totals[2],
            "grad_norm": grad_norm,
            "lr": lrs,
            "decoder": decoder,
            "task": task,
            **({"pooling_factor": factor} if factor is not None else {}),
        }
        if not check:
            return record
        self.verify()
        return host_record(record)

    def verify(self) -> None:
        """Stop if a step since the last check had a non-finite loss or gradient norm, or if a
        weight is no longer finite on any rank (finite gradients can still make non-finite
        weights, e.g. with a huge learning rate). One host sync; every rank reaches the same
        verdict, so all stop together."""
        self._stop_if_unchecked_step_diverged(self.step)
        bad = self._nonfinite_weights()
        if bad:
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {len(bad)} weight tensor(s) are no longer finite "
                f"(first: {bad[0]}); nothing of this step was saved; {self._last_good()}"
            )

    def _stop_if_unchecked_step_diverged(self, at: int) -> None:
        first = int(self._first_nonfinite.item())
        if first:
            self._first_nonfinite.zero_()
            raise TrainingDiverged(
                f"training stopped at step {at}: the loss or gradient norm of step {first} was not "
                f"finite (checked every log.every steps); nothing since was saved; {self._last_good()}"
            )

    def _nonfinite_weights(self) -> list[str]:
        """Names of the trainable tensors holding a non-finite value on any rank, the same list on
        every rank. Each rank reads only what it holds (its FSDP2 shard, or its DDP replica), so
        the per-tensor flags go through one all-reduce: all ranks stop together, where a rank
        stopping alone would leave the others waiting in the next collective (a hang, not an
        error). One host sync for all tensors, not one per tensor."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.trainable]
        flags = torch.stack([(~torch.isfinite(t.detach())).any() for t in local]).float()  # [P] on the device
        flags = all_reduce_sum(flags)
        return [self.param_names[p] for p, flag in zip(self.trainable, flags.tolist()) if flag > 0]

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        return f"the last checkpoint, {self.last_checkpoint}, holds finite weights and is left intact"

    # ------------------------------------------------------------------------- held-out loss
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out content measures per decoder and task, over all ranks (evaluation.content):
        "d0/reconstruction" is the loss with the right document, ".../gap" the content gap,
        ".../greedy_accuracy" or ".../answer_em" what the decoder writes greedily, etc."""
        if not self.eval_batches:
            return {}
        self.arc.eval()
        sums: dict[str, torch.Tensor] = {}
        greedy: dict[str, torch.Tensor] = {}
        # Greedy decodes stop at different lengths on each rank: FSDP, which gathers weights in
        # every forward, would wait on the ranks that stopped.
        with_greedy = self.config.eval.greedy and not (self.runtime.distributed and self.config.parallel == "fsdp")
        # FSDP gathers weights in every forward: all ranks must run as many, so the rank with the
        # fewest held-out batches (of its shard) sets the count.
        counts = [min(c) for c in zip(*gather_objects([len(b) for b in self.eval_batches]))]
        for decoder, (batches, count) in enumerate(zip(self.eval_batches, counts)):

            def loss_fn(samples, special, decoder=decoder):
                with self.autocast:
                    return self.module(samples, decoder, special, with_accuracy=True)

            for key, value in content_sums(loss_fn, self.arc, batches[:count], decoder).items():
                sums[f"d{decoder}/{key}"] = value
            if with_greedy:
                with self.autocast:
                    for key, value in greedy_sums(self.arc, batches[:count], decoder).items():
                        greedy[f"d{decoder}/{key}"] = value
        self.arc.train()
        losses = self._reduce(sums, 3)
        out = flat_summary(content_summary({k: s for k, s in losses.items() if s[1] > 0}))
        if with_greedy:
            out.update(flat_summary(greedy_summary({k: s for k, s in self._reduce(greedy, 7).items() if s[0] > 0})))
        return out

    def _reduce(self, sums: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        """Sums of every rank added up. Every rank must reduce the same keys in the same order,
        even if its batches differ."""
        keys = sorted({k for ks in gather_objects(sorted(sums)) for k in ks})
        if not keys:  # fewer than two distinct held-out documents: nothing to compare
            return {}
        stacked = torch.stack([sums.get(k, torch.zeros(width, dtype=torch.float64)) for k in keys])
        stacked = all_reduce_sum(stacked.to(self.runtime.device)).cpu()
        return dict(zip(keys, stacked))

    # ------------------------------------------------------------------------- the loop
    def fit(self) -> Path:
        """Train up to config.steps; returns the final checkpoint folder."""
        config, main = self.config, self.runtime.is_main
        if self.step == 0 and ckpt.list_checkpoints(self.out_dir):
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints: pass --resume to continue "
                "that run, or choose another out_dir"
            )
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out_dir / "config.yaml")
        log = (
            MetricsLog(self.out_dir, config.log.tensorboard, resume_step=self.step if self.last_checkpoint else None)
            if main
            else None
        )
        if not hasattr(self.data, "next_batch"):
            self.iterator = iter(self.data)
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=not (main and config.log.progress),
            desc="train",
            dynamic_ncols=True,
        )
        every = config.eval.every
        try:
            if every and self.step == 0:
                self._log_eval(log)
            # loss sum, tokens, input tokens since the last log, on the device: read at log steps only
            window = torch.zeros(3, dtype=torch.float64, device=self.runtime.device)
            started = fit_start = time.perf_counter()
            limit = config.time_limit_minutes * 60 if config.time_limit_minutes else None
            while self.step < config.steps:
                checked = self._checks_after(self.step + 1)
                record = self.train_step(check=checked)
                loss, tokens = (torch.as_tensor(record[k], dtype=torch.float64) for k in ("loss", "tokens"))
                inputs = torch.as_tensor(record["input_tokens"], dtype=torch.float64)
                window += torch.stack([loss * tokens, tokens, inputs]).to(window.device)
                elapsed = time.perf_counter() - started
                bar.update(1)
                out_of_time = self._out_of_time(limit, fit_start, checked)
                last = self.step == config.steps or out_of_time
                if last and not checked:  # stopped early by the time limit: check before saving
                    self.verify()
                    record, checked = host_record(record), True
                if checked:
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}",
                        lr=f"{max(record['lr'].values()):.2e}",
                        tok_s=f"{window[2].item() / max(elapsed, 1e-9):.0f}",
                    )
                if main and (self.step % config.log.every == 0 or last):
                    record["loss_avg"] = (window[0] / window[1]).item()
                    record["tokens_per_s"] = window[2].item() / max(elapsed, 1e-9)
                    if cache := self.arc.encoder.frozen_cache:
                        record["frozen_cache"] = cache.stats()
                    log.write(record)
                    window.zero_()
                    started = time.perf_counter()
                if every and (self.step % every == 0 or last):
                    self._log_eval(log)
                if (config.checkpoint.every and self.step % config.checkpoint.every == 0) or last:
                    self.save_checkpoint()
                if out_of_time:
                    if main:
                        print(f"time limit of {config.time_limit_minutes} min reached at step {self.step}")
                    break
        finally:
            bar.close()
            if log is not None:
                log.close()
        if main and config.log.plot:
            plot_curves(log.path, self.out_dir / PLOT_FILE)
        return self.last_checkpoint

    def _out_of_time(self, limit: float | None, fit_start: float, checked: bool) -> bool:
        """Whether the run's time limit has passed. One process reads its clock every step. Ranks
        decide together, at checked steps only (the same steps on every rank, so every rank calls
        the reduction): a rank that stopped alone would leave the others waiting in a collective."""
        if limit is None or (self.runtime.distributed and not checked):
            return False
        late = time.perf_counter() - fit_start > limit
        if not self.runtime.distributed:
            return late
        return bool(all_reduce_sum(torch.tensor([float(late)], device=self.runtime.device)).item())

    def _checks_after(self, step: int) -> bool:
        """Whether optimizer step `step` reads its loss on the host and checks for divergence: a
        log step, and every step after which the run evaluates, saves or ends (nothing
        unchecked is saved)."""
        c = self.config
        return (
            step % c.log.every == 0
            or step >= c.steps
            or bool(c.eval.every and step % c.eval.every == 0)
            or bool(c.checkpoint.every and step % c.checkpoint.every == 0)
        )

    def _log_eval(self, log: MetricsLog | None) -> None:
        losses = self.evaluate()
        if log is not None and losses:
            log.write({"step": self.step, "eval": losses})


# ----------------------------------------------------------------------------- entry point
def build_data(config: TrainConfig, arc: ARCModel, runtime: Runtime):
    """The training batches: the `data` section's pipeline, drawn by share with `data_mix`'s
    where the config has any (data/mixture.py)."""
    pipelines = [build_pipeline(config, arc, runtime, values=values) for _, values in config.data_sections()]
    if len(pipelines) == 1:
        return pipelines[0]
    shares = [part["share"] for part in config.data_mix]
    rng = seeded_rng(config.seed, runtime.rank, "data_mix")
    return DataMixture(pipelines, [1 - sum(shares), *shares], rng)


def build_pipeline(
    config: TrainConfig, arc: ARCModel, runtime: Runtime, overrides: dict | None = None, values: dict | None = None
):
    """The data pipeline of a data section (default `data`; `overrides` on top), tokenizing for
    every decoder, sharded by rank."""
    values = config.data if values is None else values
    pipeline = {"pretrain": PretrainData, "finetune": FinetuneData}[values["kind"]]
    return pipeline(
        config.data_config(overrides, values=values),
        arc.encoder_tokenizer,
        arc.decoder_tokenizers,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )


def prepare_projectors(config: TrainConfig, arc: ARCModel, runtime: Runtime, batches: int = 4, log=print) -> None:
    """Before the first step of a fresh run: standardizing projectors measure their input
    statistics, and with `projector_init: lstsq` every projector that starts fresh (all of them,
    or under `model.init_from` those of decoders the saved model does not know) starts from its
    least-squares fit. Both read training batches drawn from a separate pipeline (the training
    stream is untouched): `batches` of them, and for the fit more until they hold 8 tokens per
    encoder dimension. Every rank uses rank 0's batches and so computes the same weights."""
    calibrate = any(hasattr(a, "calibrated") and not bool(a.calibrated) for a in arc.adapters)
    fit = fresh_decoders(config, arc) if config.projector_init == "lstsq" else []
    if config.projector_init == "lstsq" and not fit:
        log("projector_init=lstsq: every decoder's projector comes from model.init_from; nothing to fit")
    if not (calibrate or fit):
        return
    probe = build_data(config, arc, Runtime(0, 1, runtime.device))
    wanted = 8 * arc.encoder.hidden_size if fit else 0
    segments, drawn, tokens = [], 0, 0
    while drawn < batches or tokens < wanted:
        batch = [seg for s in probe.next_batch(0).samples for seg in s.segments]
        segments, drawn, tokens = segments + batch, drawn + 1, tokens + sum(map(len, batch))
    arc.to(runtime.device)
    if calibrate:
        calibrate_projector_inputs(arc, segments)
    if fit:
        r2 = fit_projectors_to_embeddings(arc, segments, fit)
        log(
            f"projectors start from their least-squares fit to the token embeddings ({tokens} "
            "tokens; R^2 " + ", ".join(f"decoder {d}: {v:.2f}" for d, v in r2.items()) + ")"
        )


def held_out_batches(source, weights: list[float], n: int) -> list[list[Batch]]:
    """Up to n batches per decoder that trains (fewer if a one-pass source runs out)."""
    out = []
    for decoder, weight in enumerate(weights):
        batches = []
        while weight > 0 and len(batches) < n:
            try:
                batches.append(source.next_batch(decoder))
            except StopIteration:
                break
        out.append(batches)
    return out


def run(config: TrainConfig, resume: bool = False) -> Path:
    """Build everything from the config and train; the `arc-encoder train` command."""
    runtime = init_distributed(config.device)
    try:
        seed_everything(config.seed)
        say = print if runtime.is_main else (lambda *_: None)
        arc = build_for_rank(config, runtime, log=say)
        # where rank 0 alone holds the weights, it alone prepares the projectors (from rank 0's
        # batches, as every rank would), and the shards carry them to the others
        if not resume and (runtime.is_main or not weights_from_rank0(config, runtime)):
            prepare_projectors(config, arc, runtime, log=say)
        data = build_data(config, arc, runtime)
        eval_batches = None
        if config.eval.every:
            weights = config.decoder_weights or [1.0] * len(arc.decoders)
            held_out = build_pipeline(config, arc, runtime, overrides={"loop": False, **config.eval.data})
            eval_batches = held_out_batches(held_out, weights, config.eval.batches)
        trainer = Trainer(config, arc, data, eval_batches, runtime)
        if resume:
            say(f"resuming from {trainer.resume()}")
        final = trainer.fit()
        say(f"done: {final}")
        return final
    finally:
        if runtime.distributed:
            torch.distributed.destroy_process_group()
