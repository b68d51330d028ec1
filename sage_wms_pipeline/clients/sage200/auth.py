"""Sage ID OAuth tokens: refresh-token grant, rotation, and a token store that survives restarts.

Sage rotates the refresh token on every refresh: the old one stops working. Losing the new one
(a crash between the refresh and saving it) means a human has to re-authorise, so the rotated
token is written to disk atomically before it is used for anything.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.errors import AuthError, Sage200Error

log = logging.getLogger(__name__)


@dataclass
class TokenState:
    client_id: str
    refresh_token: str
    access_token: str | None = None
    expires_at: float = 0.0  # epoch seconds

    def __repr__(self) -> str:  # never print tokens
        return f"TokenState(client_id={self.client_id!r}, expires_at={self.expires_at})"


class TokenStore:
    """One JSON file, mode 0600, replaced atomically (write temp file, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, client_id: str) -> TokenState | None:
        try:
            raw = jsonutil.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise AuthError(f"token store {self.path} is not valid JSON ({exc}); fix or delete it") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("refresh_token"), str):
            raise AuthError(f"token store {self.path} has no refresh_token; fix or delete it")
        if raw.get("client_id") != client_id:
            # a store written for another OAuth client must not be used with this one
            log.warning("token store %s belongs to another client id; ignoring it", self.path)
            return None
        return TokenState(
            client_id=client_id,
            refresh_token=raw["refresh_token"],
            access_token=raw.get("access_token"),
            expires_at=float(raw.get("expires_at") or 0),
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes: two Dagster steps must not both spend the same refresh token."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def save(self, state: TokenState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = jsonutil.dumps(
            {
                "client_id": state.client_id,
                "refresh_token": state.refresh_token,
                "access_token": state.access_token,
                "expires_at": int(state.expires_at),
            }
        ).encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TokenManager:
    """Hands out a valid access token, refreshing it `skew` seconds before it expires.

    Thread safe: concurrent page fetches share one refresh. Process safe through the store: a
    refresh happens under the store's file lock after re-reading it, so a process whose refresh
    token another process already rotated adopts the new tokens instead of spending a dead one.
    `invalidate(token)` (after a 401) makes the next `access_token()` refresh, unless another
    thread already did.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        bootstrap_refresh_token: str,
        store: TokenStore | None,
        skew_seconds: float,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._store = store
        self._skew = skew_seconds
        self._lock = threading.Lock()
        stored = store.load(client_id) if store else None
        self._state = stored or TokenState(client_id=client_id, refresh_token=bootstrap_refresh_token)
        self._rejected: str | None = None  # last access token a 401 refused
        self.refresh_count = 0

    @property
    def refresh_token(self) -> str:
        return self._state.refresh_token

    def _usable(self, state: TokenState) -> bool:
        return (
            state.access_token is not None
            and state.access_token != self._rejected
            and time.time() < state.expires_at - self._skew
        )

    def access_token(self) -> str:
        with self._lock:
            if self._usable(self._state):
                return self._state.access_token or ""
            if self._store is None:
                return self._refresh()
            with self._store.locked():
                stored = self._store.load(self._client_id)
                if stored is not None and stored.refresh_token != self._state.refresh_token:
                    # another process refreshed since we loaded: ours is spent, its tokens are current
                    self._state = stored
                    if self._usable(stored):
                        return stored.access_token or ""
                return self._refresh()

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._rejected = token
            if self._state.access_token == token:
                self._state.access_token = None
                self._state.expires_at = 0.0

    def exchange_code(self, code: str, redirect_uri: str) -> None:
        """First-time setup: swap an authorisation code for tokens and store them."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        with self._lock:
            if self._store is None:
                self._grant(form)
                return
            with self._store.locked():
                self._grant(form)

    def _refresh(self) -> str:
        return self._grant({"grant_type": "refresh_token", "refresh_token": self._state.refresh_token})

    def _grant(self, form: dict[str, str]) -> str:
        grant = form["grant_type"]
        data = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        try:
            resp = self._http.post(self._token_url, data=data, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            # With rotating refresh tokens a lost answer may have used up the old token; say so.
            raise AuthError(
                f"token request ({grant}) failed: {type(exc).__name__}; if this keeps failing with "
                "invalid_grant the refresh token was rotated in flight and Sage must be re-authorised",
                method="POST",
                path=httpx.URL(self._token_url).path,
            ) from exc
        body = _json_or_none(resp)
        if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            message = None
            if isinstance(body, dict):
                error, description = body.get("error"), body.get("error_description") or body.get("message")
                message = f"{error}: {description}" if error and description else (error or description)
            raise AuthError(
                f"token request ({grant}) refused",
                status=resp.status_code,
                method="POST",
                path=resp.request.url.path,
                sage_message=str(message) if message else None,
            )
        new_state = TokenState(
            client_id=self._client_id,
            # Sage rotates; keep the old one only if the server did not send a new one
            refresh_token=body.get("refresh_token") or self._state.refresh_token,
            access_token=str(body["access_token"]),
            expires_at=time.time() + float(body.get("expires_in") or 3600),
        )
        # The old refresh token is dead now: keep the new one in memory even if saving it fails.
        self._state = new_state
        self.refresh_count += 1
        if self._store is not None:
            try:
                self._store.save(new_state)
            except OSError as exc:
                raise Sage200Error(
                    f"refreshed the Sage token but could not save the rotated refresh token to "
                    f"{self._store.path}: {exc}; this process can go on, a restart would need re-authorising"
                ) from exc
        log.info("Sage 200 access token obtained via %s; expires in %ss", grant, body.get("expires_in"))
        return new_state.access_token or ""


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return jsonutil.loads(resp.content) if resp.content else None
    except ValueError:
        return None
