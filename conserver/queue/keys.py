"""Every Redis key name conserver uses, in one place.

A :class:`KeyLayout` builds them from three prefixes: vcon-server's body prefix (``vcon:``)
and dead-letter prefix (``DLQ:``), and conserver's own namespace (``conserver:``). The queue's
Lua scripts spell no key name: they receive the layout's names and prefixes as KEYS and ARGV
(:meth:`KeyLayout.script_keys`, :meth:`KeyLayout.script_args`). The table of what each key
holds is in the package docstring (``conserver/queue/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyLayout:
    """The key names of one deployment. Producers (vcon-server) write ``{body_prefix}{uuid}``
    and read ``{dlq_prefix}{list}``, so those two must match theirs."""

    body_prefix: str = "vcon:"
    dlq_prefix: str = "DLQ:"
    namespace: str = "conserver:"

    # ------------------------------------------------------------------ single keys
    @property
    def deliveries(self) -> str:
        return self.namespace + "deliveries"

    @property
    def attempts(self) -> str:
        return self.namespace + "attempts"

    @property
    def delayed(self) -> str:
        return self.namespace + "delayed"

    @property
    def delayed_unreadable(self) -> str:
        """Where move_due puts a delayed member it cannot parse (kept, not dropped)."""
        return self.delayed + ":unreadable"

    @property
    def fence(self) -> str:
        """The fencing counter: every claim takes the next token (claims.py, WorkerClaims)."""
        return self.namespace + "fence"

    @property
    def inflight(self) -> str:
        return self.namespace + "inflight"

    @property
    def workers(self) -> str:
        return self.namespace + "workers"

    @property
    def errors(self) -> str:
        return self.namespace + "errors"

    @property
    def readiness(self) -> str:
        """The monitors' /readyz write probe, a key that expires: Redis must accept writes."""
        return self.namespace + "readyz"

    # ------------------------------------------------------------------ families: prefix + name
    @property
    def dlq_meta_infix(self) -> str:
        return ":meta:"

    @property
    def processing_prefix(self) -> str:
        return self.namespace + "processing:"

    @property
    def stored_prefix(self) -> str:
        return self.namespace + "stored:"

    @property
    def heartbeat_prefix(self) -> str:
        return self.namespace + "worker:"

    @property
    def claim_token_prefix(self) -> str:
        return self.namespace + "claim:"

    @property
    def tenant_prefix(self) -> str:
        return self.namespace + "tenant:"

    @property
    def bucket_prefix(self) -> str:
        return self.namespace + "bucket:"

    def body(self, uuid: str) -> str:
        return self.body_prefix + uuid

    def dlq(self, list_name: str) -> str:
        return self.dlq_prefix + list_name

    def dlq_meta(self, list_name: str, item_id: str) -> str:
        return self.dlq_prefix + list_name + self.dlq_meta_infix + item_id

    def processing(self, worker_id: str, list_name: str) -> str:
        return f"{self.processing_prefix}{worker_id}:{list_name}"

    def stored(self, uuid: str) -> str:
        return self.stored_prefix + uuid.lower()

    def heartbeat(self, worker_id: str) -> str:
        return self.heartbeat_prefix + worker_id

    def claim_token(self, worker_id: str) -> str:
        return self.claim_token_prefix + worker_id

    def leader(self, name: str) -> str:
        return self.namespace + "leader:" + name

    def tenant(self, part: str) -> str:
        """``part`` is already made key-safe (conserver.limits.key_part)."""
        return self.tenant_prefix + part

    def bucket(self, part: str) -> str:
        return self.bucket_prefix + part

    # ------------------------------------------------------------------ what every queue script gets
    def script_keys(self) -> list[str]:
        """KEYS[1..4] of every queue script (scripts/common.lua takes them off)."""
        return [self.deliveries, self.attempts, self.inflight, self.workers]

    def script_args(self) -> list[str]:
        """ARGV[1..6] of every queue script: the prefixes it builds per-item key names from."""
        return [self.body_prefix, self.dlq_prefix, self.dlq_meta_infix, self.stored_prefix,
                self.heartbeat_prefix, self.claim_token_prefix]


DEFAULT_KEYS = KeyLayout()
