"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, and lists ``a,b``; months
and weekdays also take names (``JAN``, ``MON``); ``7`` is Sunday like ``0``. As in Vixie cron, when
both day fields are restricted a day matches either. ``@hourly``, ``@daily``, ``@weekly``,
``@monthly`` and ``@yearly`` are shorthands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))
_HORIZON_DAYS = 366 * 5


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after ``moment`` (an aware datetime)."""
        start = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(_HORIZON_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        raise CronError("the schedule never fires")


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        spec, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise CronError(f"{name}: step {step_text!r} is not a number") from None
        if step < 1:
            raise CronError(f"{name}: step must be at least 1")
        if spec == "*":
            first, last = low, high
        else:
            bounds = spec.split("-")
            if len(bounds) > 2 or not all(bounds):
                raise CronError(f"{name}: cannot read {item!r}")
            try:
                numbers = [names[b.upper()] if b.upper() in names else int(b) for b in bounds]
            except ValueError:
                raise CronError(f"{name}: {spec!r} is not a number or a name") from None
            first, last = numbers[0], numbers[-1]
            if step_text and len(bounds) == 1:
                last = high
        if not (low <= first <= high and low <= last <= high) or first > last:
            raise CronError(f"{name}: {item!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> Cron:
    expression = _MACROS.get(text.strip().lower(), text.strip())
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"a schedule has 5 fields (minute hour day month weekday), not {len(parts)}")
    minutes, hours, days, months, weekdays = (
        _field(part, name, low, high, names) for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    )
    return Cron(minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*")
