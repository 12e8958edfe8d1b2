"""Charts of the latest results, as PNGs next to RESULTS.md (matplotlib, Agg backend).

    .venv/bin/python -m benchmarks plot

Reads benchmarks/out/*.json and draws what is there; a missing JSON skips its chart:

* scaling.png   vCons/s against workers, with the linear ideal from 1 worker
* fanout.png    fan-out results (out/fanout.json, written by a fan-out benchmark): one bar
                per row of its "rows" / "results" / "points" list, labelled by the first
                text field and sized by the first rate field (vcons_per_s, rate, ...)
* queue.png     jobs/s of conserver and its peers (log scale)
* memory.png    PSS of the tree against workers, per start method
* lifecycle.png replacement and requeue times per start method
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import BENCH_DIR, log, read_json, update_results

RATE_KEYS = ("vcons_per_s", "vcons_s", "rate", "throughput", "per_s", "vcons/s", "jobs_per_s")
LABEL_KEYS = ("label", "system", "config", "stores", "name", "mode", "case", "store", "client")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, data: dict[str, Any], name: str, bottom: float) -> str:
    """Footer, layout, benchmarks/{name}.png; returns the file's name."""
    _footer(fig, data)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = BENCH_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _footer(fig, data: dict[str, Any]) -> None:
    m = data.get("machine", {})
    fig.text(0.01, 0.01, f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}, "
                         f"{m.get('date', '')}", fontsize=7, color="gray")


def plot_scaling(plt) -> str | None:
    data = read_json("scaling")
    if not data or not data.get("points"):
        return None
    pts = sorted(data["points"], key=lambda p: p["workers"])
    xs = [p["workers"] for p in pts]
    ys = [p["rate"] for p in pts]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(xs, ys, "o-", label="conserver, null store")
    one = next((p["rate"] for p in pts if p["workers"] == 1), None)
    if one:
        ax.plot(xs, [one * x for x in xs], "--", color="gray", label="linear from 1 worker")
    ax.set_xlabel("workers")
    ax.set_ylabel("vCons/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    ax2.plot(xs, [p["redis_core_share"] * 100 for p in pts], "s-", color="tab:red", label="redis-server, % of one core")
    if one:
        ax2.plot(xs, [p["rate"] / one / p["workers"] * 100 for p in pts], "o-", color="tab:green",
                 label="efficiency: speed-up / workers, %")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set_ylim(0, 110)
    ax2.set_xlabel("workers")
    ax2.set_title("Efficiency and the Redis ceiling")
    ax2.grid(alpha=0.3)
    ax2.legend()
    return _save(plt, fig, data, "scaling", bottom=0.04)


def _rows(data: Any) -> list[dict]:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("rows", "results", "points", "cases"):
            v = data.get(key)
            if isinstance(v, list):
                return [r for r in v if isinstance(r, dict)]
            if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
                return [{"label": k, **x} for k, x in v.items()]
    return []


def _bars(ax, rows: list[dict], title: str) -> bool:
    label_key = next((k for k in LABEL_KEYS if any(isinstance(r.get(k), str) for r in rows)), None)
    rate_key = next((k for k in RATE_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)), None)
    if rate_key is None:
        return False
    labels = []
    for i, r in enumerate(rows):
        label = str(r.get(label_key, i)) if label_key else str(i)
        if isinstance(r.get("operation"), str):
            label += f" ({r['operation']})"
        labels.append(label)
    values = [float(r.get(rate_key) or 0) for r in rows]
    ax.barh(labels, values, color=["tab:orange" if "conserver" in x else "tab:blue" for x in labels])
    ax.invert_yaxis()
    ax.set_xlabel(f"{rate_key} (per second)")
    ax.set_title(title)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return True


def plot_fanout(plt) -> str | None:
    """Either a list of rows (rows/results/points/cases), or benchmarks/fanout.py's layout:
    ``baseline`` and ``conserver`` results plus the ``bare_clients`` store-client figures."""
    data = read_json("fanout")
    if not data:
        return None
    panels: list[tuple[list[dict], str]] = []
    rows = _rows(data)
    if rows:
        panels.append((rows, "Fan-out"))
    elif isinstance(data, dict):
        ends = [data[k] for k in ("baseline", "conserver") if isinstance(data.get(k), dict)]
        # benchmarks/fanout.py: rounds = {system key: [round, ...]}; plot each system's best round
        for rounds in (data.get("rounds") or {}).values():
            verified = [r for r in rounds if isinstance(r, dict) and isinstance(r.get("rate"), (int, float))]
            if verified:
                best = max(verified, key=lambda r: r["rate"])
                ends.append({**best, "label": best.get("system", best.get("label", "?"))})
        if ends:
            panels.append((ends, "End-to-end fan-out, vCons/s"))
        bare = [r for r in data.get("bare_clients") or [] if isinstance(r, dict)]
        if bare:
            panels.append((bare, "Store clients alone"))
    if not panels:
        log("fanout.json has nothing to plot; skipped")
        return None
    height = max(len(r) for r, _ in panels) * 0.5 + 1.8
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), height), squeeze=False)
    drawn = [_bars(ax, r, t) for ax, (r, t) in zip(axes[0], panels)]
    if not any(drawn):
        plt.close(fig)
        log("fanout.json has no rate field to plot; skipped")
        return None
    _footer(fig, data if isinstance(data, dict) else {})
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = BENCH_DIR / "fanout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_queue(plt) -> str | None:
    data = read_json("queue")
    if not data or not data.get("results"):
        return None
    from benchmarks.queue_peers import LABELS

    items = [(LABELS.get(n, n), r["rate"]) for n, r in data["results"].items()
             if isinstance(r.get("rate"), (int, float)) and r["rate"] == r["rate"]]
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(items) + 1.8))
    colors = ["tab:orange" if name == "conserver" else ("tab:gray" if "bare" in name else "tab:blue")
              for name, _ in items]
    ax.barh([n for n, _ in items], [v for _, v in items], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("jobs/s (log scale), 2 worker processes each")
    ax.set_title(f"Queue machinery, {data.get('jobs', '?'):,} jobs")
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, data, "queue", bottom=0.05)


def plot_memory(plt) -> str | None:
    data = read_json("memory")
    if not data or not data.get("results"):
        return None
    sets = data["results"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.2), squeeze=False)
    for ax, (stores, by_method) in zip(axes[0], sets.items()):
        for m, by_n in by_method.items():
            xs = sorted(int(n) for n in by_n)
            ax.plot(xs, [by_n[str(n)]["total_pss"] if str(n) in by_n else by_n[n]["total_pss"] for n in xs], "o-",
                    label=f"{m} ({data['slopes_mb'][stores][m]:.1f} MB/worker)")
        ax.set_xlabel("workers")
        ax.set_ylabel("PSS of the whole tree, MB")
        ax.set_title("null store" if stores == "null" else "postgres + s3 + elasticsearch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, data, "memory", bottom=0.04)


def plot_lifecycle(plt) -> str | None:
    data = read_json("lifecycle")
    if not data or not data.get("results"):
        return None
    from benchmarks.common import percentile

    res = data["results"]
    methods = list(res)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(methods))
    for off, p, color in ((-0.2, 50, "tab:blue"), (0.2, 99, "tab:orange")):
        ax.bar([i + off for i in x], [percentile(res[m]["replacement"]["to_idle"], p) * 1000 for m in methods],
               width=0.4, color=color, label=f"p{p}")
        ax2.bar([i + off for i in x], [percentile(res[m]["requeue"]["times"], p) * 1000 for m in methods],
                width=0.4, color=color, label=f"p{p}")
    ax.axhline(100, color="red", ls="--", lw=1, label="target p99 (fork)")
    ax2.axhline(1000, color="red", ls="--", lw=1, label="target")
    for a, t in ((ax, "kill -9 -> replacement idle (ms)"), (ax2, "kill -9 -> batch back in the list (ms)")):
        a.set_xticks(list(x), methods)
        a.set_title(t)
        a.set_yscale("log")
        a.grid(axis="y", alpha=0.3)
        a.legend()
    return _save(plt, fig, data, "lifecycle", bottom=0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    plt = _plt()
    made, skipped = [], []
    for name, fn in (("scaling", plot_scaling), ("fanout", plot_fanout), ("queue", plot_queue),
                     ("memory", plot_memory), ("lifecycle", plot_lifecycle)):
        try:
            out = fn(plt)
        except Exception as exc:  # one odd JSON must not cost the other charts
            log(f"{name}: not plotted ({type(exc).__name__}: {exc})")
            out = None
        (made if out else skipped).append(out or name)
    for m in made:
        log(f"wrote benchmarks/{m}")
    if skipped:
        log(f"no data for: {', '.join(skipped)} (run those benchmarks first)")
    body = "## Charts\n\nCommand: `.venv/bin/python -m benchmarks plot` (from benchmarks/out/*.json)\n\n"
    body += "\n".join(f"![{m}]({m})" for m in made) + "\n"
    if skipped:
        body += f"\nNot drawn (no results yet): {', '.join(skipped)}.\n"
    update_results("plot", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
