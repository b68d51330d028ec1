"""Alerts to a generic incoming webhook (Slack- and Teams-compatible `{"text": ...}` JSON).

The URL comes from `SAGE_WMS_ALERT_WEBHOOK_URL`. It is a secret (Slack and Teams URLs embed a
token), so it is never logged. With no URL set, the alert is written to the log instead, so the
demo and tests work without one. Sending retries transport errors and 5xx a few times; if it still
fails it raises, so the sensor tick fails and Dagster evaluates it again (at-least-once alerts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from sage_wms_pipeline import jsonutil

WEBHOOK_ENV = "SAGE_WMS_ALERT_WEBHOOK_URL"
MAX_RECORDS_LISTED = 15
log = logging.getLogger(__name__)

AlertLevel = Literal["FAILURE", "ERROR", "WARN", "RECOVERED"]
_ICON = {
    "FAILURE": ":rotating_light:",
    "ERROR": ":red_circle:",
    "WARN": ":warning:",
    "RECOVERED": ":white_check_mark:",
}


@dataclass(frozen=True)
class AlertItem:
    """One thing that failed: a step, or a check with its verdict and the records at fault."""

    name: str
    detail: str
    level: AlertLevel = "ERROR"
    records: Sequence[str] = ()
    # The same verdict on the same records as the check's previous evaluation.
    unchanged: bool = False


@dataclass(frozen=True)
class Alert:
    title: str
    level: AlertLevel
    items: Sequence[AlertItem] = field(default_factory=tuple)
    run_id: str | None = None
    link: str | None = None

    def text(self) -> str:
        """Markdown that reads the same in Slack (mrkdwn) and Teams."""
        head = f"{_ICON[self.level]} *{self.title}*"
        if self.run_id:
            head += f" (run `{self.run_id[:8]}`)"
        lines = [head]
        for item in self.items:
            repeat = " (unchanged since the last run)" if item.unchanged else ""
            lines.append(f"• *{item.name}* [{item.level}]: {item.detail}{repeat}")
            if item.records:
                shown = list(item.records[:MAX_RECORDS_LISTED])
                more = len(item.records) - len(shown)
                suffix = f" … and {more} more" if more > 0 else ""
                lines.append("    records: " + ", ".join(f"`{r}`" for r in shown) + suffix)
        if self.link:
            lines.append(f"<{self.link}|Open in Dagster>")
        return "\n".join(lines)

    def payload(self) -> dict[str, str]:
        return {"text": self.text()}


def webhook_url() -> str | None:
    return os.environ.get(WEBHOOK_ENV) or None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code >= 500 or exc.response.status_code == 429
    )


@retry(
    retry=retry_if_exception(_retryable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)
def _post(client: httpx.Client, url: str, body: str) -> None:
    resp = client.post(url, content=body, headers={"Content-Type": "application/json"})
    resp.raise_for_status()


class AlertDeliveryError(RuntimeError):
    """The webhook refused or could not be reached after retries (the URL is not included)."""


def send_alert(
    alert: Alert,
    *,
    url: str | None = None,
    client: httpx.Client | None = None,
    logger: logging.Logger | None = None,
) -> bool:
    """Deliver the alert; True if posted to a webhook, False if only logged (no URL configured)."""
    target = url if url is not None else webhook_url()
    logger = logger or log
    if not target:
        logger.warning("alert (no %s set, logging only):\n%s", WEBHOOK_ENV, alert.text())
        return False
    body = jsonutil.dumps(alert.payload())
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(10.0))
    try:
        _post(http, target, body)
    except httpx.HTTPStatusError as exc:
        raise AlertDeliveryError(f"alert webhook answered HTTP {exc.response.status_code}") from None
    except httpx.TransportError as exc:
        raise AlertDeliveryError(f"alert webhook unreachable: {type(exc).__name__}") from None
    finally:
        if own:
            http.close()
    logger.info("alert sent: %s", alert.title)
    return True
