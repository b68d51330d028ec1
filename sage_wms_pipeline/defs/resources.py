"""Resources: the two APIs, the project database and the integration policy.

Environment (secrets marked *; the rest default to the local sandbox of `sage-wms demo`):
  sage       SAGE200_BASE_URL, SAGE200_TOKEN_URL, SAGE200_SITE_ID, SAGE200_COMPANY_ID (looked up via
             /sites when unset), SAGE200_CLIENT_ID, SAGE200_CLIENT_SECRET*, SAGE200_REFRESH_TOKEN*,
             SAGE200_TOKEN_STORE (file keeping the rotated refresh token)
  wms        MINTSOFT_BASE_URL, MINTSOFT_USERNAME, MINTSOFT_PASSWORD*
  parity_db  SAGE_WMS_DATABASE_URL (default: SQLite under data/runtime/)
  policy     SAGE_WMS_POLICY_FILE (default: data/policy.yaml)

Secrets (client secret, refresh token, WMS password) come from the environment through
`dg.EnvVar`, resolved when a run starts and never logged. Non-secret settings default to the local
demo sandbox so `dagster definitions validate` and `dagster dev` load without any environment.
Tests point the same classes at a sandbox they started (fake by configuration, or by subclass).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, PrivateAttr

from sage_wms_pipeline import settings
from sage_wms_pipeline.clients.sage200.client import Sage200Client
from sage_wms_pipeline.clients.sage200.config import Sage200Config
from sage_wms_pipeline.clients.wms.base import WmsClient
from sage_wms_pipeline.domain.policy import Policy, load_policy
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage.db import Database

DEMO_SAGE_ROOT = "http://127.0.0.1:8200"
DEMO_SAGE_BASE_URL = f"{DEMO_SAGE_ROOT}/uk/sage200extra/accounts/v1/"
DEMO_SAGE_TOKEN_URL = f"{DEMO_SAGE_ROOT}/oauth/token"
DEMO_WMS_BASE_URL = "http://127.0.0.1:8300"


def default_database_url() -> str:
    return f"sqlite:///{settings.runtime_dir() / 'pipeline.sqlite'}"


class Sage200Resource(dg.ConfigurableResource):
    """Sage 200 REST API. `with sage.client() as c:` gives a `Sage200Client`."""

    base_url: str = Field(default=DEMO_SAGE_BASE_URL, description="API root ending in /accounts/v1/")
    token_url: str = Field(default=DEMO_SAGE_TOKEN_URL, description="Sage ID OAuth token endpoint")
    site_id: str | None = Field(default=None, description="X-Site; looked up via /sites when empty")
    company_id: str | None = Field(default=None, description="X-Company; looked up via /sites when empty")
    client_id: str = Field(default="sandbox")
    client_secret: str = Field(description="OAuth client secret (secret: from SAGE200_CLIENT_SECRET)")
    refresh_token: str = Field(description="Bootstrap refresh token (secret: from SAGE200_REFRESH_TOKEN)")
    token_store: str | None = Field(
        default=None,
        description="File keeping the rotated refresh token across runs "
        "(default: data/runtime/sage200-token.json)",
    )
    max_attempts: int = Field(default=6, ge=1, description="Attempts per call, including the first")
    deadline_seconds: float = Field(default=300, gt=0, description="Stop retrying one call after this long")
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30, ge=0)
    page_size: int = Field(default=500, ge=1, le=5000)

    def config(self, **overrides: Any) -> Sage200Config:
        default_store = settings.runtime_dir() / "sage200-token.json"
        store_path = Path(self.token_store) if self.token_store else default_store
        return Sage200Config(
            base_url=self.base_url,
            token_url=self.token_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            refresh_token=self.refresh_token,
            site_id=self.site_id or None,
            company_id=int(self.company_id) if self.company_id else None,
            token_store_path=store_path,
            max_attempts=overrides.pop("max_attempts", self.max_attempts),
            deadline_seconds=overrides.pop("deadline_seconds", self.deadline_seconds),
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            page_size=self.page_size,
            **overrides,
        )

    def client(self, **overrides: Any) -> Sage200Client:
        """A client; `overrides` are Sage200Config fields (e.g. a shorter retry budget for writes)."""
        return Sage200Client(self.config(**overrides))


class WmsResource(dg.ConfigurableResource):
    """The WMS (Mintsoft). `with wms.client() as c:` gives a `WmsClient`."""

    base_url: str = Field(default=DEMO_WMS_BASE_URL)
    username: str = Field(default="sandbox")
    password: str = Field(description="WMS API password (secret: from MINTSOFT_PASSWORD)")
    max_attempts: int = Field(default=6, ge=1)
    deadline_seconds: float = Field(default=120, gt=0)

    def client(self) -> WmsClient:
        from sage_wms_pipeline.clients.wms.mintsoft import MintsoftClient, MintsoftConfig

        return MintsoftClient(
            MintsoftConfig(
                base_url=self.base_url,
                username=self.username,
                password=self.password,
                max_attempts=self.max_attempts,
                deadline_seconds=self.deadline_seconds,
            )
        )


class ParityDatabase(dg.ConfigurableResource):
    """The project's own database (parity tables, outbox, cursors, quarantine)."""

    url: str = Field(default_factory=default_database_url, description="Any SQLAlchemy URL")
    db_schema: str | None = Field(default=None, description="PostgreSQL schema (search_path) to use")

    # One migrated Database per URL and process: engines are pooled and migrating is done once.
    _cache: ClassVar[dict[str, Database]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def database(self) -> Database:
        with self._cache_lock:
            key = f"{self.url}#{self.db_schema or ''}"
            db = self._cache.get(key)
            if db is None:
                db = Database(self.url, schema=self.db_schema)
                db.migrate()
                store.ensure_tables(db)
                self._cache[key] = db
            return db


class PolicyResource(dg.ConfigurableResource):
    """The integration policy file (the four decisions, tolerances, mappings)."""

    path: str | None = Field(default=None, description="policy.yaml; default data/policy.yaml")
    _policy: Policy | None = PrivateAttr(default=None)

    def load(self) -> Policy:
        if self._policy is None:
            self._policy = load_policy(Path(self.path) if self.path else None)
        return self._policy


def policy_metadata(policy: Policy) -> dict[str, Any]:
    """The four decisions and the tolerances, shown on every asset that applies them."""
    t = policy.tolerances
    return {
        "policy/valuation_master": policy.valuation_master,
        "policy/fulfilment_trigger": policy.fulfilment_trigger,
        "policy/allocation_owner": policy.allocation_owner,
        "policy/restock_authority": policy.restock.authority,
        "policy/adjustments_route": policy.restock.adjustments_route,
        "policy/tolerance_default": f"{t.default.abs_units} units or {t.default.percent}%",
        "policy/value_materiality_gbp": dg.MetadataValue.text(f"£{t.value_materiality_gbp}"),
        "policy/despatch_sla_hours": dg.MetadataValue.text(str(policy.despatch_sla_hours)),
        "policy/lock_deadline_minutes": policy.lock_deadline_minutes,
        "policy/tolerances": dg.MetadataValue.md(
            "| rule | abs units | percent |\n|---|---|---|\n"
            + "\n".join(
                f"| {name} | {rule.abs_units} | {rule.percent}% |"
                for name, rule in [
                    ("default", t.default),
                    *((f"group {k}", v) for k, v in sorted(t.by_product_group.items())),
                    *((f"ABC {k}", v) for k, v in sorted(t.by_abc_class.items())),
                ]
            )
        ),
    }


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_optional(name: str) -> str | None:
    return os.environ.get(name) or None


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The production wiring: non-secrets read now (with demo defaults), secrets as EnvVar."""
    return {
        "sage": Sage200Resource(
            base_url=_env("SAGE200_BASE_URL", DEMO_SAGE_BASE_URL),
            token_url=_env("SAGE200_TOKEN_URL", DEMO_SAGE_TOKEN_URL),
            site_id=_env_optional("SAGE200_SITE_ID"),
            company_id=_env_optional("SAGE200_COMPANY_ID"),
            client_id=_env("SAGE200_CLIENT_ID", "sandbox"),
            client_secret=dg.EnvVar("SAGE200_CLIENT_SECRET"),
            refresh_token=dg.EnvVar("SAGE200_REFRESH_TOKEN"),
            token_store=_env_optional("SAGE200_TOKEN_STORE"),
        ),
        "wms": WmsResource(
            base_url=_env("MINTSOFT_BASE_URL", DEMO_WMS_BASE_URL),
            username=_env("MINTSOFT_USERNAME", "sandbox"),
            password=dg.EnvVar("MINTSOFT_PASSWORD"),
        ),
        "parity_db": ParityDatabase(url=_env_optional("SAGE_WMS_DATABASE_URL") or default_database_url()),
        "policy": PolicyResource(path=_env_optional("SAGE_WMS_POLICY_FILE")),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
