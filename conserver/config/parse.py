"""Value parsers: each turns one setting's text into a value and writes a value back as text.

A parser is an object, not a function, because it carries what it allows: the bounds or
choices that :class:`ConfigError` names when a value is bad, which the settings table
(``settings.py``) and ``conf/conserver.env.example`` show beside each variable. ``format``
is the inverse of ``parse``: ``conserver check-config`` prints the effective settings with
it, and parsing that output gives the same configuration back.

This module depends on nothing else in the project.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

BUILTIN_STORES = ("postgres", "s3", "elasticsearch", "null")
MAX_WORKERS = 256
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_LIST_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A setting has a value conserver cannot use."""

    def __init__(self, variable: str, value: Any, allowed: str):
        self.variable, self.value, self.allowed = variable, value, allowed
        super().__init__(f"invalid configuration: {variable}={value!r}: allowed {allowed}")


# Query parameters and libpq keywords that carry a secret: password, sslpassword, pwd,
# secret, token, api_key, access_key, signature, auth...
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|signature|auth|credential", re.I)
_CONNINFO_SECRET = re.compile(r"""(\b[\w.-]*(?:pass|pwd|secret|token|key)[\w.-]*\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']*)""", re.I)


def config_problem(where: str, value: Any, problem: str) -> ConfigError:
    """A ConfigError about a place in a file (``config.yml chains.main link 'x'``), worded as
    the problem, not as the values allowed."""
    err = ConfigError(where, value, problem)
    err.args = (f"invalid configuration: {where}: {value!r}: {problem}",)
    return err


def redact_url(url: str) -> str:
    """A URL or libpq connection string with its secrets hidden, wherever it is shown:
    ``redis://user:secret@host/0?password=x`` -> ``redis://user:***@host/0?password=***``,
    ``host=db password=x`` -> ``host=db password=***``. Other strings unchanged."""
    if "://" not in url:
        return _CONNINFO_SECRET.sub(lambda m: m.group(1) + "***", url) if "=" in url else url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL after all: hide everything between :// and @, and every value
        return _CONNINFO_SECRET.sub(lambda m: m.group(1) + "***", re.sub(r"(://[^@/]*:)[^@/]*@", r"\1***@", url))
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port else "")
    query = "&".join(_redact_param(p) for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_param(pair: str) -> str:
    name, eq, value = pair.partition("=")
    return f"{name}=***" if eq and value and _SECRET_NAME.search(unquote(name)) else pair


def _number(value: float) -> str:
    """A float as the shortest text that reads back to it: 300.0 -> '300', 0.25 -> '0.25'."""
    return repr(float(value)).removesuffix(".0")


def _items(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


class Parser:
    """Text of one setting -> value (``parse``) and back (``format``); ``allowed`` says what it takes."""

    allowed = ""

    def parse(self, var: str, raw: str) -> Any:
        return raw

    def format(self, value: Any) -> str:
        return str(value)

    def reject(self, var: str, raw: str, allowed: str | None = None) -> ConfigError:
        return ConfigError(var, raw, allowed or self.allowed)


class Text(Parser):
    """Kept as written (secrets, names, paths): nothing conserver could check here."""


class Bool(Parser):
    allowed = "true or false (also 1/0, yes/no, on/off)"

    def parse(self, var: str, raw: str) -> bool:
        low = raw.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise self.reject(var, raw)

    def format(self, value: bool) -> str:
        return "true" if value else "false"


class Number(Parser):
    """A decimal number within bounds (a factor)."""

    kind = "a number"

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.allowed = f"{self.kind} from {_number(lo)} to {_number(hi)}"

    def cast(self, text: str) -> float:
        return float(text)

    def parse(self, var: str, raw: str) -> float:
        try:
            value = self.cast(raw.strip())
        except ValueError:
            raise self.reject(var, raw) from None
        if not (math.isfinite(value) and self.lo <= value <= self.hi):
            raise self.reject(var, raw)
        return value

    def format(self, value: float) -> str:
        return _number(value)


class Int(Number):
    kind = "an integer"
    cast = staticmethod(int)
    format = Parser.format


class Duration(Parser):
    """Seconds, written ``500ms``, ``2s``, ``5m``, ``1h``; a bare number is in ``bare_unit``
    (vcon-server writes some settings in milliseconds, others in seconds)."""

    def __init__(self, bare_unit: str, lo: float, hi: float):
        self.bare_unit, self.lo, self.hi = bare_unit, lo, hi
        self.allowed = (f"a duration from {self._seconds(lo)} to {self._seconds(hi)} "
                        f"(e.g. 500ms, 30s, 5m; a bare number is in {bare_unit})")

    @staticmethod
    def _seconds(s: float) -> str:
        return f"{s * 1000:g}ms" if s < 1 else f"{s:.0f}s" if s == int(s) else f"{s:g}s"

    def parse(self, var: str, raw: str) -> float:
        m = _DURATION.match(raw)
        if not m:
            raise self.reject(var, raw)
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or self.bare_unit]
        if not self.lo <= seconds <= self.hi:
            raise self.reject(var, raw)
        return seconds

    def format(self, value: float) -> str:
        return _number(value) + "s"


class Choice(Parser):
    """One of ``choices`` (case-insensitive); ``empty`` names what an empty value means, if allowed."""

    def __init__(self, choices: tuple[str, ...], *, upper: bool = False, empty: str = ""):
        self.choices, self.upper, self.empty = choices, upper, empty
        self.allowed = (", ".join(choices) + f", or empty for {empty}") if empty else "one of " + ", ".join(choices)

    def parse(self, var: str, raw: str) -> str:
        value = raw.strip().upper() if self.upper else raw.strip().lower()
        if value in self.choices or (self.empty and not value):
            return value
        raise self.reject(var, raw)


class WorkerCount(Parser):
    """``auto`` or a count; kept as written, the count is resolved once the memory setting is known."""

    allowed = f"an integer from 1 to {MAX_WORKERS}, or auto"

    def parse(self, var: str, raw: str) -> str:
        value = raw.strip().lower()
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= MAX_WORKERS):
            raise self.reject(var, raw)
        return value if value == "auto" else str(int(value))


class ListNames(Parser):
    allowed = "a comma-separated list of distinct names of letters, digits and _.:-"

    def parse(self, var: str, raw: str) -> tuple[str, ...]:
        names = tuple(_items(raw))
        if not names or any(not _LIST_NAME.match(n) for n in names) or len(set(names)) != len(names):
            raise self.reject(var, raw)
        return names

    def format(self, value: tuple[str, ...]) -> str:
        return ",".join(value)


class OptionalNames(ListNames):
    allowed = "a comma-separated list (may be empty) of distinct names of letters, digits and _.:-"

    def parse(self, var: str, raw: str) -> tuple[str, ...]:
        return super().parse(var, raw) if raw.strip() else ()


class Stores(ListNames):
    allowed = "a comma list of " + ", ".join(BUILTIN_STORES) + " or package.module:Class"

    @classmethod
    def is_store(cls, name: str) -> bool:
        return name in BUILTIN_STORES or bool(_IMPORT_PATH.match(name))

    def parse(self, var: str, raw: str) -> tuple[str, ...]:
        names = tuple(_items(raw))
        if not all(self.is_store(n) for n in names):
            raise self.reject(var, raw)
        if len(set(names)) != len(names):
            raise self.reject(var, raw, "each store named once")
        return names


class ImportPath(Parser):
    allowed = "an import path package.module:Class"

    def parse(self, var: str, raw: str) -> str:
        value = raw.strip()
        if not _IMPORT_PATH.match(value):
            raise self.reject(var, value)
        return value


class Identifier(Parser):
    allowed = "an SQL identifier of letters, digits and _ (at most 63)"

    def parse(self, var: str, raw: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", raw):
            raise self.reject(var, raw)
        return raw


class Url(Parser):
    """A URL with one of ``schemes``; ``optional``: empty means not configured. A bad value is
    echoed with its password hidden."""

    def __init__(self, *schemes: str, optional: bool = False):
        self.schemes, self.optional = schemes, optional
        self.allowed = "a URL with scheme " + " or ".join(f"{s}://" for s in schemes)

    def parse(self, var: str, raw: str) -> str:
        value = raw.strip()
        if not value and self.optional:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in self.schemes or not parts.netloc and parts.scheme != "unix":
            raise self.reject(var, redact_url(raw))
        return value


class Sentinels(Parser):
    allowed = "a comma list of host:port"

    def parse(self, var: str, raw: str) -> tuple[tuple[str, int], ...]:
        out = []
        for item in _items(raw):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise self.reject(var, raw)
            out.append((host, int(port)))
        return tuple(out)

    def format(self, value: tuple[tuple[str, int], ...]) -> str:
        return ",".join(f"{host}:{port}" for host, port in value)


class RateLimits(Parser):
    """``elasticsearch:200/400,s3:50``: per store, vCons per second and a burst (default: the rate).

    The one rate rule of conserver: a rate of 0 means unlimited, as 0 means "no limit" for
    RATE_LIMIT_MAX, DEFAULT_TENANT_CONCURRENCY and the recycling limits, and as
    ``limits.SharedTokenBucket`` reads it. Taken literally, 0 would stop the store for good
    and leave every vCon in Redis: never what an operator wants.
    """

    allowed = ("store:rate[/burst] entries, each store once, with finite numbers >= 0 (rate 0 = unlimited; "
               "a burst > 0 when the rate is), e.g. elasticsearch:200/400,s3:50")

    def parse(self, var: str, raw: str) -> tuple[tuple[str, float, float], ...]:
        out: dict[str, tuple[float, float]] = {}
        for item in _items(raw):
            store, sep, spec = (part.strip() for part in item.rpartition(":"))
            rate_text, slash, burst_text = (part.strip() for part in spec.partition("/"))
            try:
                rate = float(rate_text)
                burst = float(burst_text) if slash else rate
            except ValueError:
                raise self.reject(var, raw) from None
            if (not sep or not Stores.is_store(store) or store in out or not all(
                    math.isfinite(x) and 0 <= x < 1e9 for x in (rate, burst)) or (rate > 0 and burst <= 0)):
                raise self.reject(var, raw)
            out[store] = (rate, burst)
        return tuple((store, rate, burst) for store, (rate, burst) in out.items())

    def format(self, value: tuple[tuple[str, float, float], ...]) -> str:
        return ",".join(f"{store}:{_number(rate)}/{_number(burst)}" for store, rate, burst in value)


class Autoscale(Parser):
    allowed = f"min,max with 1 <= min <= max <= {MAX_WORKERS}"

    def parse(self, var: str, raw: str) -> tuple[int, int] | None:
        if not raw.strip():
            return None
        lo, sep, hi = raw.partition(",")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit() or not 1 <= int(lo) <= int(hi) <= MAX_WORKERS:
            raise self.reject(var, raw)
        return int(lo), int(hi)

    def format(self, value: tuple[int, int] | None) -> str:
        return "" if value is None else f"{value[0]},{value[1]}"
