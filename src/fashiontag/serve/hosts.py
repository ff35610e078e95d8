"""Which hosts the service listens on and answers: loopback or beyond, and the Host header values it accepts."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the service to this machine (localhost, 127.x.x.x, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def serve_hosts(host: str, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The Host header values the service answers (Starlette's TrustedHostMiddleware): the loopback names, the
    address it listens on and `--allowed-host` names. Listening on every interface (0.0.0.0, ::) names no address
    of its own: without --allowed-host any Host is then accepted (the CLI warns)."""
    if host in ("0.0.0.0", "::", "") and not extra:
        return ["*"]
    own = [] if host in ("0.0.0.0", "::", "") else [f"[{host}]" if ":" in host else host]
    return list(dict.fromkeys([*LOOPBACK_NAMES, *own, *(h.strip().lower() for h in extra if h.strip())]))
