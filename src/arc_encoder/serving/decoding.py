"""What a generation request asks of the decoder: one model for the native API (app.py) and the
OpenAI-compatible one (openai_routes.py).

Each API reads the fields under its own names and documents its own default number of new tokens
and its own status code for a refusal (native: default 64, 422, as FastAPI answers a bad field;
OpenAI: 16 for completions and the server's cap for chat, 400, as OpenAI answers); `decode_params`
applies both the same way, and DecodeParams checks the values whichever way they came (a backend
or a test may build one directly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from .refusals import ClientError


@dataclass(frozen=True)
class DecodeParams:
    """Checked decoding parameters; frozen, so that equal ones batch together (worker.py)."""

    max_new_tokens: Annotated[int, Field(ge=1)] = 64
    temperature: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0  # 0: greedy
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    stop: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    seed: Annotated[int, Field(ge=0)] | None = None

    @property
    def batchable(self) -> bool:
        # A seeded sampler in a batch would share its random stream with the batch-mates.
        return self.temperature == 0 or self.seed is None


def decode_params(
    asked: int | None,
    field: str,
    default: int,
    cap: int,
    status: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str],
    seed: int | None,
) -> DecodeParams:
    """A request's parameters: `asked` new tokens (the request's `field`), else `default` (at most
    the server's cap); more than the cap is refused with the API's `status`."""
    n = asked if asked is not None else min(default, cap)
    if n > cap:
        raise ClientError(status, f"{field}={n} exceeds the server's cap of {cap}", field)
    return DecodeParams(n, temperature, top_p, tuple(stop), seed)
