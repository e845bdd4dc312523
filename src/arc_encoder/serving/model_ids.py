"""The model ids the OpenAI-compatible routes answer to, and which decoder each one means.

A server runs one model and one store, and the store's vectors feed one decoder (the one its
projector made them for: storage/indexing.py), so one decoder is served. It answers to two ids:

    MODEL            the served model's name (`serve --served-model-name`, else the model folder's)
    MODEL:DECODER    the same, naming the decoder: `smollm2-arc4:gemma3-270m`

DECODER is any name the decoder answers to (model/decoder_names.py); GET /v1/models lists it by its
short name. Naming another decoder of the same model is refused with how to serve that one (a
server started with `--decoder` and a store built for it); any other id is an unknown model.
"""

from __future__ import annotations

from ..model.decoder_names import short_name
from .refusals import ClientError

SEPARATOR = ":"


def served_ids(model_name: str, decoder_name: str) -> list[str]:
    """The ids GET /v1/models lists: the model, then the model with its served decoder."""
    return [model_name, f"{model_name}{SEPARATOR}{short_name(decoder_name)}"]


def check_model_id(model, model_name: str, served: int, model_id: str) -> None:
    """Refuse (ClientError 404, OpenAI's code model_not_found, naming `model`) an id that does not
    mean the served decoder `served` of `model`, served as `model_name`."""
    if model_id == model_name:
        return
    base, separator, decoder = model_id.rpartition(SEPARATOR)
    if separator and base == model_name:
        try:
            index = model.decoder_index(decoder)
        except (ValueError, TypeError):
            index = None
        if index == served:
            return
        if index is not None:
            wanted, name = short_name(model.config.decoders[index]), model.config.decoders[served]
            raise ClientError(
                404,
                f"model {model_id!r} names decoder {wanted} of this model, which this server does not serve: "
                f"its store holds vectors for {short_name(name)}; serve {wanted} with `arc-encoder serve "
                f"--decoder {wanted}` and a store built for it",
                "model",
                "model_not_found",
            )
    ids = ", ".join(repr(i) for i in served_ids(model_name, model.config.decoders[served]))
    raise ClientError(404, f"model {model_id!r} does not exist; this server has {ids}", "model", "model_not_found")
