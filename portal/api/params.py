"""Integer bounds shared by every route: ids in path, query, body and form fields fit the database.

The id columns are ``INTEGER``: 64-bit in SQLite but 32-bit in PostgreSQL, so an id is bounded
by the narrower, ``2**31 - 1``, well inside the 64-bit signed range every driver can bind. A
value outside it is a 422 naming the field, instead of a driver overflow (a 500) or a database
"out of range" error that names nothing.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Le
from fastapi import Path

__all__ = ["DbId", "FederationId", "MembershipId", "RunId", "ReleaseId", "TokenId", "MAX_ID", "INT64_MAX"]

INT64_MAX = 2**63 - 1
MAX_ID = 2**31 - 1  # PostgreSQL INTEGER; SQLite's INTEGER is wider
DbId = Annotated[int, Ge(1), Le(MAX_ID)]
"""A database id (a primary or foreign key): ``1 <= id <= MAX_ID``. Use it for every id, in any location."""

FederationId = Annotated[DbId, Path(description="federation id")]
MembershipId = Annotated[DbId, Path(description="membership id")]
RunId = Annotated[DbId, Path(description="training run id")]
ReleaseId = Annotated[DbId, Path(description="release id")]
TokenId = Annotated[DbId, Path(description="API token id")]
