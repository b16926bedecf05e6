"""Opaque, verifiable signatures for thinking blocks.

Anthropic clients must echo thinking blocks back with their ``signature`` intact. Ours is ``"cx1." +
base64url(HMAC-SHA256(key, thinking_text))``: deterministic (the same text always signs the same, so a
streamed and a non-streamed reply agree) and checkable, so history thinking that we produced is passed to
the model as ``reasoning_content`` while thinking signed by someone else (another provider, a tampered text)
is dropped like ``redacted_thinking``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

DEFAULT_KEY = b"cortex-jax thinking signature v1"
_PREFIX = "cx1."


class ThinkingSigner:
    """HMAC signer/verifier for thinking text."""

    def __init__(self, key: bytes = DEFAULT_KEY) -> None:
        if not key:
            raise ValueError("signing key must be non-empty")
        self._key = key

    def sign(self, text: str) -> str:
        mac = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return _PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def verify(self, text: str, signature: str | None) -> bool:
        return bool(signature) and hmac.compare_digest(self.sign(text), signature)
