"""``links.webhook``: POST the vCon as JSON to each of ``webhook-urls`` with ``headers``.

vcon-server: conserver/links/webhook/__init__.py (b9b0381): ``requests.post(url,
json=vcon, headers=headers)`` per URL, in order; a connection error fails the link; no URLs:
go on unchanged. One difference, so nothing is lost silently: vcon-server logs any answer
and goes on, here a 429 or 5xx answer is a transient failure (retried under the link's
policy, then the vCon is retried later). Other answers are logged and the chain goes on,
as there. A retry posts to every URL again: delivery is at least once.
(vcon-server's deployment-wide ``EGRESS_FORMAT_VERSION`` down-conversion is not done here.)
"""

from __future__ import annotations

default_options = {"webhook-urls": [], "headers": {}}
default_policy = {"rate_limit_per": "request"}  # a rate limit counts POSTs, not vCons


def run(vcon: dict, ctx, options: dict) -> dict:
    urls = options.get("webhook-urls") or []
    if not urls:
        ctx.log.warning("webhook: no webhook-urls configured for vCon %s, skipping", vcon["uuid"])
        return vcon
    headers = options.get("headers") or {}
    session = ctx.http()
    for url in urls:
        response = session.post(url, json=vcon, headers=headers)
        if response.status_code == 429 or response.status_code >= 500:
            response.raise_for_status()
        ctx.log.info("webhook: vCon %s to %s: %s", vcon["uuid"], url, response.status_code)
    return vcon
