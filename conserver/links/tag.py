"""``links.tag``: add each of ``tags`` to the vCon as ``"tag:tag"`` in its tags attachment.

vcon-server: conserver/links/tag/__init__.py (b9b0381) calls ``vCon.add_tag(tag_name=tag,
tag_value=tag)`` for every tag, so the name is also the value. Its ``default_options`` says
``["iron", "maiden"]``, but its main loop always passes the options of config.yml, where a
missing ``tags`` means none (``opts.get("tags", [])``); the default here is that.
"""

from __future__ import annotations

from conserver.links.parts import add_tag

default_options = {"tags": []}


def run(vcon: dict, ctx, options: dict) -> dict:
    for tag in options.get("tags") or []:
        add_tag(vcon, tag, tag)
    return vcon
