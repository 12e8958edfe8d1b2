"""``links.expire_vcon``: the vCon's body in Redis expires ``seconds`` from now.

vcon-server: conserver/links/expire_vcon/__init__.py (b9b0381), ``EXPIRE vcon:{uuid}
seconds`` through ``VconQueue.set_vcon_ttl``; the vCon itself is unchanged. Here it goes
through ``ctx.set_body_ttl``, which the pipeline may hold back until the body is rewritten
(a rewrite would otherwise drop the TTL).
"""

from __future__ import annotations

default_options = {"seconds": 60 * 60 * 24}


def run(vcon: dict, ctx, options: dict) -> dict:
    ctx.set_body_ttl(vcon["uuid"], int(options["seconds"]))
    ctx.log.info("expire_vcon: %s expires in %ss", vcon["uuid"], options["seconds"])
    return vcon
