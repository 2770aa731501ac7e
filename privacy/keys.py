"""The coordinator's Ed25519 signing key: generated once, kept 0600, never printed.

Files in the key directory::

    signing_key.pem        PKCS#8 private key, mode 0600 (directory 0700)
    coordinator.pub.pem    SubjectPublicKeyInfo public key, for auditors

A missing private key next to an existing public key means the key was lost: that is an
error, never a silently generated new key (a new key would not match earlier reports).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.errors import SigningKeyError

__all__ = ["PRIVATE_NAME", "PUBLIC_NAME", "init_signing_key", "load_signing_key", "load_public_key", "public_pem"]

PRIVATE_NAME = "signing_key.pem"
PUBLIC_NAME = "coordinator.pub.pem"


def write_private(path: Path, data: bytes) -> None:
    """Create or replace `path` with mode 0600 from the start (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def init_signing_key(key_dir: str | Path) -> Path:
    """Create the key pair; refuses to overwrite an existing one."""
    key_dir = Path(key_dir)
    private, public = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if private.exists() or public.exists():
        raise SigningKeyError(f"{key_dir} already holds a signing key; refusing to replace it")
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(public_pem(key.public_key()))
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
    mode = stat.S_IMODE(private.stat().st_mode)
    if mode & 0o077:
        raise SigningKeyError(f"{private} is readable by others (mode {mode:o}); run `chmod 600 {private}`")
    try:
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{private} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{private} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise SigningKeyError(f"public key {path} not found") from None
    except ValueError as exc:
        raise SigningKeyError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key
