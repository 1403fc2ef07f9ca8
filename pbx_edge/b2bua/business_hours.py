"""Is an extension open right now? Business hours (``BusinessHours`` in the config) at a UNIX time.

A pure function of the schedule and the wall-clock time it is given (the core's ``wall_clock``), so
the ``after_hours`` trigger is tested with fixed instants, daylight-saving changes included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pbx_edge.ops.config import WEEKDAYS, BusinessHours


def is_open(hours: BusinessHours, wall: float) -> bool:
    """Whether ``wall`` (UNIX seconds) falls in one of the day's ranges, in the schedule's zone."""
    local = datetime.fromtimestamp(wall, UTC).astimezone(ZoneInfo(hours.timezone))
    minute = local.hour * 60 + local.minute
    day = WEEKDAYS[local.weekday()]
    return any(start <= minute < end for start, end in hours.minutes(day))
