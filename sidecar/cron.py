"""Cron schedules as crontab(5) reads them, run by apscheduler.

`SIDECAR_VERIFY_SCHEDULE` is a cron line, and users write it as cron means it: day of week
`0` and `7` are Sunday, `mon-fri` is Monday to Friday. apscheduler 3's `from_crontab` counts
day of week 0 as Monday, so sidecar parses the line itself (here, the one place) into the set
of values each field allows, and hands apscheduler those values as explicit fields.

The grammar (crontab(5)): five fields, minute (0-59), hour (0-23), day of month (1-31), month
(1-12 or jan-dec), day of week (0-7, 0 and 7 Sunday, or sun-sat). A field is a comma list of
`*`, `N` or `N-M`, each optionally followed by `/STEP` (`N/STEP` is N to the field's end).
Names are case-insensitive and work in ranges (`mon-fri`). When both day of month and day of
week are restricted (neither starts with `*`), a day matching either runs, as in cron. The
macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly`
are cron's; `@reboot` has no meaning here and is refused. Times are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.errors import Invalid

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)}),
    _Field("day of week", 0, 7, {n: i for i, n in enumerate(_DAYS)}),
)


@dataclass(frozen=True)
class Schedule:
    """A parsed cron line: the values each field allows (day of week 0-6, Sunday 0)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool  # both day fields restricted: a day matching either runs

    def trigger(self) -> Any:
        """The apscheduler trigger that fires exactly when cron would run this line."""
        from apscheduler.triggers.cron import CronTrigger

        common = {"minute": _list(self.minutes), "hour": _list(self.hours),
                  "month": _list(self.months), "timezone": UTC}
        # apscheduler's day_of_week counts from Monday (0) to Sunday (6).
        weekdays = _list(frozenset((d - 1) % 7 for d in self.weekdays))
        if not self.either_day:
            return CronTrigger(day=_list(self.days), day_of_week=weekdays, **common)
        from apscheduler.triggers.combining import OrTrigger

        return OrTrigger([CronTrigger(day=_list(self.days), **common),
                          CronTrigger(day_of_week=weekdays, **common)])

    def next_after(self, now: datetime) -> datetime | None:
        """The first run at or after `now` (UTC, rounded up to the second), as apscheduler
        will fire it; None if never."""
        return self.trigger().get_next_fire_time(None, now)


def _list(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def parse(text: str) -> Schedule:
    """A cron line as crontab(5) reads it. Raises Invalid saying which field is wrong."""
    line = " ".join(text.split())
    if line.startswith("@"):
        if line.lower() not in MACROS:
            raise Invalid(f"{line!r} is not a cron macro sidecar runs (use one of "
                          f"{', '.join(MACROS)}, or five fields like '17 3 * * *')")
        line = MACROS[line.lower()]
    parts = line.split(" ")
    if len(parts) != 5:
        raise Invalid(f"must be 5 fields (minute hour day-of-month month day-of-week) like "
                      f"'17 3 * * *'; got {len(parts) if line else 0}")
    sets = [_field(part, f) for part, f in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    if not either_day and not any(d <= _days_in(m) for m in sets[3] for d in sets[2]):
        # cron takes `0 0 30 2 *` and never runs it: a verification that never happens
        raise Invalid(f"day of month {parts[2]!r} never occurs in month {parts[3]!r}")
    return Schedule(" ".join(text.split()), sets[0], sets[1], sets[2], sets[3], weekdays,
                    either_day)


def _days_in(month: int) -> int:
    return 29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31


def _value(text: str, f: _Field) -> int:
    if text.lower() in f.names:
        return f.names[text.lower()]
    if not (text.isascii() and text.isdigit()):
        names = f" or a name ({', '.join(f.names)})" if f.names else ""
        raise Invalid(f"{f.name} {text!r} is not a number{names}")
    value = int(text)
    if not f.low <= value <= f.high:
        extra = " (0 and 7 are Sunday)" if f.name == "day of week" else ""
        raise Invalid(f"{f.name} {value} is out of range {f.low}-{f.high}{extra}")
    return value


def _field(text: str, f: _Field) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
                raise Invalid(f"{f.name} step {step_text!r} in {item!r} must be a positive "
                              "number")
            step = int(step_text)
        if base == "*":
            low, high = f.low, f.high
        elif "-" in base:
            a, _, b = base.partition("-")
            low, high = _value(a, f), _value(b, f)
            if low > high:
                raise Invalid(f"{f.name} range {base!r} runs backwards")
        elif base:
            low = _value(base, f)
            high = f.high if slash else low
        else:
            raise Invalid(f"{f.name} field {text!r} has an empty item")
        out.update(range(low, high + 1, step))
    return frozenset(out)


def next_run(text: str | None, now: datetime | None = None) -> datetime | None:
    """When a schedule (None or empty: disabled) runs next after `now` (default: now)."""
    if not text:
        return None
    return parse(text).next_after(now or datetime.now(UTC))


def iso(when: datetime | None) -> str | None:
    """ISO 8601 UTC with `Z`, whole seconds (`2026-12-13T03:17:00Z`)."""
    if when is None:
        return None
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
