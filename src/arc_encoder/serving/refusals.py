"""The requests the service refuses, as exceptions carrying the answer: status, field, code."""

from __future__ import annotations


class ClientError(Exception):
    """A request the service refuses, with the HTTP status to answer, the request field at fault
    (`param`, as OpenAI names fields: `messages[0].content`) and OpenAI's error `code` if it has one."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class Busy(ClientError):
    """The queue of jobs waiting for the model is full."""

    def __init__(self, pending: int):
        super().__init__(503, f"the server is busy ({pending} requests waiting for the model); retry shortly")
