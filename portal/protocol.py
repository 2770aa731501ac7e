"""What the portal and its clients must agree on byte for byte (no server dependencies here).

- `enrolment_message`: what an enrolling site signs with its new private key;
- `canonical_json` / `signing_payload`: what the portal's Ed25519 key signs when it
  publishes a release (the model card, which names the artifact's SHA-256).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["API_PREFIX", "enrolment_message", "canonical_json", "signing_payload"]

API_PREFIX = "/api/v1"


def enrolment_message(invite_token: str, public_key_openssh: str) -> bytes:
    """What an enrolling site signs with its new private key: a ``sangsaeng-enrol`` line, the invite token, the key."""
    return f"sangsaeng-enrol\n{invite_token}\n{public_key_openssh.strip()}".encode()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signing_payload(model_card: dict[str, Any]) -> bytes:
    """The bytes the portal's Ed25519 key signs to publish: the model card, tagged ``sangsaeng-release``, as JSON."""
    return canonical_json({"sangsaeng-release": 1, "model_card": model_card})
