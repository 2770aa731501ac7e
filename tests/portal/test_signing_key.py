"""The portal's release-signing key: created owner-only on first use, refused when others can read it."""

from __future__ import annotations

import base64
import stat

import pytest

from portal.core.config import Settings
from portal.core.security import ReleaseSigner
from portal.main import create_app
from sangsaeng import signing
from sangsaeng.errors import KeyFormatError


def test_the_key_is_created_0600_and_loaded_again_unchanged(tmp_path):
    path = tmp_path / "fresh" / "release-signing-key.pem"
    created = ReleaseSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staged copy left behind
    again = ReleaseSigner.load_or_create(path)
    assert again.fingerprint == created.fingerprint and again.public_pem == created.public_pem
    public = signing.load_public_pem(created.public_pem)
    assert created.fingerprint == signing.fingerprint(public)
    assert signing.verify(public, base64.b64decode(created.sign(b"model card")), b"model card")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_naming_the_file(tmp_path, mode):
    path = tmp_path / "release-signing-key.pem"
    ReleaseSigner.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(KeyFormatError) as refused:
        ReleaseSigner.load_or_create(path)
    assert str(refused.value) == (
        f"release signing key: {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
    )


def test_the_portal_does_not_start_with_a_readable_key(tmp_path):
    path = tmp_path / "release-signing-key.pem"
    ReleaseSigner.load_or_create(path)
    path.chmod(0o644)
    settings = Settings(
        environment="test",
        secret_key="test-secret-key-not-for-production",
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'portal.db'}",
        signing_key_path=path,
    )
    with pytest.raises(KeyFormatError, match="is readable by others"):
        create_app(settings)


def test_a_key_file_that_is_not_an_ed25519_key_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "release-signing-key.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(KeyFormatError, match=f"release signing key: {path} is not a readable PEM private key"):
        ReleaseSigner.load_or_create(path)


def _start_worker(path: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    results.put(ReleaseSigner.load_or_create(path).fingerprint)


def test_workers_starting_together_all_sign_with_the_one_key_on_disk(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    path = tmp_path / "release-signing-key.pem"
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_start_worker, args=(str(path), barrier, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    fingerprints = {results.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)
    assert fingerprints == {ReleaseSigner.load_or_create(path).fingerprint}
