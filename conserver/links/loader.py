"""Find a link by the ``module`` name of config.yml and check that it is one.

A name resolves, first match wins, to

1. a built-in under vcon-server's module name (``links.tag``, ... see :data:`BUILTIN_LINKS`);
2. an entry point of that name in the group ``conserver.links``, so a pip-installed package
   adds links by name (``[options.entry_points] conserver.links = links.redact = mypkg.redact``);
3. an importable module (``mypkg.mylink``), or ``module:attribute`` for an object in one.

An entry point or an attribute may name a module, an object with ``run``, or a class (made
once, with no arguments). vcon-server installs missing modules with pip at run time
(``pip_name``); conserver does not install code while it runs, and says what to install.

:func:`configure_link` is the config layer's one call: name, module, options of config.yml
in, a :class:`LinkSpec` (the link, its merged options, its policy) out, or LinkLoadError.
It does no I/O beyond importing, so it runs in the main process before fork.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from conserver.links.base import Link, LinkLoadError, mapping_attr
from conserver.links.policy import LinkPolicy, parse_policy, split_options

__all__ = ["BUILTIN_LINKS", "ENTRY_POINT_GROUP", "LinkSpec", "configure_link", "load_link"]

ENTRY_POINT_GROUP = "conserver.links"

# vcon-server's module name -> conserver's module
BUILTIN_LINKS = {name: "conserver.links." + name.split(".", 1)[1] for name in (
    "links.tag", "links.sampler", "links.jq_link", "links.expire_vcon", "links.tag_router",
    "links.webhook", "links.diet", "links.analyze")}

_VCON_SERVER_SIGNATURE = ("vcon_uuid", "vcon_id")


@dataclass(frozen=True)
class LinkSpec:
    """One configured link: what the runner needs to call it in a worker."""

    name: str                 # the key under ``links:`` in config.yml
    module: str               # its ``module`` as written
    link: Any                 # the module or object with run()
    options: Mapping[str, Any]  # default_options merged with config.yml's, policy taken out
    policy: LinkPolicy


def _entry_point(name: str) -> metadata.EntryPoint | None:
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    return found[0] if found else None


def _import(module_name: str, pip_name: str | None) -> Any:
    path, _, attr = module_name.partition(":")
    try:
        obj = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not (path == exc.name or path.startswith(exc.name + ".")):
            raise LinkLoadError(module_name, f"it imports {exc.name!r}, which is not installed") from exc
        hint = f"pip install {pip_name}" if pip_name else "install the package that provides it"
        raise LinkLoadError(module_name, (
            f"no such module: not a built-in ({', '.join(sorted(BUILTIN_LINKS))}), no entry point "
            f"in {ENTRY_POINT_GROUP!r}, not importable ({hint})")) from exc
    except Exception as exc:
        raise LinkLoadError(module_name, f"importing it failed: {type(exc).__name__}: {exc}") from exc
    if attr:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise LinkLoadError(module_name, f"module {path!r} has no attribute {attr!r}") from None
    return obj


def _check(module_name: str, obj: Any) -> Any:
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise LinkLoadError(module_name, f"making the link object failed: {type(exc).__name__}: {exc}") from exc
    run = getattr(obj, "run", None)
    if not callable(run):
        raise LinkLoadError(module_name, "has no run(vcon, ctx, options) function")
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        params = None  # a builtin or C callable: trust it
    if params is not None:
        if params and params[0].name in _VCON_SERVER_SIGNATURE:
            raise LinkLoadError(module_name, (
                "is a vcon-server link (run(vcon_uuid, link_name, opts), reading Redis itself); "
                "conserver links are run(vcon, ctx, options) -> vcon | None: see docs/links.md"))
        try:
            inspect.signature(run).bind(None, None, None)
        except TypeError:
            raise LinkLoadError(module_name, "run() must take three arguments: (vcon, ctx, options)") from None
    mapping_attr(obj, "default_options", module_name)
    mapping_attr(obj, "default_policy", module_name)
    return obj


def load_link(module_name: str, pip_name: str | None = None) -> Link:
    """The link that ``module_name`` names (see the module docstring), or LinkLoadError."""
    if not isinstance(module_name, str) or not module_name.strip():
        raise LinkLoadError(str(module_name), "a link's module must be a non-empty string")
    if module_name in BUILTIN_LINKS:
        return _check(module_name, importlib.import_module(BUILTIN_LINKS[module_name]))
    ep = _entry_point(module_name)
    if ep is not None:
        try:
            obj = ep.load()
        except Exception as exc:
            raise LinkLoadError(module_name, (
                f"entry point {ep.value!r} in {ENTRY_POINT_GROUP!r} failed to load: {type(exc).__name__}: {exc}"
            )) from exc
        return _check(module_name, obj)
    return _check(module_name, _import(module_name, pip_name))


def configure_link(name: str, module_name: str, options: Mapping[str, Any] | None = None, *,
                   pip_name: str | None = None, policy_defaults: Mapping[str, Any] | None = None) -> LinkSpec:
    """config.yml's ``links.NAME`` -> a LinkSpec. ``policy_defaults``: deployment-wide policy
    options (from the environment), under the link's own ``conserver:`` mapping."""
    link = load_link(module_name, pip_name)
    try:
        own, policy_options = split_options(options)
        policy = parse_policy(mapping_attr(link, "default_policy", module_name), policy_defaults, policy_options)
    except ValueError as exc:
        raise LinkLoadError(module_name, f"link {name!r}: {exc}") from None
    merged = {**copy.deepcopy(mapping_attr(link, "default_options", module_name)), **own}
    return LinkSpec(name=name, module=module_name, link=link, options=merged, policy=policy)
