"""Adding a decoder to a trained encoder with the committed recipe (configs/smollm2-gemma3-adapt.yaml)
on tiny models: only the new decoder's projector and special vectors move, and the saved model
serves both decoders (the old one exactly as before)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from arc_encoder.model.arc import ARCModel
from arc_encoder.model.delta import shipped_folder
from arc_encoder.model.saved import list_checkpoints, read_saved_config
from arc_encoder.prompt import Doc
from arc_encoder.training.config import load_config
from arc_encoder.training.distributed import Runtime
from arc_encoder.training.model_init import build_model
from arc_encoder.training.projector_init import token_spellings
from arc_encoder.training.trainer import Trainer, build_data, prepare_projectors, seed_everything
from conftest import CORPUS

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "smollm2-gemma3-adapt.yaml"
NEW = ("adapters.1.up.weight", "adapters.1.rec", "adapters.1.cont")  # what the recipe may train


def test_the_recipe_adds_gemma_to_the_shipped_model_and_freezes_the_rest():
    config = load_config(RECIPE)
    _, shipped = read_saved_config(shipped_folder(config.model.init_from))
    arc = config.arc_config(saved=shipped.to_dict())
    # decoder 0 is the shipped SmolLM2 (its adapter is loaded by name), decoder 1 Gemma: fitted and
    # trained anew from a model without it, continued from the shipped model's own Gemma adapter
    assert arc.decoders == [shipped.decoders[0], "gemma3-270m"] and shipped.decoders[0] == "smollm2-135m"
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
        "pooling_schedule=[[1, 1], [2, 2]]",
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


class FakeVocabulary:
    """Just what token_spellings reads of a tokenizer."""

    def __init__(self, vocab: dict[str, int], special: list[str]):
        self.vocab, self.all_special_tokens = vocab, special

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_token_spellings_read_word_start_markers_as_spaces_and_skip_the_rest():
    byte_level = FakeVocabulary(
        {"<pad>": 0, "\u0120the": 7, "the": 3, "\u010a": 4, "caf\u00e9": 5, "\u0120a\u0120b": 6}, ["<pad>"]
    )
    assert token_spellings(byte_level) == {" the": 7, "the": 3, " a b": 6}
    sentencepiece = FakeVocabulary(
        {"<bos>": 2, "\u2581the": 9, "\u2581the\u2581": 1, "x": 8, "\u2581": 11, "<0x0A>": 12}, ["<bos>"]
    )
    # '<0x0A>' is a byte token but spelled in ASCII: kept, and it matches nothing in a byte-level vocabulary
    assert token_spellings(sentencepiece) == {" the": 9, " the ": 1, "x": 8, " ": 11, "<0x0A>": 12}
    # one spelling, two tokens: the lower id
    assert token_spellings(FakeVocabulary({"\u0120a": 5, "\u2581a": 2}, [])) == {" a": 2}


def rotated_decoder(source: str, folder: Path, seed: int = 0) -> tuple[str, torch.Tensor]:
    """A copy of the tiny decoder at `source` whose input embeddings are its own times a random
    orthogonal Q [d, d], with the same tokenizer: the map between the two embedding tables is Q."""
    model = AutoModelForCausalLM.from_pretrained(source)
    width = model.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(model.get_input_embeddings().weight @ q)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder), q


def test_a_carried_projector_is_the_old_one_followed_by_the_embedding_map(tiny_arc, tiny_models, tmp_path):
    source = tiny_arc(seed=5, bottleneck=32)
    source.save_pretrained(tmp_path / "saved")
    rotated, q = rotated_decoder(tiny_models["llama"], tmp_path / "rotated")
    config = adapt_config(tmp_path, tiny_models, tmp_path / "saved")
    config.model.arc["decoders"] = [tiny_models["llama"], rotated]
    config.model.new_projector_from, config.model.new_projector_scale = 0, 0.5
    notes = []
    arc = build_model(config, log=notes.append)

    old, new = arc.adapters
    # the hand-built case: the embedding map is Q, so the new projector is 0.5 Q^T times the old one
    torch.testing.assert_close(new.up.weight, 0.5 * q.T @ old.up.weight, atol=1e-4, rtol=1e-4)
    assert torch.equal(new.down.weight, old.down.weight)  # the bottleneck map is shared as it is
    assert torch.equal(old.up.weight, source.adapters[0].up.weight)  # the saved decoder is untouched
    assert "R^2 1.00" in notes[-1] and "times 0.5" in notes[-1]


def test_new_projector_from_is_refused_without_a_saved_decoder_to_start_from(tiny_arc, tiny_models, tmp_path):
    tiny_arc(seed=5, bottleneck=None).save_pretrained(tmp_path / "saved")
    config = adapt_config(tmp_path, tiny_models, tmp_path / "saved")
    config.model.new_projector_from = 3
    with pytest.raises(ValueError, match=r"new_projector_from=3, but .* has 1 decoder"):
        build_model(config, log=lambda *_: None)
    config.model.new_projector_from = 0
    config.model.arc["decoders"] = [tiny_models["gemma3"]]  # the saved decoder left out of the run
    with pytest.raises(ValueError, match="leave out"):
        build_model(config, log=lambda *_: None)
    with pytest.raises(ValueError, match="new_projector_from needs model.init_from"):
        load_config(RECIPE, ["model.init_from=null", "model.new_special_from=null", "model.new_projector_from=0"])
    with pytest.raises(ValueError, match="new_projector_scale must be a finite number > 0"):
        load_config(RECIPE, ["model.new_projector_scale=0"])


def test_lstsq_starts_only_the_new_decoders_projector(tiny_arc, tiny_models, tmp_path):
    """Under a warm start, `projector_init: lstsq` fits the projectors of the decoders the saved
    model does not know and leaves the saved ones as they were loaded."""
    source = tiny_arc(seed=5, bottleneck=None)
    source.save_pretrained(tmp_path / "saved")
    config = adapt_config(tmp_path, tiny_models, tmp_path / "saved")
    assert config.projector_init == "lstsq"  # the recipe's start
    seed_everything(config.seed)
    arc = build_model(config, log=lambda *_: None)
    fresh = arc.adapters[1].up.weight.detach().clone()
    notes = []
    prepare_projectors(config, arc, Runtime(0, 1, torch.device("cpu")), log=notes.append)

    assert torch.equal(arc.adapters[0].up.weight, source.adapters[0].up.weight)  # loaded, not refitted
    assert not torch.equal(arc.adapters[1].up.weight, fresh)
    assert "decoder 1:" in notes[-1] and "decoder 0:" not in notes[-1]
    # the fitted decoder reads its vectors at x1 close to its own embeddings of the same tokens:
    # closer than from the fresh start and than their mean. The tiny tokenizers' vocabularies
    # depend on the hash seed, and with them the fit's R^2 on these texts: 0.3 to 0.6 seen.
    segs = [arc.encoder_tokenizer(text, add_special_tokens=False)["input_ids"] for text in CORPUS[:4]]

    def residual() -> float:
        with torch.no_grad(), arc.encoder.pooling_factor(1):
            got = torch.cat([arc.adapters[1].expand(v) for v in arc.encode_segments(segs, 1)])
        return float((got - want).pow(2).sum())

    want = arc.decoders[1].get_input_embeddings()(torch.tensor([t for s in segs for t in s])).detach()
    fitted = residual()
    with torch.no_grad():
        arc.adapters[1].up.weight.copy_(fresh)
    assert fitted < 0.85 * float((want - want.mean(0)).pow(2).sum()) and fitted < 0.85 * residual()


def test_lstsq_and_a_carried_projector_are_refused_together():
    with pytest.raises(ValueError, match="projector_init=lstsq, model.new_projector_from: each starts"):
        load_config(RECIPE, ["projector_init=lstsq", "model.new_projector_from=0"])
    with pytest.raises(ValueError, match="projector_init=lstsq, model.adapters_from: each starts"):
        load_config(RECIPE, ["projector_init=lstsq", "model.adapters_from=smollm2-arc4"])
    with pytest.raises(ValueError, match="adapters_from needs model.init_from"):
        load_config(RECIPE, ["model.init_from=null", "model.new_special_from=null", "model.adapters_from=x"])


def test_adapters_from_carries_a_second_decoders_adapter_onto_a_retrained_encoder(tiny_arc, tiny_models, tmp_path):
    """A new version retrained the encoder for decoder 0 only; the previous version's adapter of
    decoder 1 starts decoder 1 again, and the encoder and decoder 0 are the new version's."""
    both = [tiny_models["llama"], tiny_models["gemma3"]]
    previous = tiny_arc(seed=5, bottleneck=None, decoders=both)
    previous.save_pretrained(tmp_path / "previous")
    retrained = tiny_arc(seed=6, bottleneck=None)  # another encoder and decoder-0 adapter
    retrained.save_pretrained(tmp_path / "retrained")
    config = adapt_config(tmp_path, tiny_models, tmp_path / "retrained")
    config.projector_init, config.model.adapters_from = "random", str(tmp_path / "previous")
    notes = []
    arc = build_model(config, log=notes.append)

    mine = arc.state_dict()
    for name, tensor in retrained.state_dict().items():
        if name.startswith(("encoder.", "adapters.0.")):
            assert torch.equal(mine[name], tensor), name
    for name, tensor in previous.adapters[1].state_dict().items():
        assert torch.equal(mine[f"adapters.1.{name}"], tensor), name
    assert not torch.equal(previous.adapters[0].up.weight, arc.adapters[0].up.weight)
    assert "decoder 1" in notes[-1] and "previous" in notes[-1]

    config.model.adapters_from = str(tmp_path / "retrained")  # has no adapter for decoder 1
    with pytest.raises(ValueError, match="adapters_from: .* has an adapter for none of the decoders"):
        build_model(config, log=lambda *_: None)
