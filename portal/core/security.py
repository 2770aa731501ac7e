"""Security primitives, all from vetted libraries (argon2-cffi, cryptography, hashlib/hmac/secrets).

- passwords: argon2id (`hash_password`, `verify_password`; a dummy hash is compared when the
  user does not exist, so a login takes as long for unknown and known e-mails);
- API tokens (sessions, coordinator and client tokens, invites): random opaque strings from
  `secrets`, stored only as their SHA-256 digest;
- site keys: ECDSA P-384 public keys in OpenSSH format, the key type Flower's SuperNode
  authentication uses (``--auth-supernode-private-key``), with proof of possession;
- release signing: the portal's Ed25519 key (`sangsaeng.signing`, owner-only file) signs each published
  artifact and model card.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portal.core.errors import InvalidKey
from portal.protocol import canonical_json, enrolment_message
from sangsaeng import signing
from sangsaeng.errors import KeyFormatError

__all__ = [
    "hash_password",
    "verify_password",
    "dummy_verify",
    "new_token",
    "token_digest",
    "csrf_token",
    "csrf_matches",
    "cross_site_reason",
    "SitePublicKey",
    "parse_site_public_key",
    "enrolment_message",
    "ReleaseSigner",
    "canonical_json",
    "sha256_hex",
]

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("sangsaeng-dummy-password")


def hash_password(password: str) -> str:
    """The salted argon2id hash of `password`, as a PHC string."""
    return _hasher.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches `hashed`; a mismatch or a malformed hash is False, never an error."""
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_verify(password: str) -> None:
    """Spend the time of a real verification when the user does not exist."""
    verify_password(password, _DUMMY_HASH)


def new_token(prefix: str) -> str:
    """A fresh opaque token, e.g. ``ssk_<43 random URL-safe characters>``."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    """What is stored for a token: its SHA-256 (tokens have 256 random bits; no salt needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data`, in lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def csrf_token(secret_key: str, session_token: str) -> str:
    """The web form token bound to one session (HMAC-SHA256 of the session token)."""
    return hmac.new(secret_key.encode(), session_token.encode(), hashlib.sha256).hexdigest()


def csrf_matches(secret_key: str, session_token: str, candidate: str) -> bool:
    """Whether a form's token is the session's, compared in constant time (no timing oracle)."""
    expected = csrf_token(secret_key, session_token)
    return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), expected.encode())


# Fetch metadata a browser sends with a request the portal's own page started, or a typed URL.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site_reason(headers: Mapping[str, str], *, own_origin: str | None, host: str) -> str | None:
    """Why a state-changing browser request did not come from the portal's own pages, or None if it did.

    Browsers mark every request with ``Sec-Fetch-Site`` and a cross-origin POST with ``Origin``;
    anything but ``same-origin`` is refused, ``same-site`` too (a sibling subdomain or another
    port is another origin). The origin is `own_origin` (the configured public URL) when set,
    else the ``Host`` the browser addressed. A request with neither header is not from a modern
    browser; the session-bound token still guards forms.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in _OWN_FETCH_SITES:
        return f"Sec-Fetch-Site is {fetch_site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    origin = origin.strip().lower()
    if own_origin is not None:
        return None if origin == own_origin else f"Origin {origin!r} is not {own_origin!r}"
    # Without a public URL, TLS may end at a proxy: compare the host[:port] only.
    netloc = origin.split("://", 1)[-1]
    return None if "://" in origin and netloc == host.lower() else f"Origin {origin!r} is not this portal ({host!r})"


# -- site keys -------------------------------------------------------------------------------
SITE_KEY_CURVE = ec.SECP384R1


@dataclass(frozen=True)
class SitePublicKey:
    """A validated site public key."""

    key: ec.EllipticCurvePublicKey
    openssh: str
    fingerprint: str  # SHA256:<base64>, as `ssh-keygen -lf` prints it
    algorithm: str = "ecdsa-sha2-nistp384"

    def verify(self, signature_b64: str, message: bytes) -> bool:
        """Whether `signature_b64` is this key's ECDSA-SHA256 signature of `message`; a malformed one is False."""
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            self.key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            return True
        except (InvalidSignature, binascii.Error, ValueError):
            return False


def parse_site_public_key(text: str) -> SitePublicKey:
    """Parse an OpenSSH (``ecdsa-sha2-nistp384 AAAA...``) or PEM public key; refuse anything else."""
    raw = text.strip().encode("utf-8", "replace")
    if not raw:
        raise InvalidKey("public key is empty")
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(raw)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidKey(f"public key is malformed: {first[:200]}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.replace("_", "").replace("PublicKey", "") or "unknown"
        raise InvalidKey(f"public key must be ECDSA P-384 (Flower SuperNode key), got {kind}")
    if not isinstance(key.curve, SITE_KEY_CURVE):
        raise InvalidKey(f"public key must use curve secp384r1 (P-384), got {key.curve.name}")
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(openssh.split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return SitePublicKey(key=key, openssh=openssh, fingerprint=fingerprint)


# -- release signing ---------------------------------------------------------------------------
class ReleaseSigner:
    """The portal's Ed25519 release-signing key (`sangsaeng.signing`), kept in an owner-only file."""

    def __init__(self, private_key: signing.Ed25519PrivateKey):
        self._key = private_key
        self.public_pem = signing.public_pem(private_key).decode()
        self.fingerprint = signing.fingerprint(private_key)

    @classmethod
    def load_or_create(cls, path: Path) -> ReleaseSigner:
        """Load the key at `path`, creating it (mode 0600) on first use; refuse a file others can read.

        Raises `KeyFormatError` naming the file when it is readable by others, unreadable or
        not an Ed25519 private key.
        """
        path = Path(path)
        if not path.exists():
            staged = signing.write_private_key(
                path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"), signing.generate_private_key()
            )
            try:
                # Publish only if absent: portal workers starting together must all sign with one key.
                os.link(staged, path)
            except FileExistsError:
                pass  # another worker created it first; everyone uses that one
            finally:
                staged.unlink(missing_ok=True)
        try:
            return cls(signing.read_private_key(path))
        except KeyFormatError as exc:
            raise KeyFormatError(f"release signing key: {exc}") from None

    def sign(self, payload: bytes) -> str:
        """Base64 of the Ed25519 signature of `payload`."""
        return signing.sign_b64(self._key, payload)
