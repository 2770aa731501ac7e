"""Model releases: candidate upload, approval, signed publication, withdrawal, download."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portal.api.deps import Bearer, CurrentPrincipal, CurrentUser, SessionDep, SettingsDep, SignerDep, read_json
from portal.api.params import FederationId, ReleaseId
from portal.models import ModelRelease, ReleaseCreate, ReleasePublic, WithdrawRequest
from portal.services import releases

router = APIRouter(prefix="/federations/{federation_id}/releases", tags=["releases"])
release_router = APIRouter(prefix="/releases", tags=["releases"])


@router.post("", response_model=ReleasePublic, status_code=201)
def upload_candidate(
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    federation_id: FederationId,
    data: ReleaseCreate,
) -> ReleasePublic:
    """The coordinator uploads a run's candidate model (a draft release); its SHA-256 must match."""
    release = releases.create_release(session, settings, principal, federation_id, data)
    return releases.release_public(session, principal, release)


@router.get("", response_model=list[ReleasePublic])
async def list_releases(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """Every release for the anchor, coordinator and auditors; published and withdrawn ones for sites."""
    return await read_json(
        request,
        credentials,
        list[ReleasePublic],
        lambda session, principal: releases.releases_of(session, principal, federation_id),
        preload=(None, federation_id),
    )


@release_router.get("/{release_id}", response_model=ReleasePublic)
async def read_release(request: Request, credentials: Bearer, release_id: ReleaseId) -> Response:
    """One release as the caller may see it; drafts and approved ones are not found for sites."""
    return await read_json(
        request,
        credentials,
        ReleasePublic,
        lambda session, principal: releases.get_release_public(session, principal, release_id),
        preload=(ModelRelease, release_id),
    )


@release_router.post("/{release_id}/approve", response_model=ReleasePublic)
def approve_release(session: SessionDep, principal: CurrentUser, release_id: ReleaseId) -> ReleasePublic:
    """Approve a draft; refused when a site broke its privacy budget or the metric misses the threshold."""
    return releases.release_public(session, principal, releases.approve_release(session, principal, release_id))


@release_router.post("/{release_id}/publish", response_model=ReleasePublic)
def publish_release(
    session: SessionDep, principal: CurrentUser, signer: SignerDep, release_id: ReleaseId
) -> ReleasePublic:
    """Publish an approved release: the gate is checked again, and the model card is signed (Ed25519)."""
    release = releases.publish_release(session, principal, signer, release_id)
    return releases.release_public(session, principal, release)


@release_router.post("/{release_id}/withdraw", response_model=ReleasePublic)
def withdraw_release(
    session: SessionDep, principal: CurrentUser, release_id: ReleaseId, data: WithdrawRequest
) -> ReleasePublic:
    """The anchor admin withdraws a release with a reason; sites can no longer download it."""
    release = releases.withdraw_release(session, principal, release_id, data.reason)
    return releases.release_public(session, principal, release)


@release_router.get(
    "/{release_id}/artifact",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the model artifact"}},
)
def download_artifact(session: SessionDep, principal: CurrentPrincipal, release_id: ReleaseId) -> Response:
    """The artifact bytes; sites get published releases only. ``X-Artifact-SHA256`` carries the hash."""
    release, content = releases.release_artifact(session, principal, release_id)
    return Response(
        content,
        media_type="application/zip",
        headers={
            "X-Artifact-SHA256": release.artifact_sha256,
            "Content-Disposition": f'attachment; filename="model-{release.version}.zip"',
        },
    )
