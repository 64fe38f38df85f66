"""Which URLs the server may call: http(s) only, and no private, loopback or link-local address unless the
operator allows it (the sender calls out from inside the operator's network)."""

import ipaddress
import socket
from urllib.parse import urlsplit


def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why the server must not post to `url`, or None. Resolves the host, so call it again right before
    each send: a name may point elsewhere by then."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number below 65536
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL with a host"
    if allow_private:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port or 443)}
    except (OSError, UnicodeError) as error:
        return f"the host {parts.hostname!r} does not resolve: {error}"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            return f"the host {parts.hostname!r} is a private address ({ip}); the server posts only to public ones"
    return None
