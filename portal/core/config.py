"""The portal's one typed settings object.

Values come from the environment (prefix ``SANGSAENG_PORTAL_``; the database URL also from
plain ``DATABASE_URL``). Outside ``development`` the default secret key is refused; in
``production`` cookies are ``Secure`` unless ``SANGSAENG_PORTAL_COOKIE_SECURE=false`` says otherwise.
``portal serve`` picks ``production`` when it binds a non-loopback address and no environment is set.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "DEFAULT_SECRET"]

DEFAULT_SECRET = "changethis"


class Settings(BaseSettings):
    """Everything the portal needs to know about its deployment."""

    model_config = SettingsConfigDict(env_prefix="SANGSAENG_PORTAL_", extra="ignore", populate_by_name=True)

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("portal-data")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SANGSAENG_PORTAL_DATABASE_URL", "database_url")
    )
    secret_key: str = DEFAULT_SECRET
    signing_key_path: Path | None = None
    session_minutes: int = Field(default=8 * 60, ge=1)
    invite_hours: int = Field(default=72, ge=1)
    coordinator_token_days: int = Field(default=90, ge=1)
    client_token_days: int = Field(default=365, ge=1)
    site_key_days: int = Field(default=365, ge=1)
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    login_max_failures: int = Field(default=5, ge=1)
    login_ip_max_failures: int = Field(default=20, ge=1)
    login_window_seconds: int = Field(default=300, ge=1)
    cookie_secure: bool | None = Field(default=None, description="Secure cookies; default: in production only")
    public_url: str | None = Field(
        default=None,
        description="The portal's address as users reach it (https://portal.example.kr); it, never the Host "
        "header, builds the URLs the pages show, and it is the origin web forms must come from",
    )
    db_pool_size: int = Field(default=20, ge=1)
    run_stall_minutes: int = Field(
        default=15, ge=1, description="a running run without a report for this long is shown as stalled"
    )

    @field_validator("public_url")
    @classmethod
    def _public_url_is_an_origin(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?", value):
            raise ValueError(f"public_url must be an http(s) URL such as https://portal.example.kr, not {value!r}")
        return value

    @model_validator(mode="after")
    def _no_default_secret_outside_development(self) -> Settings:
        if self.environment != "development" and self.secret_key == DEFAULT_SECRET:
            raise ValueError(
                f"SANGSAENG_PORTAL_SECRET_KEY is the default '{DEFAULT_SECRET}'; set a real secret "
                f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))') outside development"
            )
        if len(self.secret_key) < 8:
            raise ValueError("SANGSAENG_PORTAL_SECRET_KEY must be at least 8 characters")
        return self

    @model_validator(mode="after")
    def _secure_cookies_in_production(self) -> Settings:
        if self.cookie_secure is None:
            self.cookie_secure = self.environment == "production"
        return self

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The database URL: DATABASE_URL, else a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'portal.db').resolve()}"

    @property
    def public_origin(self) -> str | None:
        """``scheme://host[:port]`` of `public_url` (what browsers send as ``Origin``), if configured."""
        if self.public_url is None:
            return None
        scheme, rest = self.public_url.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}".lower()

    @property
    def resolved_signing_key_path(self) -> Path:
        """The release-signing key file: `signing_key_path`, else ``release-signing-key.pem`` in `data_dir`."""
        return self.signing_key_path or self.data_dir / "release-signing-key.pem"
