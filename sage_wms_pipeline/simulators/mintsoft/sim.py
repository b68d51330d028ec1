"""The simulator's state holder: the SQLite database and the simulated clock.

The clock is stored as an anchor (warehouse time at a wall-clock instant) and a speed, so it keeps
running across restarts. Nothing runs in the background: each request first replays the events due
between the last request and "now" (see `Tx.advance`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline.simulators.mintsoft import db
from sage_wms_pipeline.simulators.mintsoft.loader import load_scenario
from sage_wms_pipeline.simulators.mintsoft.warehouse import SimError, Tx, get_meta, set_meta


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def demo_scenario() -> Scenario:
    return Scenario.model_validate(jsonutil.loads(demo_scenario_path().read_text(encoding="utf-8")))


class Simulator:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = db.open_engine(data_dir / "mintsoft.sqlite")
        with self.engine.begin() as conn:
            if get_meta(conn, "scenario") is None:
                scenario = demo_scenario()
                self._load(conn, scenario, scenario.behaviour.clock_speed)

    # ---- clock ---------------------------------------------------------------------------------

    @staticmethod
    def _clock_now(conn: Connection) -> int:
        clock = get_meta(conn, "clock")
        elapsed = _wall_ms() - clock["real_ms"]
        now = clock["sim_ms"] + int(Decimal(elapsed) * Decimal(clock["speed"]))
        return max(now, get_meta(conn, "processed_ms"))

    @staticmethod
    def _set_clock(conn: Connection, sim_ms: int, speed: Decimal) -> None:
        set_meta(conn, "clock", {"sim_ms": sim_ms, "real_ms": _wall_ms(), "speed": speed})

    def clock(self) -> dict[str, Any]:
        with self.engine.begin() as conn:
            clock = get_meta(conn, "clock")
            return {"now": db.from_ms(self._clock_now(conn)), "speed": clock["speed"]}

    def set_clock(self, advance_seconds: Decimal | None, set_to: int | None, speed: Decimal | None) -> None:
        with self.engine.begin() as conn:
            now = self._clock_now(conn)
            target = now
            if set_to is not None:
                if set_to < now:
                    raise SimError(
                        400,
                        f"set: {db.from_ms(set_to)} is before the warehouse clock {db.from_ms(now)}; "
                        "time never runs backwards",
                    )
                target = set_to
            if advance_seconds is not None:
                if advance_seconds < 0:
                    raise SimError(400, "advance_seconds: must not be negative")
                target += int(advance_seconds * 1000)
            if speed is not None and speed < 0:
                raise SimError(400, "speed: must not be negative")
            self._set_clock(conn, target, get_meta(conn, "clock")["speed"] if speed is None else speed)
        self.advance()

    def advance(self) -> int:
        """Bring the warehouse up to the clock's "now"; committed on its own."""
        with self.engine.begin() as conn:
            target = self._clock_now(conn)
            tx = Tx(conn, get_meta(conn, "processed_ms"))
            ran = tx.advance(target)
            set_meta(conn, "processed_ms", target)
            return ran

    # ---- transactions --------------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One all-or-nothing unit of work at the current warehouse time."""
        with self.engine.begin() as conn:
            yield Tx(conn, get_meta(conn, "processed_ms"))

    # ---- scenario ------------------------------------------------------------------------------

    def _load(self, conn: Connection, scenario: Scenario, speed: Decimal) -> None:
        load_scenario(conn, scenario)
        self._set_clock(conn, db.to_ms(scenario.starts_at), speed)

    def load(self, scenario: Scenario, speed: Decimal = Decimal(0)) -> None:
        with self.engine.begin() as conn:
            self._load(conn, scenario, speed)

    # ---- auth ----------------------------------------------------------------------------------

    def issue_key(self, username: str, password: str) -> str | None:
        with self.engine.begin() as conn:
            stored = conn.execute(select(db.users.c.password).where(db.users.c.username == username)).scalar()
            if stored is None or not secrets.compare_digest(stored, password):
                return None
            now = self._clock_now(conn)
            ttl = int(get_meta(conn, "faults").get("key_ttl_seconds", 86400))
            key = secrets.token_hex(16)
            conn.execute(
                db.api_keys.insert().values(
                    key=key, username=username, issued_ms=now, expires_ms=now + ttl * 1000
                )
            )
            return key

    def check_key(self, key: str | None) -> str | None:
        """None if the key is good, else why not."""
        if not key:
            return "Missing API key: send it in the ms-apikey header"
        with self.engine.begin() as conn:
            expires = conn.execute(select(db.api_keys.c.expires_ms).where(db.api_keys.c.key == key)).scalar()
            if expires is None:
                return "Invalid API key"
            if expires <= self._clock_now(conn):
                return "API key expired: get a new one from /api/Auth"
        return None

    def expire_keys(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(db.api_keys).values(expires_ms=self._clock_now(conn)))

    # ---- faults --------------------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        with self.tx() as tx:
            return tx.faults

    def set_faults(self, values: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as conn:
            merged = {**(get_meta(conn, "faults") or {}), **values}
            set_meta(conn, "faults", merged)
        return self.faults()

    def next_request_no(self) -> int:
        with self.engine.begin() as conn:
            n = (get_meta(conn, "request_no") or 0) + 1
            set_meta(conn, "request_no", n)
            return n
