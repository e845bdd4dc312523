"""The training recipe on tiny models: learning, what moves, multi-decoder, resume, NaN, warm starts."""

from __future__ import annotations

import json

import pytest
import torch

from arc_encoder.loading import load_model
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.saved import WEIGHTS_FILE, latest_checkpoint
from arc_encoder.training import checkpoint as ckpt
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Trainer, TrainingDiverged, choose_decoder, seed_everything
from training_data import TokenBatches, random_texts, write_sharp_model

TEXTS = random_texts(8, 16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and two threads on a busy 2-core machine spin-wait
    (50x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sharp(tmp_path_factory):
    return write_sharp_model(tmp_path_factory.mktemp("sharp") / "llama")


def make_config(tmp_path, backbone, decoders=None, **overrides):
    tree = {
        "model": {
            "arc": {
                "backbone": backbone,
                "drop_layers": 1,
                "decoders": decoders or [backbone],
                "bottleneck": 32,
                "pooling_factors": [2],
            }
        },
        "data": {"kind": "pretrain"},
        "optim": {"lr_encoder": 1e-3, "lr_projector": 3e-3, "lr_special": 3e-3, "weight_decay": 0.1},
        "steps": 4,
        "batch_size": 4,
        "out_dir": str(tmp_path / "run"),
        "checkpoint": {"every": 0},
        "log": {"every": 1, "progress": False, "plot": False},
    }
    for key, value in overrides.items():
        node = tree
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(tree)


def new_trainer(config, data=None, eval_batches=None, seed=0):
    seed_everything(seed)
    arc = build_model(config, log=lambda *_: None)
    data = TokenBatches(TEXTS, config.batch_size) if data is None else data
    return Trainer(config, arc, data, eval_batches)


def snapshot(arc):
    return {k: v.detach().clone() for k, v in arc.state_dict().items()}


def test_reconstruction_loss_falls_on_cpu(sharp, tmp_path):
    config = make_config(
        tmp_path,
        sharp,
        steps=200,
        optim__warmup_steps=10,
        optim__final_lr=3e-4,
        optim__weight_decay=0.0,
        log__every=10,
        log__plot=True,
        eval__every=100,
        eval__batches=2,
    )
    eval_batches = [[TokenBatches(TEXTS, 4).batch(0), TokenBatches(TEXTS, 4, "continuation").batch(1)]]
    trainer = new_trainer(config, eval_batches=eval_batches)
    first = trainer.train_step()["loss"]
    final = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train[-1]["step"] == 200 and train[-1]["loss_avg"] < 0.5 * first, (first, train[-1])
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [100, 200]
    held_out = evals[-1]["eval"]
    names = ("", "/mismatched", "/none", "/text", "/gap", "/accuracy", "/accuracy_none")
    names += ("/greedy_accuracy", "/greedy_exact", "/greedy_rouge_l")
    assert set(held_out) == {f"d0/{task}{n}" for task in ("reconstruction", "continuation") for n in names}
    # the content gap is the mismatched-document loss minus the right one
    assert held_out["d0/reconstruction/gap"] == pytest.approx(
        held_out["d0/reconstruction/mismatched"] - held_out["d0/reconstruction"]
    )
    assert 0 <= held_out["d0/reconstruction/accuracy"] <= 1
    assert {"lr", "grad_norm", "tokens_per_s", "decoder", "task"} <= set(train[-1])
    assert set(train[-1]["lr"]) == {"encoder", "projector", "special"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    # the final checkpoint is an ordinary saved model
    loaded = ARCModel.from_pretrained(final)
    for name, tensor in loaded.state_dict().items():
        if not name.startswith("decoders."):
            assert torch.equal(tensor, trainer.arc.state_dict()[name]), name


def test_commands_read_a_run_folder_as_its_latest_checkpoint(tiny_models, tmp_path):
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], steps=2))
    trainer.fit()
    loaded = load_model(str(tmp_path / "run"))
    for name, tensor in loaded.state_dict().items():
        if not name.startswith("decoders."):
            assert torch.equal(tensor, trainer.arc.state_dict()[name]), name
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model: .*empty is neither"):
        load_model(str(tmp_path / "empty"))


def test_a_step_moves_encoder_projector_and_used_special_only(tiny_models, tmp_path):
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"]))
    before = snapshot(trainer.arc)
    record = trainer.train_step()  # a reconstruction batch: <Rec> is used, <Cont> is not
    after = snapshot(trainer.arc)
    assert record["task"] == "reconstruction"
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith("decoders."):
            assert same, f"frozen decoder weight {name} changed"
        elif name == "adapters.0.cont":
            assert same, "the unused <Cont> token changed"
        else:
            assert not same, f"{name} did not change"
    assert trainer.arc.adapters[0].cont not in trainer.optimizer.state
    assert all(p.grad is None for p in trainer.arc.parameters())


def test_only_the_chosen_decoders_adapter_and_adam_state_move(tiny_models, tmp_path):
    config = make_config(
        tmp_path, tiny_models["llama"], [tiny_models["llama"], tiny_models["llama-wide"]], decoder_order="round_robin"
    )
    trainer = new_trainer(config)
    adapters = trainer.arc.adapters
    start = snapshot(adapters)
    assert trainer.train_step()["decoder"] == 0
    after_a = snapshot(adapters)
    moments_a = {
        id(p): {k: v.clone() for k, v in trainer.optimizer.state[p].items()}
        for p in adapters[0].parameters()
        if p in trainer.optimizer.state
    }
    for name in start:
        assert torch.equal(start[name], after_a[name]) == (name.startswith("1.") or name == "0.cont"), name
    assert not any(p in trainer.optimizer.state for p in adapters[1].parameters())

    assert trainer.train_step()["decoder"] == 1
    after_b = snapshot(adapters)
    for name in start:
        if name.startswith("0."):
            assert torch.equal(after_a[name], after_b[name]), f"adapter of decoder 0 moved: {name}"
        elif name != "1.cont":
            assert not torch.equal(after_a[name], after_b[name]), name
    for p in adapters[0].parameters():
        for key, value in moments_a.get(id(p), {}).items():
            assert torch.equal(trainer.optimizer.state[p][key], value), f"AdamW {key} of decoder 0 moved"


def test_decoder_choice_is_seeded_weighted_and_round_robin():
    picks = [choose_decoder(s, [0.25, 0.75], "sample", seed=3) for s in range(4000)]
    assert picks == [choose_decoder(s, [0.25, 0.75], "sample", seed=3) for s in range(4000)]
    assert 0.70 < sum(picks) / len(picks) < 0.80
    assert picks != [choose_decoder(s, [0.25, 0.75], "sample", seed=4) for s in range(4000)]
    assert {choose_decoder(s, [1.0, 0.0], "sample", 0) for s in range(100)} == {0}
    assert [choose_decoder(s, [1, 0, 1], "round_robin", 0) for s in range(4)] == [0, 2, 0, 2]


def test_pooling_schedule_sets_the_factor_of_each_step(tiny_models, tmp_path):
    config = make_config(
        tmp_path, tiny_models["llama"], pooling_schedule=[[1, 2], [2, 3]], model__arc__pooling_factors=[4]
    )
    trainer = new_trainer(config)
    seen = []
    original = trainer.arc.encoder.forward

    def spy(ids, lengths, memory=None):
        out, counts = original(ids, lengths, memory)
        seen.append((trainer.step, lengths[0], counts[0]))
        return out, counts

    trainer.arc.encoder.forward = spy
    rows = [trainer.train_step() for _ in range(4)]
    assert [r.get("pooling_factor") for r in rows] == [1, 1, 2, None]
    factors = {step: -(-n // m) if m > 1 else round(n / m) for step, n, m in seen}
    assert [factors[s] for s in range(4)] == [1, 1, 2, 4]


def test_freeze_encoder_trains_adapter_only(tiny_models, tmp_path):
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], freeze_encoder=True))
    before = snapshot(trainer.arc)
    trainer.train_step()
    after = snapshot(trainer.arc)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["projector", "special"]
    for name in before:
        assert torch.equal(before[name], after[name]) == (
            not name.startswith("adapters.") or name == "adapters.0.cont"
        ), name


def test_activation_checkpointing_saves_memory_not_results(tiny_models, tmp_path):
    results = []
    uneven = [t[: 8 + i] for i, t in enumerate(TEXTS)]  # padded batches, as real data makes them
    for flag in (False, True):
        config = make_config(tmp_path / str(flag), tiny_models["llama"], activation_checkpointing=flag)
        trainer = new_trainer(config, data=TokenBatches(uneven, config.batch_size))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            trainer.train_step()
        results.append((sum(saved), snapshot(trainer.arc)))
    (plain_saved, plain), (ckpt_saved, checkpointed) = results
    assert ckpt_saved < 0.6 * plain_saved, (ckpt_saved, plain_saved)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=0, atol=1e-6)


def test_kill_and_resume_is_bit_identical(tiny_models, tmp_path):
    def config(name):
        return make_config(
            tmp_path / name,
            tiny_models["llama"],
            steps=6,
            optim__grad_accum=2,
            optim__warmup_steps=2,
            checkpoint__every=2,
            checkpoint__keep=2,
            eval__every=3,
            eval__batches=1,
        )

    texts = random_texts(11, 16, seed=5)  # 11 texts: no two of the first 12 batches are alike
    evals = [[TokenBatches(texts, 4, "continuation").batch(0)]]
    whole = new_trainer(config("whole"), TokenBatches(texts, 4), eval_batches=evals)
    whole.fit()
    rng_whole = ckpt.rng_state()

    # killed in the middle of step 5 (its second micro-batch), after the checkpoint of step 4
    killed = new_trainer(config("killed"), TokenBatches(texts, 4, fail_at=9), eval_batches=evals)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed" / "run")] == [2, 4]

    # a fresh process: other seed, other initial weights, data from the start; resume restores all
    torch.manual_seed(1234)
    resumed = new_trainer(config("killed"), TokenBatches(texts, 4), eval_batches=evals, seed=1234)
    assert resumed.resume().name == "step_00000004" and resumed.step == 4
    resumed.fit()
    rng_resumed = ckpt.rng_state()  # the random streams continue where they were, too
    assert torch.equal(rng_whole["torch"], rng_resumed["torch"]) and rng_whole["python"] == rng_resumed["python"]
    assert (rng_whole["numpy"][1] == rng_resumed["numpy"][1]).all()
    expected, got = snapshot(whole.arc), snapshot(resumed.arc)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "killed" / "run" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # records after the checkpoint were not kept twice


def test_resume_refuses_other_configs_and_allows_more_steps(tiny_models, tmp_path):
    base = dict(checkpoint__every=2)
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], **base))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        trainer.resume()
    trainer.fit()
    with pytest.raises(FileExistsError, match="--resume"):
        new_trainer(make_config(tmp_path, tiny_models["llama"], **base)).fit()
    changed = new_trainer(
        make_config(tmp_path, tiny_models["llama"], optim__lr_special=1e-2, model__arc__pooling_factors=[4], **base)
    )
    with pytest.raises(ValueError) as err:
        changed.resume()
    assert "optim.lr_special: 0.003 -> 0.01" in str(err.value)
    assert "model.arc.pooling_factors: [2] -> [4]" in str(err.value)
    longer = new_trainer(make_config(tmp_path, tiny_models["llama"], steps=6, **base))
    longer.resume()
    assert longer.step == 4
    longer.fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")][-1] == 6


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_models, tmp_path):
    config = make_config(tmp_path, tiny_models["llama"], steps=8, checkpoint__every=2)
    trainer = new_trainer(config)

    class Poisoned(TokenBatches):
        def next_batch(self, decoder=0):
            if self.position == 4:  # the batch of step 5
                trainer.arc.adapters[0].down.weight.data[0, 0] = float("nan")
            return super().next_batch(decoder)

    trainer.data = Poisoned(TEXTS, 4)
    message = r"step 5: loss nan.*step_00000004, holds finite weights and is left intact"
    with pytest.raises(TrainingDiverged, match=message):
        trainer.fit()
    assert [s for s, _ in ckpt.list_checkpoints(config.out_dir)] == [2, 4]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    good = ARCModel.from_pretrained(latest_checkpoint(config.out_dir))
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_weights_made_infinite_by_a_step_stop_training_before_any_checkpoint(tiny_models, tmp_path):
    # finite loss and gradients, but an update that leaves a weight infinite (as a learning rate
    # near float32's limit would): nothing of that step may be saved as a checkpoint
    config = make_config(tmp_path, tiny_models["llama"], steps=4, checkpoint__every=1)
    trainer = new_trainer(config)
    real_step = trainer.optimizer.step

    def overflowing_step(*args, **kwargs):
        real_step(*args, **kwargs)
        if trainer.step == 2:  # during the third step
            trainer.arc.adapters[0].up.weight.data[0, 0] = float("inf")

    trainer.optimizer.step = overflowing_step
    message = r"step 3: 1 weight tensor\(s\) are no longer finite \(first: adapters.0.up.weight\).*step_00000002, holds"
    with pytest.raises(TrainingDiverged, match=message):
        trainer.fit()
    assert [s for s, _ in ckpt.list_checkpoints(config.out_dir)] == [1, 2]


def test_warm_start_with_another_pooling_factor_and_a_new_decoder(tiny_models, tmp_path):
    source = new_trainer(make_config(tmp_path, tiny_models["llama"])).arc
    with torch.no_grad():
        source.adapters[0].rec.add_(torch.randn_like(source.adapters[0].rec))
    source.save_pretrained(tmp_path / "saved")
    saved = snapshot(source)

    config = make_config(
        tmp_path, "unused", model__init_from=str(tmp_path / "saved"), model__arc={"pooling_factors": [4]}
    )
    arc = build_model(config, log=lambda *_: None)
    assert arc.config.pooling_factors == [4] and arc.config.backbone == tiny_models["llama"]
    for name, tensor in snapshot(arc).items():
        if not name.startswith("decoders."):
            assert torch.equal(tensor, saved[name]), name

    # new-decoder adaptation: a wider decoder, fresh projector, special tokens from decoder 0
    config = make_config(
        tmp_path,
        "unused",
        model__init_from=str(tmp_path / "saved"),
        model__arc={"decoders": [tiny_models["llama-wide"]]},
        model__new_special_from=0,
        freeze_encoder=True,
    )
    notes = []
    arc = build_model(config, log=notes.append)
    assert "new projector; special tokens from saved decoder 0" in notes[0]
    assert torch.equal(arc.adapters[0].rec, saved["adapters.0.rec"])
    assert arc.adapters[0].up.weight.shape[0] == 96
    assert torch.equal(arc.encoder.embed_tokens.weight, saved["encoder.embed_tokens.weight"])

    with pytest.raises(ValueError, match="drop_layers"):
        build_model(
            make_config(tmp_path, "unused", model__init_from=str(tmp_path / "saved"), model__arc={"drop_layers": 2})
        )
    with pytest.raises(FileNotFoundError, match="init_from"):
        build_model(make_config(tmp_path, "unused", model__init_from=str(tmp_path / "nothing")))


def test_bad_data_is_named(tiny_models, tmp_path):
    config = make_config(tmp_path, tiny_models["llama"])
    with pytest.raises(TypeError, match="Batch"):
        new_trainer(config, data=[["not", "a", "batch"]]).fit()
    with pytest.raises(RuntimeError, match="ran out at step 1"):
        new_trainer(config, data=[]).fit()
    two = make_config(tmp_path, tiny_models["llama"], [tiny_models["llama"], tiny_models["llama"]])
    with pytest.raises(ValueError, match="next_batch"):
        new_trainer(two, data=[])
    with pytest.raises(ValueError, match="decoder_weights has 3"):
        new_trainer(make_config(tmp_path, tiny_models["llama"], decoder_weights=[1, 1, 1]))


def test_tensorboard_mirrors_the_metrics(tiny_models, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], steps=2, log__tensorboard=True))
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss_avg", "grad_norm", "lr/encoder", "lr/special", "tokens_per_s"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_bf16_autocast_step_runs(tiny_models, tmp_path):
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], precision="bf16"))
    before = trainer.arc.adapters[0].up.weight.detach().clone()
    record = trainer.train_step()
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert trainer.arc.adapters[0].up.weight.dtype == torch.float32  # fp32 master weights
    assert not torch.equal(before, trainer.arc.adapters[0].up.weight)


def test_time_limit_stops_early_with_a_checkpoint(tiny_models, tmp_path):
    trainer = new_trainer(make_config(tmp_path, tiny_models["llama"], steps=1000, time_limit_minutes=1e-6))
    final = trainer.fit()
    assert trainer.step == 1  # the limit is checked after each step
    assert final == latest_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("damaged", [ckpt.STATE_FILE, WEIGHTS_FILE])
def test_resume_from_a_corrupt_checkpoint_names_the_file_and_the_one_before(tiny_models, tmp_path, damaged):
    config = make_config(tmp_path, tiny_models["llama"], steps=4, checkpoint__every=2)
    new_trainer(config).fit()
    file = tmp_path / "run" / "checkpoints" / "step_00000004" / damaged
    file.write_bytes(file.read_bytes()[:100])  # truncated, as a full disk would leave it
    with pytest.raises(ValueError, match=rf"cannot read .*{damaged}.*previous complete checkpoint is .*step_00000002"):
        new_trainer(make_config(tmp_path, tiny_models["llama"], steps=6, checkpoint__every=2)).resume()


def lora_config(tmp_path, backbone, **overrides):
    lora = dict(encoder_lora__rank=4, encoder_lora__alpha=8.0, encoder_lora__blocks=1)
    return make_config(tmp_path, backbone, **{**lora, **overrides})


def test_encoder_lora_trains_its_factors_and_saves_the_merged_weights(tiny_models, tmp_path):
    pytest.importorskip("peft")
    trainer = new_trainer(lora_config(tmp_path, tiny_models["llama"], steps=3))
    last = len(trainer.arc.encoder.layers) - 1
    trained = {n for n, p in trainer.arc.named_parameters() if p.requires_grad and n.startswith("encoder.")}
    q = f"encoder.layers.{last}.self_attn.q_proj"
    assert {f"{q}.lora_A.default.weight", f"{q}.lora_B.default.weight"} <= trained
    assert all(".lora_" in n and f"layers.{last}." in n for n in trained), trained
    before = snapshot(trainer.arc)
    final = trainer.fit()
    after = snapshot(trainer.arc)
    assert torch.equal(before[f"{q}.base_layer.weight"], after[f"{q}.base_layer.weight"])  # frozen
    assert not torch.equal(before[f"{q}.lora_B.default.weight"], after[f"{q}.lora_B.default.weight"])

    # the checkpoint is a plain model whose adapted weight is W + (alpha / rank) B A
    loaded = ARCModel.from_pretrained(final)
    W, A, B = (after[f"{q}.{k}.weight"] for k in ("base_layer", "lora_A.default", "lora_B.default"))
    by_hand = W + (8.0 / 4) * B @ A
    torch.testing.assert_close(loaded.state_dict()[f"{q}.weight"], by_hand, rtol=0, atol=1e-6)
    assert torch.equal(
        loaded.state_dict()["encoder.layers.0.self_attn.q_proj.weight"],
        before["encoder.layers.0.self_attn.q_proj.weight"],
    )
    ids = torch.randint(5, 300, (2, 12))
    trainer.arc.eval()
    with torch.no_grad():
        expected, _ = trainer.arc.encoder(ids, [12, 9])
        got, _ = loaded.encoder(ids, [12, 9])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_encoder_lora_resumes_bit_identically(tiny_models, tmp_path):
    pytest.importorskip("peft")
    texts = random_texts(11, 16, seed=5)
    whole = new_trainer(
        lora_config(tmp_path / "whole", tiny_models["llama"], checkpoint__every=2), TokenBatches(texts, 4)
    )
    whole.fit()
    config = lora_config(tmp_path / "killed", tiny_models["llama"], checkpoint__every=2)
    killed = new_trainer(config, TokenBatches(texts, 4, fail_at=3))  # dies in step 4
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = new_trainer(config, TokenBatches(texts, 4), seed=1234)  # other LoRA initialisation
    assert resumed.resume().name == "step_00000002"
    resumed.fit()
    expected, got = snapshot(whole.arc), snapshot(resumed.arc)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # a checkpoint without its LoRA file is refused by name
    (latest_checkpoint(tmp_path / "killed" / "run") / "lora.safetensors").unlink()
    with pytest.raises(ValueError, match="lora.safetensors is missing"):
        new_trainer(config, TokenBatches(texts, 4)).resume()


def test_encoder_lora_config_is_checked(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="leave freeze_encoder false"):
        lora_config(tmp_path, tiny_models["llama"], train_encoder_blocks=1)
    with pytest.raises(ValueError, match="encoder_lora.rank"):
        lora_config(tmp_path, tiny_models["llama"], encoder_lora__rank=-1)
    with pytest.raises(ValueError, match="rnak"):
        make_config(tmp_path, tiny_models["llama"], encoder_lora__rnak=4)
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="only 3 blocks"):
        new_trainer(lora_config(tmp_path, tiny_models["llama"], encoder_lora__blocks=9))
    with pytest.raises(ValueError, match="encoder_lora.targets"):
        new_trainer(lora_config(tmp_path, tiny_models["llama"], encoder_lora__targets=["no_such_proj"]))
