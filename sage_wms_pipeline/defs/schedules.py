"""When the pipeline runs by the clock. All crons are UTC; UK local time is given beside each.

UK local time is GMT (UTC+0) from the last Sunday of October to the last Sunday of March and BST
(UTC+1) otherwise, so an 05:30 UTC run is 05:30 in winter and 06:30 in summer. Schedules (and the
sensors) start RUNNING when `SAGE_WMS_DEMO=1` (the demo sets it), STOPPED otherwise, so a fresh
production deployment does nothing until someone switches them on.
"""

from __future__ import annotations

import calendar
import os
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from sage_wms_pipeline.defs.jobs import (
    month_end_job,
    order_manifest_job,
    stock_adjustment_job,
    stock_availability_job,
    stock_parity_job,
    sync_check_job,
)

DEMO_ENV = "SAGE_WMS_DEMO"
MONTH_END_CRON = "30 22 28-31 * *"


def demo_running() -> bool:
    return os.environ.get(DEMO_ENV, "").strip() == "1"


def schedule_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if demo_running() else dg.DefaultScheduleStatus.STOPPED


def sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if demo_running() else dg.DefaultSensorStatus.STOPPED


stock_availability_schedule = dg.ScheduleDefinition(
    name="stock_availability_schedule",
    job=stock_availability_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description=(
        "Refresh WMS stock, Sage holdings and available stock every 5 minutes, day and night "
        "(UTC; the same minutes in UK local time, GMT or BST)."
    ),
)

order_manifest_schedule = dg.ScheduleDefinition(
    name="order_manifest_schedule",
    job=order_manifest_job,
    # Offset by 2 minutes from the stock refresh so the two do not start together.
    cron_schedule="2-57/5 * * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description="Send live Sage orders not yet in the WMS every 5 minutes (at :02, :07, … UTC and UK local).",
)

stock_adjustment_schedule = dg.ScheduleDefinition(
    name="stock_adjustment_schedule",
    job=stock_adjustment_job,
    cron_schedule="15,45 * * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description=(
        "Bring WMS receipts, graded returns, write-offs and counts to Sage (or to finance's proposed "
        "adjustments, per the restock authority) every 30 minutes, at :15 and :45 UTC and UK local."
    ),
)

daily_sync_check_schedule = dg.ScheduleDefinition(
    name="daily_sync_check_schedule",
    job=sync_check_job,
    cron_schedule="30 5 * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description=(
        "Every check, and the open sync exceptions summarised by owner, at 05:30 UTC "
        "(05:30 GMT in winter, 06:30 BST in summer), before the finance and operations teams start."
    ),
)

# The demo overrides the weekly cadence (every 10 minutes) so a visitor sees parity and its drift
# checks within minutes of starting it.
PARITY_AUDIT_CRON_ENV = "SAGE_WMS_PARITY_AUDIT_CRON"

weekly_stock_parity_schedule = dg.ScheduleDefinition(
    name="weekly_stock_parity_schedule",
    job=stock_parity_job,
    cron_schedule=os.environ.get(PARITY_AUDIT_CRON_ENV) or "0 6 * * 1",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description=(
        "Weekly stock parity audit, Mondays 06:00 UTC (06:00 GMT / 07:00 BST); "
        f"{PARITY_AUDIT_CRON_ENV} overrides the cron (the demo runs it every 10 minutes)."
    ),
)


def is_last_day_of_month(day: date) -> bool:
    return day.day == calendar.monthrange(day.year, day.month)[1]


def month_end_cutoff(tick: datetime) -> datetime:
    """The month-end cut-off for a tick on the last day: the tick itself, 22:30 UTC.

    22:30 UTC is 22:30 GMT or 23:30 BST, after the warehouse's last despatch and still on the
    month's last day in UK local time all year round.
    """
    tick = tick.astimezone(UTC) if tick.tzinfo else tick.replace(tzinfo=UTC)
    return tick.replace(second=0, microsecond=0)


def month_end_run_config(cutoff: datetime) -> dict[str, Any]:
    """Run config handing the cut-off to the assets that report as at a date (parity, valuation)."""
    stamp = cutoff.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"ops": {"stock_parity": {"config": {"cutoff": stamp}}}}


@dg.schedule(
    name="month_end_close_schedule",
    job=month_end_job,
    cron_schedule=MONTH_END_CRON,
    execution_timezone="UTC",
    default_status=schedule_status(),
    description=(
        "Month-end close: stock parity and valuation as at 22:30 UTC on the last day of each month "
        "(22:30 GMT / 23:30 BST). Cron fires on days 28-31; the days that are not the last are skipped."
    ),
)
def month_end_close_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    tick = context.scheduled_execution_time
    if tick is None:  # evaluated by hand outside a tick
        tick = datetime.now(UTC)
    tick = tick.astimezone(UTC)
    if not is_last_day_of_month(tick.date()):
        nxt = tick.date() + timedelta(days=1)
        return dg.SkipReason(f"{tick.date()} is not the last day of the month (next day {nxt})")
    cutoff = month_end_cutoff(tick)
    return dg.RunRequest(
        run_key=f"month-end-{tick:%Y-%m}",
        run_config=month_end_run_config(cutoff),
        tags={"sage_wms/period": f"{tick:%Y-%m}", "sage_wms/cutoff": cutoff.isoformat()},
    )
