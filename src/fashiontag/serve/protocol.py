"""uvicorn's HTTP/1.1 protocol with a deadline on each request's headers, and its refusals in the service's JSON.

uvicorn closes a keep-alive connection that stays silent, but a connection that sends half a request line and
stops (or trickles a byte a second) is held forever: enough of them and nobody else gets in. Here a request's
headers must be complete within `header_timeout` seconds of the connection opening or of the previous response
ending; otherwise the client gets a 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from fashiontag.serve.errors import error_body


class TimelyHttpProtocol(HttpToolsProtocol):
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._request_read = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._request_read = True
        super().on_message_complete()
        self._expect_next_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_next_request()

    def _expect_next_request(self) -> None:
        # The clock for the next request starts once this one is both read and answered: a client still sending
        # the body of a request refused early is not slow with its next headers, and a pipelined request (the
        # current cycle, not yet answered) has its headers already.
        if not self.transport.is_closing() and self._request_read and self.cycle.response_complete:
            self._expect_headers()

    def _expect_headers(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "timeout", f"the request's headers did not arrive within {self.header_timeout:g} s")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", msg)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer outside the app (no request to hand it) and close the connection."""
        body = json.dumps(error_body(code, message)).encode()
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def timely_http(header_timeout: float) -> type[TimelyHttpProtocol]:
    """The protocol class to give uvicorn as `http=`: uvicorn makes one instance per connection from its config,
    so the timeout travels on the class."""
    return type("TimelyHttpProtocol", (TimelyHttpProtocol,), {"header_timeout": header_timeout})
