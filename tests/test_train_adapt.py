"""Adding a decoder to a trained encoder with the committed recipe (configs/smollm2-gemma3-adapt.yaml)
on tiny models: only the new decoder's projector and special vectors move, and the saved model
serves both decoders (the old one exactly as before)."""

from __future__ import annotations

from pathlib import Path

import torch

from arc_encoder.model.arc import ARCModel
from arc_encoder.model.delta import shipped_folder
from arc_encoder.model.saved import list_checkpoints, read_saved_config
from arc_encoder.prompt import Doc
from arc_encoder.training.config import load_config
from arc_encoder.training.distributed import Runtime
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Trainer, build_data, seed_everything
from conftest import CORPUS

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "smollm2-gemma3-adapt.yaml"
NEW = ("adapters.1.up.weight", "adapters.1.rec", "adapters.1.cont")  # what the recipe may train


def test_the_recipe_adds_gemma_to_the_shipped_model_and_freezes_the_rest():
    config = load_config(RECIPE)
    _, shipped = read_saved_config(shipped_folder(config.model.init_from))
    arc = config.arc_config(saved=shipped.to_dict())
    # decoder 0 is the shipped one (its adapter is loaded by name), decoder 1 is new
    assert arc.decoders == [shipped.decoders[0], "gemma3-270m"] and len(shipped.decoders) == 1
    assert config.freeze_encoder and config.decoder_weights == [0.0, 1.0] and config.model.new_special_from == 0
    assert arc.bottleneck is None and arc.pooling_factors == shipped.pooling_factors


def adapt_config(tmp_path, tiny_models, saved: Path):
    """The committed recipe with tiny models, a tiny text file and a few steps."""
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(CORPUS[:5] * 4) + "\n")
    decoders = f"[{tiny_models['llama']}, {tiny_models['gemma3']}]"
    overrides = [
        f"model.init_from={saved}",
        f"model.arc.decoders={decoders}",
        f"data.sources=[{docs}]",
        "data.seq_len=16",
        "data.compress_tokens=8",
        "data.target_tokens=8",
        "data.curriculum=[]",
        "data.curriculum_batches=0",
        "data.reconstruction_only_batches=1",
        "data.continuation=0.5",
        "steps=3",
        "batch_size=2",
        "optim.warmup_steps=1",
        "device=cpu",
        "eval.every=0",
        "checkpoint.every=0",
        "log.progress=false",
        "log.plot=false",
        f"out_dir={tmp_path / 'run'}",
    ]
    return load_config(RECIPE, overrides)


def test_adaptation_trains_only_the_new_projector_and_special_vectors(tiny_arc, tiny_models, tmp_path):
    source = tiny_arc(seed=5, bottleneck=None)  # the shipped model has no bottleneck either
    source.save_pretrained(tmp_path / "saved")
    config = adapt_config(tmp_path, tiny_models, tmp_path / "saved")

    seed_everything(config.seed)
    arc = build_model(config, log=lambda *_: None)
    before = {k: v.detach().clone() for k, v in arc.state_dict().items()}
    for name, tensor in source.state_dict().items():  # the warm start: the saved model's tensors
        if not name.startswith("decoders."):
            assert torch.equal(before[name], tensor), name
    runtime = Runtime(0, 1, torch.device("cpu"))
    trainer = Trainer(config, arc, build_data(config, arc, runtime), None, runtime)
    trainable = sum(p.numel() for n, p in arc.named_parameters() if n.startswith(NEW))
    assert trainable == 64 * 64 + 2 * 64  # encoder width x decoder width, plus <Rec> and <Cont>
    final = trainer.fit()

    after = arc.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    # every tensor but the new decoder's projector and special vectors is bit-identical:
    # encoder, decoder 0's adapter, and both frozen decoders
    assert moved <= set(NEW) and "adapters.1.up.weight" in moved, moved
    assert moved & {"adapters.1.rec", "adapters.1.cont"}  # reconstruction or continuation ran

    # the saved model serves both decoders; decoder 0 answers exactly as before adaptation
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3]
    served = ARCModel.from_pretrained(final).eval()
    assert served.config.decoders == [tiny_models["llama"], tiny_models["gemma3"]]
    prompt = ["Document: ", Doc(CORPUS[0]), "\nQuestion: who jumps?\nAnswer:"]
    old = source.eval().generate(prompt, decoder=0, max_new_tokens=4)[0]
    assert served.generate(prompt, decoder=0, max_new_tokens=4)[0].token_ids == old.token_ids
    new = served.generate(prompt, decoder=1, max_new_tokens=4)[0]
    assert new.compressed_vectors == old.compressed_vectors and len(new.token_ids) >= 1
    for name in NEW:
        assert torch.equal(served.state_dict()[name], after[name]), name
