"""The "Date" type of draft-ietf-vcon-vcon-core-03 §2.2, read leniently.

§2.2 defines a Date as "a string that MUST have the form of an [RFC3339] date string as
defined for the Date type in section 1.4 of [JMAP]": RFC 3339 §5.6 ``date-time``, in the
normal form RFC 8620 §1.4 asks for (letters upper case, no all-zero fraction).

:func:`read` returns the instant in UTC and the *defects*: how the text departs from that
type (an empty tuple for a conforming Date). Real producers write other ISO 8601 forms;
those that Python's ``datetime.fromisoformat`` reads are read (no offset meaning UTC) and
named by their defect, so the caller can store them and count them. Text that is no date
at all raises ``ValueError``.

Leap seconds: RFC 3339 §5.6 allows ``time-second`` 60 and §5.7 puts it at 23:59:60 UTC on
the last day of a month (shifted by the offset). Python's datetime cannot hold second 60,
so a leap second reads as the last microsecond before it (the day, which keys the S3
layout, stays the one written). The leap second table is not consulted: future leap
seconds are not known in advance.

Depends on nothing else in the project.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_UTC = timezone.utc
_ZERO = timedelta(0)

# RFC 3339 §5.6 date-time; §5.6's NOTE allows lower case "t" and "z" (JMAP's normal form does not).
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)
# The common case, a conforming Date in normal form, on its own: no capture, no second 60,
# no all-zero fraction, upper case letters.
_NORMAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(?:\.\d*[1-9])?(?:Z|[+-]\d{2}:\d{2})\Z", re.ASCII)
_DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}\Z", re.ASCII)
_EXTENDED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_BASIC = re.compile(r"\d{8}T\d{2}", re.ASCII)
_OFFSET_NO_COLON = re.compile(r".*\d[+-]\d{2}(\d{2})?\Z", re.ASCII | re.DOTALL)

# Every defect read() can name, with what it means.
DEFECTS = {  # (phrased to follow "has")
    "no_offset": "no UTC offset (read as UTC)",
    "date_only": "a date without a time (read as midnight UTC)",
    "space_separator": "a space instead of 'T' between date and time",
    "offset_format": "an offset without a colon (+0000 or +00)",
    "basic_format": "the ISO 8601 basic format (no '-' and ':')",
    "not_normalised": "a lower case 't' or 'z', or an all-zero fraction (RFC 8620 §1.4)",
    "not_rfc3339": "another ISO 8601 form (no seconds, a week date, ...)",
}


def read(text: str) -> tuple[datetime, tuple[str, ...]]:
    """``text`` as a tz-aware UTC datetime and its defects (see :data:`DEFECTS`)."""
    if _NORMAL.match(text):
        return _utc(datetime.fromisoformat(text)), ()
    m = _DATE_TIME.match(text)
    if m is None:
        return _read_other(text)
    defects = ()
    if text[10] == "t" or text[-1] == "z" or (m.group(7) and not m.group(7).strip(".0")):
        defects = ("not_normalised",)
    if m.group(6) == "60":
        return _leap_second(m), defects
    return _utc(datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)), defects


def _read_other(text: str) -> tuple[datetime, tuple[str, ...]]:
    # What conserver always accepted (fromisoformat; "z" for UTC): nothing read before is refused now.
    dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    if _DATE_ONLY.match(text):
        return _utc(dt), ("date_only",)
    defects = []
    if _BASIC.match(text):
        defects.append("basic_format")
    elif _EXTENDED_DATE.match(text) and text[10:11] == " ":
        defects.append("space_separator")
    if dt.tzinfo is None:
        defects.append("no_offset")
    elif "basic_format" not in defects and _OFFSET_NO_COLON.match(text):
        defects.append("offset_format")
    if "basic_format" not in defects and (not defects or not _DATE_TIME.match(_respelled(text, defects))):
        defects.append("not_rfc3339")
    return _utc(dt), tuple(defects)


def _respelled(text: str, defects: list[str]) -> str:
    """``text`` with the named defects put right: if that is still no RFC 3339 date-time,
    something else is wrong too (missing seconds, say)."""
    if "space_separator" in defects:
        text = text[:10] + "T" + text[11:]
    if "no_offset" in defects:
        text += "Z"
    if "offset_format" in defects:
        sign = max(text.rfind("+"), text.rfind("-"))
        text = text[:sign + 3] + ":" + (text[sign + 3:] or "00")
    return text


def _leap_second(m: re.Match) -> datetime:
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    offset = m.group(8)
    tz = _UTC if offset in ("Z", "z") else timezone(
        (-1 if offset[0] == "-" else 1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    before = datetime(year, month, day, hour, minute, 59, 999999, tzinfo=tz).astimezone(_UTC)
    if (before.hour, before.minute) != (23, 59) or (before + timedelta(days=1)).day != 1:
        raise ValueError("second 60 is only a leap second at 23:59:60 UTC on the last day of a month")
    return before


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=_UTC)
    return dt if dt.utcoffset() == _ZERO else dt.astimezone(_UTC)
