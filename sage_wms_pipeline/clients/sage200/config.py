"""Configuration of the Sage 200 client: plain values, so a Dagster resource can fill it from EnvVar."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

SAGE_MAX_TOP = 5000  # Sage rejects $top above this
SAGE_DEFAULT_TOP = 500  # what Sage returns when $top is omitted


class Sage200Config(BaseModel):
    """Everything the client needs; secrets are `SecretStr` so they never show in repr or logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="API root ending in /uk/sage200extra/accounts/v1/ (Professional) or .../sage200/...",
    )
    token_url: str = Field(description="OAuth token endpoint, e.g. https://id.sage.com/oauth/token")
    client_id: str
    client_secret: SecretStr
    refresh_token: SecretStr = Field(
        description="Bootstrap refresh token; the rotated one in the token store supersedes it",
    )
    site_id: str | None = Field(default=None, description="X-Site; looked up via GET /sites when omitted")
    company_id: int | None = Field(default=None, description="X-Company; looked up via /sites when omitted")
    token_store_path: Path | None = Field(
        default=None,
        description="File for the rotated refresh token (0600, replaced atomically); None: memory only",
    )
    token_refresh_skew_seconds: float = Field(
        default=120, ge=0, description="Refresh this long before expiry"
    )

    page_size: int = Field(default=SAGE_DEFAULT_TOP, ge=1, le=SAGE_MAX_TOP)
    max_concurrency: int = Field(default=4, ge=1, le=32, description="Pages fetched at once by list()")

    timeout_seconds: float = Field(default=60, gt=0, description="Per-request read/write timeout")
    connect_timeout_seconds: float = Field(default=10, gt=0)
    max_attempts: int = Field(default=6, ge=1, description="Attempts per call, including the first")
    deadline_seconds: float = Field(default=300, gt=0, description="Give up retrying a call after this long")
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30, ge=0)
    user_agent: str = "sage-wms-pipeline/0.1"

    @field_validator("base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # httpx joins relative paths onto the base only when it ends in '/'
        return value if value.endswith("/") else value + "/"
