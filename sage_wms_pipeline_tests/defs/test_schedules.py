"""Schedules: UTC crons, the jobs they launch, demo-only default status, and the month-end close that
runs on the last day of each month only, passing the cut-off as run config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from sage_wms_pipeline.defs import schedules


def _tick(when: datetime) -> dg.RunRequest | dg.SkipReason:
    context = dg.build_schedule_context(scheduled_execution_time=when)
    return schedules.month_end_close_schedule(context)


ALL = [
    schedules.stock_availability_schedule,
    schedules.order_manifest_schedule,
    schedules.daily_sync_check_schedule,
    schedules.weekly_stock_parity_schedule,
    schedules.month_end_close_schedule,
]


def test_every_schedule_is_utc_and_launches_its_job():
    assert {s.name: (s.job_name, s.cron_schedule) for s in ALL} == {
        "stock_availability_schedule": ("stock_availability_job", "*/5 * * * *"),
        "order_manifest_schedule": ("order_manifest_job", "2-57/5 * * * *"),
        "daily_sync_check_schedule": ("sync_check_job", "30 5 * * *"),
        "weekly_stock_parity_schedule": ("stock_parity_job", "0 6 * * 1"),
        "month_end_close_schedule": ("month_end_job", schedules.MONTH_END_CRON),
    }
    for s in ALL:
        assert s.execution_timezone == "UTC"
        # The docstring/description gives the UK local time alongside.
        assert "UTC" in (s.description or "")


@pytest.mark.parametrize(("env", "expected"), [("1", "RUNNING"), ("0", "STOPPED"), (None, "STOPPED")])
def test_default_status_follows_the_demo_switch(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv(schedules.DEMO_ENV, raising=False)
    else:
        monkeypatch.setenv(schedules.DEMO_ENV, env)
    assert schedules.schedule_status().value == expected
    assert schedules.sensor_status().value == expected


def test_module_schedules_carry_the_status_of_the_environment_they_were_loaded_in():
    for s in ALL:
        assert s.default_status == schedules.schedule_status()


def test_month_end_fires_on_the_last_day_with_the_cutoff():
    request = _tick(datetime(2026, 11, 30, 22, 30, tzinfo=UTC))
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "month-end-2026-11"
    assert request.run_config == {"ops": {"stock_parity": {"config": {"cutoff": "2026-11-30T22:30:00Z"}}}}
    assert request.tags["sage_wms/period"] == "2026-11"


@pytest.mark.parametrize(
    ("day", "fires"),
    [
        (datetime(2026, 11, 28, 22, 30, tzinfo=UTC), False),
        (datetime(2026, 11, 29, 22, 30, tzinfo=UTC), False),
        (datetime(2026, 12, 31, 22, 30, tzinfo=UTC), True),
        (datetime(2027, 2, 28, 22, 30, tzinfo=UTC), True),
        (datetime(2028, 2, 28, 22, 30, tzinfo=UTC), False),  # leap year
        (datetime(2028, 2, 29, 22, 30, tzinfo=UTC), True),
        (datetime(2026, 9, 30, 22, 30, tzinfo=UTC), True),  # BST month end: 23:30 in the UK
    ],
)
def test_month_end_skips_days_that_are_not_the_last(day, fires):
    result = _tick(day)
    assert isinstance(result, dg.RunRequest) is fires
    if not fires:
        assert "not the last day of the month" in result.skip_message


def test_month_end_cron_reaches_every_month_end_in_a_year():
    # Dagster's own cron iterator (what the daemon uses) over the real cron string, for a year.
    from dagster._utils.schedules import cron_string_iterator

    start = datetime(2026, 1, 1, tzinfo=UTC)
    fired, skipped = [], 0
    for tick in cron_string_iterator(start.timestamp(), schedules.MONTH_END_CRON, "UTC"):
        if tick.year > 2026:
            break
        if isinstance(_tick(tick), dg.RunRequest):
            fired.append(tick)
        else:
            skipped += 1
    assert len(fired) == 12
    assert all((t + timedelta(days=1)).day == 1 and (t.hour, t.minute) == (22, 30) for t in fired)
    assert skipped == sum(1 for d in range(28, 32) for m in range(1, 13) if _valid(2026, m, d)) - 12


def _valid(year: int, month: int, day: int) -> bool:
    try:
        datetime(year, month, day)
    except ValueError:
        return False
    return True


def test_month_end_cutoff_is_the_last_day_in_uk_local_time_all_year():
    from zoneinfo import ZoneInfo

    london = ZoneInfo("Europe/London")
    for month_end in (datetime(2026, 3, 31, 22, 30, tzinfo=UTC), datetime(2026, 10, 31, 22, 30, tzinfo=UTC)):
        cutoff = schedules.month_end_cutoff(month_end)
        assert cutoff.astimezone(london).date() == month_end.date()


def test_freshness_windows_match_what_refreshes_each_asset():
    """Every freshness policy is met by a schedule (its longest gap between ticks is shorter than the
    fail window) or, for the despatch feeds, by the despatch sensor; nothing is set up to go stale."""
    from pathlib import Path

    from dagster._utils.schedules import cron_string_iterator

    import sage_wms_pipeline.definitions as code_location
    from sage_wms_pipeline.defs import freshness

    defs = dg.load_from_defs_folder(path_within_project=Path(code_location.__file__).parent)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    longest_gap: dict[str, timedelta] = {}
    for schedule in defs.schedules:
        ticks = cron_string_iterator(start, schedule.cron_schedule, "UTC")
        previous, gap = next(ticks), timedelta(0)
        for tick in ticks:
            if tick.year > 2026:
                break
            gap, previous = max(gap, tick - previous), tick
        job = schedule.job_name
        longest_gap[job] = min(gap, longest_gap.get(job, gap))
    sensed = {t.job_name for s in defs.sensors for t in s.targets}

    graph = defs.resolve_asset_graph()
    for name, policy in freshness.FRESHNESS_BY_ASSET.items():
        node = graph.get(dg.AssetKey(name))
        assert node.freshness_policy == policy, f"{name} does not carry its freshness policy"
        jobs = [
            j.name
            for j in defs.resolve_all_job_defs()
            if dg.AssetKey(name) in j.asset_layer.selected_asset_keys
        ]
        gaps = [longest_gap[j] for j in jobs if j in longest_gap]
        if gaps and min(gaps) < policy.fail_window.to_timedelta():
            continue
        assert policy is freshness.ON_DESPATCH and any(j in sensed for j in jobs), (name, jobs, gaps)
