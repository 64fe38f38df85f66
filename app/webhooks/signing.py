"""The signature of a webhook request, as Stripe's: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

A receiver recomputes v1 over the raw body with its secret, compares in constant time, and refuses a `t`
too far from its clock (replays)."""

import hashlib
import hmac

SIGNATURE_HEADER = "Mambaft-Signature"
EVENT_ID_HEADER = "Mambaft-Event-Id"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Mambaft-Signature` header value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
