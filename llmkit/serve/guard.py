"""Keeping web pages out: the ``Host`` and ``Origin`` checks in front of every route (an ASGI middleware).

A server on loopback without an API key trusts whoever can connect, and a web page the user opens can connect:
a ``text/plain`` POST needs no CORS preflight, so any page could drive the model, and with DNS rebinding (a
name of the attacker's that resolves to 127.0.0.1) read its answers too. Two checks close both doors:

- ``Host`` (only without an API key; with one, a page cannot send the key): the request must name this server,
  by a loopback name (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``), the bound address, or, bound to
  every address (0.0.0.0 or ::), any IP address or this machine's host name. A rebinding page's requests carry
  the attacker's name and are refused (403). Ollama checks ``Host`` the same way.
- ``Origin`` (always): a browser names the page that sends a request; one from another origin is refused (403)
  unless ``allowed_origins`` lists it ("*": any), as Ollama's OLLAMA_ORIGINS does. Listed origins get the CORS
  headers (and preflights answered) so their pages can read the replies. Requests without ``Origin`` (curl, the
  SDKs, servers) and the playground's own (same origin) pass.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

from llmkit.serve.schemas import error_body

WILDCARDS = ("0.0.0.0", "::", "")  # binding these listens on every address of the machine
ALLOW_HEADERS = "Authorization, Content-Type"


class Guard:
    """The ``Host`` and ``Origin`` checks (module docstring). ``host``: the address the server is bound to
    (None: not checked, for an app mounted by another server); ``keyless``: no API key is set."""

    def __init__(self, app, host: str | None, keyless: bool, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app, self.keyless = app, keyless
        self.host = None if host is None else host.strip("[]").lower()
        self.origins = {_origin_key(o) for o in allowed_origins if o != "*"}
        self.any_origin = "*" in allowed_origins
        self.machine = socket.gethostname().lower()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host"), headers.get("origin")
        if self.keyless and self.host is not None and not self._host_allowed(host):
            message = (f"Host {host!r} does not name this server (a web page's DNS rebinding would look so); call it "
                       "as localhost or its address, or start it with --api-key")  # fmt: skip
            return await _refuse(send, message, "host_not_allowed")
        cross = origin is not None and not _same_origin(origin, host)
        if cross and not self._origin_allowed(origin):
            message = f"requests from web pages at {origin} are refused unless llmkit serve --allowed-origins lists it"
            return await _refuse(send, message, "origin_not_allowed")
        if cross and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await _preflight(send, origin)
        if not cross:
            return await self.app(scope, receive, send)

        async def with_cors(message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_cors)

    def _host_allowed(self, host: str | None) -> bool:
        name = _host_name(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or name == self.host:
            return True
        address = _ip(name)
        if address is not None and address.is_loopback:
            return True
        if self.host in WILDCARDS:  # every address of the machine is the bound address
            return address is not None or name == self.machine
        return False

    def _origin_allowed(self, origin: str) -> bool:
        return self.any_origin or _origin_key(origin) in self.origins


def _host_name(host: str | None) -> str | None:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1"); None when there is none."""
    if not host:
        return None
    if host.startswith("["):
        return host[1 : host.find("]")].lower() if "]" in host else None
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _origin_key(origin: str) -> str:
    """An origin as compared: lower case, no trailing slash, the scheme's default port dropped."""
    parts = urlsplit(origin.strip().rstrip("/").lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower()  # "null", or something that is not a URL: compared as written
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether a page at ``origin`` is this server's own (the playground): served over http at the Host asked."""
    return host is not None and _origin_key(origin) == _origin_key(f"http://{host}")


async def _refuse(send, message: str, code: str) -> None:
    body = json.dumps(error_body(message, "permission_error", code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _preflight(send, origin: str) -> None:
    """A CORS preflight from an allowed origin: the methods and headers its page may use."""
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()), (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    ]  # fmt: skip
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
