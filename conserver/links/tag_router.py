"""``links.tag_router``: push the vCon's uuid on the list of each of its tags that has a
route; go on with it when ``forward_original`` (the default), else halt.

vcon-server: conserver/links/tag_router/__init__.py (b9b0381): tag names from every tags
attachment (``"name:value"`` strings of a list body, or a dict body's keys), one RPUSH per
tag name found in ``tag_routes`` (a tag that appears twice is routed twice, as there); no
routes configured: go on unchanged. The pushes go through ``ctx.enqueue``, which the
pipeline may hold back until the vCon is committed.
"""

from __future__ import annotations

from conserver.links.parts import tag_entries

default_options = {"tag_routes": {}, "forward_original": True}


def run(vcon: dict, ctx, options: dict) -> dict | None:
    routes = options.get("tag_routes")
    if not routes:
        ctx.log.warning("tag_router: no tag_routes configured for %s, skipping", ctx.link_name)
        return vcon
    for name in tag_entries(vcon):
        if name in routes:
            ctx.enqueue(routes[name], vcon["uuid"])
    return vcon if options.get("forward_original") else None
