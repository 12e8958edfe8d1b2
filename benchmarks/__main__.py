"""``python -m benchmarks NAME [options]``: run one benchmark (``all`` runs them in turn)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "queue": "benchmarks.queue_peers",
    "lifecycle": "benchmarks.lifecycle",
    "memory": "benchmarks.memory",
    "scaling": "benchmarks.scaling",
    "fanout": "benchmarks.fanout",  # end-to-end with real stores (benchmarks/fanout.py)
    "chains": "benchmarks.chains",  # a webhook link at 50 ms against vcon-server's loop
    "plot": "benchmarks.plot",
}
USAGE = "usage: python -m benchmarks {" + ",".join([*BENCHMARKS, "all"]) + "} [options]   (NAME --help for options)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__import__("benchmarks").__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        for n in ("queue", "fanout", "lifecycle", "memory", "scaling", "plot"):
            code = importlib.import_module(BENCHMARKS[n]).main(rest if n == "scaling" else [])
            if code:
                return code
        return 0
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[name]).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
