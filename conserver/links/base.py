"""The link protocol: what a module (or an object) must offer to run as a link of a chain.

A link is anything with these attributes; a plain module is the usual shape::

    # mypkg/redact_ssn.py
    default_options = {"mask": "***"}         # optional: merged under the config.yml options

    def run(vcon: dict, ctx, options: dict) -> dict | None:
        for dialog in vcon.get("dialog", []):
            ...                                 # change the vCon in place, or build a new one
        return vcon                             # go on with it; None: halt the chain

``run`` gets the vCon as a dict (its own copy: changes of a call that failed or timed out
never reach the chain), a :class:`~conserver.links.context.LinkContext` and the link's
options (``default_options`` shallow-merged with the options of config.yml, conserver's own
``conserver:`` policy mapping taken out). It returns

- the vCon, changed or not: the chain goes on with it;
- a vCon with another ``uuid``: the chain goes on with that one (vcon-server allows it too);
- ``None``: the chain halts; nothing is stored and nothing goes to the egress lists.

It signals failure by raising. :class:`TransientError` (or a timeout, a connection error,
an HTTP 429/5xx from ``requests``, see ``runner.is_transient``) means "try again later";
anything else is permanent. The runner turns the last failure into :class:`LinkFailed`.

Optional attributes: ``default_policy`` (a mapping of policy options, ``policy.py``, that
the link's ``conserver:`` mapping overrides; the HTTP built-ins count their rate limit per
request with it). A class works as well as a module: an entry point that names a class is
instantiated once with no arguments.

vcon-server's links have another shape, ``run(vcon_uuid, link_name, opts)`` and Redis reads
and writes of their own; the loader recognises it and says so instead of calling it wrong.

This module depends on nothing else in the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Link", "LinkFailed", "LinkLoadError", "TransientError"]


@runtime_checkable
class Link(Protocol):
    """A link: ``run(vcon, ctx, options) -> vcon | None``; ``default_options`` may be absent.
    ``ctx`` is a ``conserver.links.context.LinkContext`` (not imported here: context.py
    imports this module)."""

    def run(self, vcon: dict, ctx: Any, options: dict) -> dict | None: ...


class TransientError(Exception):
    """Raised by a link when the failure should pass (a busy service, a network blip): the
    runner retries it and the pipeline retries the vCon later instead of dead-lettering."""


class LinkFailed(Exception):
    """A link gave up on a vCon. ``transient``: worth retrying later (timeout, 429/5xx,
    connection error, breaker open, rate-limit wait too long); else permanent (dead-letter
    with reason ``link_failed``). ``detail`` says what happened, in one line."""

    def __init__(self, link_name: str, transient: bool, detail: str):
        self.link_name = link_name
        self.transient = bool(transient)
        self.detail = detail
        kind = "transient" if self.transient else "permanent"
        super().__init__(f"link {link_name!r} failed ({kind}): {detail}")

    def __reduce__(self):  # picklable with all three arguments (the default passes only args)
        return (LinkFailed, (self.link_name, self.transient, self.detail))


class LinkLoadError(Exception):
    """A link module that cannot be loaded or is not a link; ``module`` names it. The config
    layer reports it, with the chain that uses it, and exits 2."""

    def __init__(self, module: str, detail: str):
        self.module = module
        self.detail = detail
        super().__init__(f"link module {module!r}: {detail}")

    def __reduce__(self):
        return (LinkLoadError, (self.module, self.detail))


def mapping_attr(obj: Any, name: str, module: str) -> dict:
    """``obj.name`` as a dict ({} when absent); LinkLoadError when it is not a mapping."""
    value = getattr(obj, name, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LinkLoadError(module, f"{name} must be a mapping, not {type(value).__name__}")
    return dict(value)
