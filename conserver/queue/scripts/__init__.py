"""The queue's Lua scripts, one ``.lua`` file each, and the one way to run them.

Every script of the queue protocol runs as ``common.lua`` followed by its own file; the
prelude takes the key layout (``KeyLayout.script_keys`` / ``script_args``) off the front of
KEYS and ARGV, so no script spells a key name. The lock scripts need no layout and run as
written.

The files are read and hashed once per process, at import. Running a script is one EVALSHA;
only when the server does not know the script yet (first use, a restart, SCRIPT FLUSH) does
a SCRIPT LOAD precede it. Nothing is built per client or per queue object, so there is
nothing to register when one is made (redis-py's ``register_script`` builds an object per
call and pins its client).
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import Any, Sequence

import redis
from redis.exceptions import NoScriptError

from conserver.queue.keys import KeyLayout

_HERE = files(__package__)


class Script:
    """One Lua script: its text and SHA-1, run with EVALSHA on any client."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def _read(name: str) -> str:
    return _HERE.joinpath(f"{name}.lua").read_text(encoding="utf-8")


_COMMON = _read("common")
QUEUE_SCRIPTS: dict[str, Script] = {
    name: Script(name, _COMMON + "\n" + _read(name))
    for name in ("claim", "ack", "requeue_claims", "requeue_worker", "requeue_list", "dead_letter", "defer",
                 "move_due", "dlq_drain", "dlq_requeue_one")
}
LOCK_ACQUIRE = Script("lock_acquire", _read("lock_acquire"))
LOCK_RELEASE = Script("lock_release", _read("lock_release"))


class QueueScripts:
    """The queue scripts on one client with one key layout: ``run(name, keys, args)`` passes
    the layout in front of the script's own keys and arguments."""

    def __init__(self, client: redis.Redis, keys: KeyLayout):
        self.client = client
        self._keys = keys.script_keys()
        self._args = keys.script_args()

    def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return QUEUE_SCRIPTS[name](self.client, [*self._keys, *keys], [*self._args, *args])
