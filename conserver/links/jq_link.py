"""``links.jq_link``: go on with the vCons that a jq filter matches (or, with
``forward_matches: false``, with those it does not); halt the others.

vcon-server: conserver/links/jq_link/__init__.py (b9b0381), through the same PyPI ``jq``
binding. The match is Python's truth of the filter's first result (so ``0``, ``""``, ``[]``
and no result at all do not match), as there. A filter that fails on mixed-type ``body``
arrays ("requires string inputs") is tried once more on string-only body arrays; any other
error halts the chain, logged, as in vcon-server. Compiled filters are cached.
"""

from __future__ import annotations

import functools

import jq

default_options = {"filter": ".", "forward_matches": True}


@functools.lru_cache(maxsize=256)
def _compile(expression: str):
    return jq.compile(expression)


def _string_body_arrays(value):
    """A copy with non-string items dropped from every ``body`` list."""
    if isinstance(value, dict):
        return {k: [i for i in v if isinstance(i, str)] if k == "body" and isinstance(v, list)
                else _string_body_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_string_body_arrays(item) for item in value]
    return value


def _matches(expression: str, vcon: dict) -> bool:
    program = _compile(expression)
    try:
        results = list(program.input(vcon))
    except Exception as exc:
        if "requires string inputs" not in str(exc):
            raise
        results = list(program.input(_string_body_arrays(vcon)))
    return bool(results[0]) if results else False


def run(vcon: dict, ctx, options: dict) -> dict | None:
    try:
        matches = _matches(options["filter"], vcon)
    except Exception as exc:
        ctx.log.error("jq_link: filter %r failed on vCon %s: %s", options["filter"], vcon.get("uuid"), exc)
        return None
    return vcon if matches == options["forward_matches"] else None
