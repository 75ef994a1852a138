"""Connection deadlines uvicorn lacks: a client must finish a request's headers in time.

uvicorn times out idle keep-alive connections and (llmkit.serve.server) request bodies, but not
headers: a client that opens a connection and sends half a request line holds it forever, and a
thousand of them hold a thousand sockets. ``header_timeout_protocol(seconds)`` is uvicorn's h11
protocol with one more timer: armed when a connection opens and after each response, cancelled when
a new request's headers are complete, closing the connection when it fires first.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol; a request's headers must arrive within ``header_timeout`` seconds."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._waiting_after:
            self._deadline.cancel()  # a new request's headers are complete (h11 made its cycle)
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this keep-alive connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._waiting_after = self.cycle  # the request before the one awaited (None on a new connection)
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with a header deadline of ``seconds``."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": float(seconds)})
