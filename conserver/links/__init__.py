"""Links: steps of a vcon-server chain that transform a vCon before it is stored.

A link takes a vCon and returns it (changed or not), a vCon with another uuid, or nothing
(the chain halts). Its protocol is in ``base.py``; ``docs/links.md`` is the user's guide.
::

    config.yml  links.NAME: {module, options}
        │  configure_link()            (main process, before fork: import, check, merge options,
        ▼                               parse the ``conserver:`` policy; LinkLoadError -> exit 2)
    LinkSpec ── fork ──▶ LinkRunner(spec, redis)     (worker: bucket, breaker, pool, sessions)
                            │ run(vcon) per vCon, under the policy: deadline, retries,
                            ▼ shared rate limit, circuit breaker
                        link.run(copy of vcon, LinkContext, options) -> vcon | None
                            │
                            └─▶ run_links(runners, vcon): in order; None halts; LinkFailed

Modules: ``base`` (protocol, errors), ``policy`` (the ``conserver:`` options), ``loader``
(built-in / entry point / import path), ``context`` (what a link may use), ``runner`` (the
policy applied), ``parts`` and ``chat_api`` (shared by built-ins), and one module per
built-in under vcon-server's names: tag, sampler, jq_link, expire_vcon, tag_router,
webhook, diet, analyze.
"""

from conserver.links.base import Link, LinkFailed, LinkLoadError, TransientError
from conserver.links.context import LinkContext
from conserver.links.loader import BUILTIN_LINKS, ENTRY_POINT_GROUP, LinkSpec, configure_link, load_link
from conserver.links.policy import POLICY_KEY, LinkPolicy
from conserver.links.runner import LinkRunner, LinksOutcome, is_transient, run_links

__all__ = ["BUILTIN_LINKS", "ENTRY_POINT_GROUP", "POLICY_KEY", "Link", "LinkContext", "LinkFailed", "LinkLoadError",
           "LinkPolicy", "LinkRunner", "LinkSpec", "LinksOutcome", "TransientError", "configure_link",
           "is_transient", "load_link", "run_links"]
