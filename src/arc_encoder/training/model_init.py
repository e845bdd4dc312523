"""The model a run starts from: a fresh ARCModel, or one warm-started from a saved model.

Warm starts cover the paper's three uses (method.md §7.2):
- fine-tuning after pretraining, possibly at another pooling factor (pooling has no weights);
- training on more or other decoders: adapters of decoders the saved model knows (matched by the
  decoder name in its config) are loaded, the others start fresh;
- new-decoder adaptation: a fresh projector, one carried over from a saved decoder's
  (`new_projector_from`), or the adapter another saved model has for the same decoder
  (`adapters_from`: a second decoder re-fitted after its encoder was retrained), <Rec>/<Cont>
  copied from one of the saved decoders (`new_special_from`),
  encoder frozen by the run's `freeze_encoder`.
`init_from` is a saved model folder (full or delta), a shipped model name, or a training run folder
(its latest checkpoint).
"""

from __future__ import annotations

from ..devices import DTYPES, resolve_device
from ..model.arc import ARCModel
from ..model.saved import SavedModel, load, load_state, locate
from .config import TrainConfig
from .projector_init import transfer_projector

# What a warm start may not change: the encoder's weights would not fit.
_ENCODER_SHAPE = ("backbone", "drop_layers", "pooling", "memory_tokens", "bottleneck")


def build_model(config: TrainConfig, log=print) -> ARCModel:
    """The run's model, its frozen decoders read in the dtype `decoder_dtype` resolves to on the
    run's device (the trainer would cast them otherwise, after holding them in float32)."""
    spec = config.model
    dtype = DTYPES[config.frozen_decoder_dtype(resolve_device(config.device).type)]
    if spec.init_from is None:
        return ARCModel.from_config(config.arc_config(), pretrained=spec.pretrained, decoder_dtype=dtype)
    source = locate(spec.init_from, role="model.init_from")
    saved = source.config.to_dict()
    arc_config = config.arc_config(saved=saved)
    changed = [k for k in _ENCODER_SHAPE if getattr(arc_config, k) != saved.get(k)]
    if changed:
        raise ValueError(
            f"model.init_from: {changed} differ from the saved model in {source.folder}; "
            "a warm start keeps the encoder's shape (the pooling factor may change)"
        )

    def sources(arc: ARCModel, source: SavedModel) -> dict[str, str]:
        return warm_start_sources(arc, source, spec.new_special_from, log)

    arc = load(
        ARCModel,
        source,
        decoder_dtype=dtype,
        config=arc_config,
        sources=sources,
        pretrained=spec.pretrained,
        role="model.init_from",
    )
    if spec.new_projector_from is not None:
        carry_projectors(arc, source, spec.new_projector_from, spec.new_projector_scale, log)
    if spec.adapters_from is not None:
        copy_adapters(arc, source, locate(spec.adapters_from, role="model.adapters_from"), log)
    return arc


def saved_decoder(source: SavedModel, index: int, key: str) -> str:
    """The name of decoder `index` of the saved model, refused by `key` if it has no such decoder."""
    names = source.config.decoders
    if not 0 <= index < len(names):
        raise ValueError(f"model.{key}={index}, but {source.folder} has {len(names)} decoder(s)")
    return names[index]


def fresh_decoders(config: TrainConfig, arc: ARCModel) -> list[int]:
    """Indices of the decoders whose projectors start fresh: all of them without
    `model.init_from`, else those the saved model does not know (by name)."""
    if config.model.init_from is None:
        return list(range(len(arc.config.decoders)))
    return unknown_decoders(arc, locate(config.model.init_from, role="model.init_from"))


def unknown_decoders(arc: ARCModel, source: SavedModel) -> list[int]:
    """Indices of the run's decoders the saved model does not know by name."""
    return [i for i, name in enumerate(arc.config.decoders) if name not in source.config.decoders]


def carry_projectors(arc: ARCModel, source: SavedModel, projector_from: int, scale: float, log=print) -> None:
    """Start every decoder the saved model does not know from saved decoder `projector_from`'s
    projector, carried into its embedding space (projector_init.transfer_projector)."""
    name = saved_decoder(source, projector_from, "new_projector_from")
    if name not in arc.config.decoders:
        raise ValueError(
            f"model.new_projector_from={projector_from}: the run's decoders {arc.config.decoders} "
            f"leave out {name!r}, whose projector the new ones would start from"
        )
    old = arc.config.decoders.index(name)
    for i in unknown_decoders(arc, source):
        r2, tokens = transfer_projector(arc, old, i, scale)
        log(
            f"decoder {i} ({arc.config.decoders[i]}): projector carried over from decoder {old} ({name}) "
            f"through {tokens} tokens both vocabularies spell alike (R^2 {r2:.2f}), times {scale:g}"
        )


def adapter_sources(arc: ARCModel, i: int, j: int) -> dict[str, str]:
    """{tensor of decoder i's adapter: the same tensor of saved decoder j's}."""
    return {f"adapters.{i}.{k}": f"adapters.{j}.{k}" for k in arc.adapters[i].state_dict()}


def copy_adapters(arc: ARCModel, source: SavedModel, donor: SavedModel, log=print) -> None:
    """Start every decoder `source` does not know from `donor`'s adapter of the same name
    (projector and <Rec>/<Cont>), refused if the donor has none of them."""
    wanted = {}
    for i in unknown_decoders(arc, source):
        name = arc.config.decoders[i]
        if name not in donor.config.decoders:
            continue
        j = donor.config.decoders.index(name)
        wanted.update(adapter_sources(arc, i, j))
        log(f"decoder {i} ({name}): instead, projector and special tokens from {donor.folder} (decoder {j})")
    if not wanted:
        raise ValueError(
            f"model.adapters_from: {donor.folder} has an adapter for none of the decoders "
            f"{source.folder} lacks (its decoders: {donor.config.decoders}; the run's: {arc.config.decoders})"
        )
    load_state(arc, donor.tensors(), f"model.adapters_from: {donor.weights} (against this model)", wanted, donor.delta)


def warm_start_sources(arc: ARCModel, source: SavedModel, special_from: int | None, log=print) -> dict[str, str]:
    """{tensor of `arc`: tensor of the saved model it starts from}: the encoder, and the adapter
    of every decoder the saved model knows by name; a new decoder's adapter starts fresh, with
    <Rec>/<Cont> copied from saved decoder `special_from` if given."""
    saved_decoders = source.config.decoders
    if special_from is not None:
        saved_decoder(source, special_from, "new_special_from")
    wanted = {f"encoder.{key}": f"encoder.{key}" for key in arc.encoder.state_dict()}
    for i, name in enumerate(arc.config.decoders):
        if name in saved_decoders:
            j = saved_decoders.index(name)
            wanted.update(adapter_sources(arc, i, j))
            log(f"decoder {i} ({name}): projector and special tokens from {source.folder} (decoder {j})")
        elif special_from is not None:
            for kind in ("rec", "cont"):
                wanted[f"adapters.{i}.{kind}"] = f"adapters.{special_from}.{kind}"
            log(f"decoder {i} ({name}): new projector; special tokens from saved decoder {special_from}")
        else:
            log(f"decoder {i} ({name}): new projector and special tokens")
    return wanted
