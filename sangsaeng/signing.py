"""Ed25519 keys for every role: one copy of load, sign, verify and fingerprint.

The coordinator signs privacy reports, the portal signs releases, suppliers and auditors
verify both. All of it is `cryptography`'s Ed25519; this module only fixes the formats:

- private keys: PKCS#8 PEM, unencrypted, in an owner-only file (`sangsaeng.files`);
- public keys: SubjectPublicKeyInfo PEM (what ``openssl pkeyutl -verify -pubin`` reads);
- fingerprints: SHA-256 of the raw 32-byte public key, lower-case hex;
- signatures: raw 64 bytes, or base64 of them where they travel in JSON.

Malformed input raises `KeyFormatError` naming what was wrong; `verify` answers a bool
and never raises for a bad signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sangsaeng.errors import KeyFormatError
from sangsaeng.files import check_private, write_private

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "generate_private_key",
    "private_pem",
    "public_pem",
    "load_private_pem",
    "load_public_pem",
    "read_private_key",
    "read_public_key",
    "write_private_key",
    "fingerprint",
    "sign_b64",
    "verify",
    "verify_b64",
]


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of `key`, unencrypted (keep it in a 0600 file)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half of `key`."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_pem(data: bytes, *, source: str = "private key") -> Ed25519PrivateKey:
    """Parse a PEM Ed25519 private key; `source` names it in the error."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"{source} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"{source} is not an Ed25519 key")
    return key


def load_public_pem(data: bytes | str, *, source: str = "public key") -> Ed25519PublicKey:
    """Parse a PEM Ed25519 public key; `source` names it in the error."""
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeError:
            raise KeyFormatError(f"{source} is not a PEM public key: it holds non-ASCII characters") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"{source} is not an Ed25519 public key")
    return key


def read_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a private key file, refusing one that others can read."""
    path = Path(path)
    try:
        check_private(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFormatError(f"private key {path} not found") from None
    except Exception as exc:  # FileIntegrityError (mode) or OSError
        raise KeyFormatError(str(exc)) from None
    return load_private_pem(data, source=str(path))


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load a PEM public key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFormatError(f"public key {path} not found") from None
    except OSError as exc:
        raise KeyFormatError(f"cannot read public key {path}: {exc}") from None
    return load_public_pem(data, source=str(path))


def write_private_key(path: str | Path, key: Ed25519PrivateKey) -> Path:
    """Store `key` as PKCS#8 PEM in an owner-only file (atomic)."""
    return write_private(path, private_pem(key))


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: the one fingerprint every role shows."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def sign_b64(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Base64 of the raw signature of `payload`, for JSON."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def verify(key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True when `signature` (raw 64 bytes) signs `payload` under `key`."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def verify_b64(key: Ed25519PublicKey, signature_b64: str, payload: bytes) -> bool:
    """`verify` for a base64 signature; malformed base64 is a failed verification."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    return verify(key, signature, payload)
