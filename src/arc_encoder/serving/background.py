"""The service in a thread of this process, on a free port of 127.0.0.1.

For notebooks, examples and tests, and for the LangChain / LlamaIndex adapters used without a
separate `arc-encoder serve`: they speak HTTP either way, so one code path serves both.

    with BackgroundServer(create_app(model, "store")) as server:
        client = ARCClient(server.url)
"""

from __future__ import annotations

import threading
import time


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 120.0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.start_timeout_s = start_timeout_s
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running service, e.g. http://127.0.0.1:50123 (routes under /v1)."""
        if self.address is None:
            raise RuntimeError("the server is not running (use it as a context manager, or call start())")
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name="arc-encoder-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not (self._server.started and self._server.servers):
            if not self._thread.is_alive():
                raise RuntimeError("the service failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the service did not start within {self.start_timeout_s:.0f} s")
            time.sleep(0.02)
        self.address = self._server.servers[0].sockets[0].getsockname()[:2]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.address = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
