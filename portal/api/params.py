"""Path parameters shared by the routes (ids fit a 32-bit integer column in every database)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

__all__ = ["FederationId", "MembershipId", "RunId", "ReleaseId", "TokenId", "MAX_ID"]

MAX_ID = 2_147_483_647
FederationId = Annotated[int, Path(ge=1, le=MAX_ID, description="federation id")]
MembershipId = Annotated[int, Path(ge=1, le=MAX_ID, description="membership id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="training run id")]
ReleaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="release id")]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="API token id")]
