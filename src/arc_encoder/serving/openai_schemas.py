"""Request bodies and error shape of the OpenAI-compatible routes (openai_routes.py).

The fields follow OpenAI's chat and completions APIs. Fields this server cannot honour are refused
by name (`extra="forbid"` for unknown ones, `unsupported()` for known ones set to anything but their
neutral value), so a client never silently gets something other than what it asked for. The
compressed documents are extension fields, sent the way OpenAI-compatible servers take extensions
(the openai client's `extra_body`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .schemas import Strict, Text

MAX_STOP = 4  # OpenAI's limit on stop sequences


class Retrieve(Strict):
    query: Text = Field(..., min_length=1)
    k: int = Field(3, ge=1)


class StreamOptions(Strict):
    include_usage: bool = False


class OpenAIRequest(Strict):
    """What chat and completions requests share, the compressed-document extensions included."""

    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: Text | list[Text] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: Text | None = None  # accepted and unused, as OpenAI uses it only for abuse monitoring
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # extensions: compressed documents (openai_routes.py module doc)
    documents: list[Text] | None = None
    document_ids: list[Text] | None = None
    chunk_ids: list[int] | None = None
    retrieve: Retrieve | None = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for each known field set to something this server does not do."""
        out = []
        if self.n != 1:
            out.append(("n", "only n=1 is supported"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                out.append((name, f"{name} is not supported (leave it at 0)"))
        if self.stream_options is not None and not self.stream:
            out.append(("stream_options", "stream_options needs stream=true"))
        if len(self.stop_strings()) > MAX_STOP:
            out.append(("stop", f"at most {MAX_STOP} stop sequences"))
        if any(not s or len(s) > 64 for s in self.stop_strings()):
            out.append(("stop", "stop sequences must be 1 to 64 characters long"))
        return out


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.logprobs:
            out.append(("logprobs", "logprobs are not supported"))
        return out


class CompletionRequest(OpenAIRequest):
    prompt: Text | list[Text]
    echo: bool = False
    logprobs: int | None = None
    suffix: Text | None = None

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            out.append(("prompt", "one prompt per request (a list of exactly one string)"))
        if self.echo:
            out.append(("echo", "echo is not supported"))
        if self.logprobs:
            out.append(("logprobs", "logprobs are not supported"))
        if self.suffix:
            out.append(("suffix", "suffix is not supported"))
        return out
