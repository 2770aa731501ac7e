"""The coordinator's Ed25519 signing key: generated once, kept 0600, never printed.

Files in the key directory::

    signing_key.pem        PKCS#8 private key, mode 0600 (directory 0700)
    coordinator.pub.pem    SubjectPublicKeyInfo public key, for auditors

A missing private key next to an existing public key means the key was lost: that is an
error, never a silently generated new key (a new key would not match earlier reports).
The key formats and checks are `sangsaeng.signing`'s, shared with the portal.
"""

from __future__ import annotations

import os
from pathlib import Path

from privacy.errors import SigningKeyError
from sangsaeng import signing
from sangsaeng.errors import KeyFormatError
from sangsaeng.files import write_atomic, write_private
from sangsaeng.signing import Ed25519PrivateKey, Ed25519PublicKey, public_pem

__all__ = ["PRIVATE_NAME", "PUBLIC_NAME", "init_signing_key", "load_signing_key", "load_public_key", "public_pem"]

PRIVATE_NAME = "signing_key.pem"
PUBLIC_NAME = "coordinator.pub.pem"


def init_signing_key(key_dir: str | Path) -> Path:
    """Create the key pair; refuses to overwrite an existing one."""
    key_dir = Path(key_dir)
    private, public = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if private.exists() or public.exists():
        raise SigningKeyError(f"{key_dir} already holds a signing key; refusing to replace it")
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key_dir, 0o700)
    key = signing.generate_private_key()
    write_private(private, signing.private_pem(key))
    write_atomic(public, public_pem(key))
    return private


def load_signing_key(key_dir: str | Path, *, create: bool = False) -> Ed25519PrivateKey:
    """The coordinator's private key; with `create`, generate it on first use only."""
    key_dir = Path(key_dir)
    private, public = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if not private.exists():
        if public.exists():
            raise SigningKeyError(
                f"signing key {private} is missing but its public key {public} exists: the key was lost. "
                "Restore it from backup; a new key would not verify earlier reports. To start over "
                f"deliberately, move {public} away and run `sangsaeng privacy init-key --key-dir {key_dir}`."
            )
        if not create:
            raise SigningKeyError(f"no signing key in {key_dir}; run `sangsaeng privacy init-key --key-dir {key_dir}`")
        init_signing_key(key_dir)
    try:
        return signing.read_private_key(private)
    except KeyFormatError as exc:
        raise SigningKeyError(str(exc)) from None


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A coordinator public key file (PEM)."""
    try:
        return signing.read_public_key(path)
    except KeyFormatError as exc:
        raise SigningKeyError(str(exc)) from None
