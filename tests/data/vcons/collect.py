"""Rebuild the published part of the vCon corpus (see README.md here) from git mirrors.

    python tests/data/vcons/collect.py CORE_GIT CC_GIT MEETINGS_GIT

CORE_GIT, CC_GIT and MEETINGS_GIT are clones (bare is fine) of
github.com/ietf-wg-vcon/draft-ietf-vcon-vcon-core, .../draft-ietf-vcon-cc-extension and
github.com/vcon-dev/ietf-meeting-vcons. The files are copied byte for byte; MANIFEST.json
gets each file's sources (repository, path, commit, revision) and the verdict of
verdicts.py. Standard library only; needs git on PATH.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from verdicts import read_manifest, write_manifest  # noqa: E402

CORE_REPO = "ietf-wg-vcon/draft-ietf-vcon-vcon-core"
CC_REPO = "ietf-wg-vcon/draft-ietf-vcon-cc-extension"
MEETINGS_REPO = "vcon-dev/ietf-meeting-vcons"
# The published revisions of the core draft (the container draft was its name until 2025).
CORE_REVISIONS = ("draft-vcon-vcon-container-00", "draft-ietf-vcon-vcon-container-00",
                  "draft-ietf-vcon-vcon-container-01", "draft-ietf-vcon-vcon-container-02",
                  "draft-ietf-vcon-vcon-container-03", "draft-ietf-vcon-vcon-core-00",
                  "draft-ietf-vcon-vcon-core-01", "draft-ietf-vcon-vcon-core-02", "draft-ietf-vcon-vcon-core-03")
CC_REVISIONS = ("draft-ietf-vcon-cc-extension-00", "draft-ietf-vcon-cc-extension-01", "draft-ietf-vcon-cc-extension-02")
# Examples above this size are kept from their first and their latest revision only, and
# those above MAX_BYTES not at all (inline recordings and long analyses: the corpus stays small).
LARGE_BYTES, MAX_BYTES = 8_000, 20_000
MEETING_MAX_BYTES = 5_000  # one small vCon with a dialog per meeting


def git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, check=True).stdout


def draft_examples(repo: str, name: str, revisions: tuple[str, ...], blobs: dict) -> None:
    """blob id -> {"path", "size", "sources": [...]}, every revision's examples/*.vcon."""
    for rev in revisions:
        commit = git(repo, "rev-parse", f"{rev}^{{commit}}").decode().strip()
        for line in git(repo, "ls-tree", "-r", "-l", commit, "examples/").decode().splitlines():
            meta, path = line.split("\t")
            blob, size = meta.split()[2], int(meta.split()[3])
            if path.endswith(".vcon"):
                entry = blobs.setdefault(blob, {"repo_dir": repo, "path": path, "size": size, "sources": []})
                entry["sources"].append({"repo": name, "path": path, "commit": commit, "revision": rev})


def keep(blob: str, entry: dict, blobs: dict) -> bool:
    if entry["size"] > MAX_BYTES:
        return False
    if entry["size"] <= LARGE_BYTES:
        return True
    # first and latest by the core draft's revisions (the cc draft copies the core's examples)
    order = {rev: i for i, rev in enumerate(CORE_REVISIONS)}

    def revisions(e: dict) -> list[int]:
        return [order[s["revision"]] for s in e["sources"] if s["revision"] in order] or [-1]

    same = [e for e in blobs.values() if e["path"] == entry["path"] and e["size"] <= MAX_BYTES]
    first = min(same, key=lambda e: min(revisions(e)))
    last = max(same, key=lambda e: max(revisions(e)))
    return entry is first or entry is last


def meeting_sample(repo: str) -> list[tuple[str, str, bytes]]:
    commit = git(repo, "rev-parse", "HEAD").decode().strip()
    chosen: dict[str, tuple[str, str, bytes]] = {}
    for line in git(repo, "ls-tree", "-r", "-l", commit).decode().splitlines():
        meta, path = line.split("\t")
        meeting, size = path.split("/")[0], int(meta.split()[3])
        if not path.endswith(".vcon.json") or size > MEETING_MAX_BYTES or meeting in chosen:
            continue
        raw = git(repo, "cat-file", "blob", meta.split()[2])
        if json.loads(raw).get("dialog"):
            chosen[meeting] = (commit, path, raw)
    return [chosen[m] for m in sorted(chosen)]


def main(core: str, cc: str, meetings: str) -> None:
    manifest = [e for e in read_manifest() if e["file"].startswith("vcon-lib/")]
    blobs: dict[str, dict] = {}
    draft_examples(core, CORE_REPO, CORE_REVISIONS, blobs)
    draft_examples(cc, CC_REPO, CC_REVISIONS, blobs)
    for folder in ("draft-examples", "ietf-meeting-vcons"):
        for old in (HERE / folder).glob("*.json"):
            old.unlink()
    for blob, entry in sorted(blobs.items(), key=lambda kv: (kv[1]["path"], kv[1]["sources"][0]["revision"])):
        if not keep(blob, entry, blobs):
            continue
        first = entry["sources"][0]
        name = f"draft-examples/{first['revision'].removeprefix('draft-')}_{Path(entry['path']).stem}.json"
        write(name, git(entry["repo_dir"], "cat-file", "blob", blob))
        manifest.append({"file": name, "sources": entry["sources"]})
    for commit, path, raw in meeting_sample(meetings):
        name = f"ietf-meeting-vcons/{Path(path).name}"
        write(name, raw)
        manifest.append({"file": name, "sources": [{"repo": MEETINGS_REPO, "path": path, "commit": commit}]})
    write_manifest(manifest)


def write(name: str, raw: bytes) -> None:
    (HERE / name).parent.mkdir(exist_ok=True)
    (HERE / name).write_bytes(raw)


if __name__ == "__main__":
    main(*sys.argv[1:4])
