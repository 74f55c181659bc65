"""Print the kzoo-vs-peer markdown tables of a results file (JSON lines).

Usage:
    python -m benchmarks.compare benchmarks/results/2026-11-25.jsonl

Reads kzoo rows (`"framework": "kzoo"`, from `benchmarks.run`) and peer rows
(from `benchmarks.peers`, recognised by `torch_version`) of ONE sitting and
prints:

1. the main table: per workload, kzoo's and the peer's items/s (median over the
   runs of each run's median step; best = fastest single step of all runs), the
   ratio of medians (kzoo items/s / peer items/s), % of peak (median step; one
   denominator for both sides: kzoo's fastest matmul_peak step in the file) and
   the jit setting of the kzoo figure. kzoo's figure is its faster jit setting
   by median.
2. the jit table: kzoo items/s per `jit_compile` setting, or why one failed.
3. the load table: worst `loadavg_before`, lowest `cpu_util` and highest
   `others_cpu_per_s` of each side's runs, so contaminated runs are visible.
4. the peak-memory table of `"kind": "peak_memory"` rows (dit_train_memory),
   which time nothing and are left out of the tables above.

Rows timed in bfloat16 (`benchmarks.run --precision mixed_bfloat16`, the peers
with `--precision autocast_bfloat16`) are their own workload, `NAME (bf16)`,
compared only with each other.
"""

import argparse
import json
import statistics
import sys

ORDER = (
    "matmul_peak",
    "vq_fwd_bwd",
    "vq_fwd_bwd_ste",
    "vq_learnable",
    "unet_train",
    "unet_sample",
    "unet_sample_b1",
    "dit_train",
    "vqmodel_train",
)
MEMORY_KIND = "peak_memory"


def load_rows(path):
    """Rows of a JSON-lines file, skipping blank lines."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def side(row):
    """'kzoo' or 'peer' for a result row."""
    if row.get("framework") == "kzoo":
        return "kzoo"
    if "torch_version" in row or row.get("framework") not in (None, "kzoo"):
        return "peer"
    raise ValueError(f"Row is neither kzoo's nor a peer's. Received: row keys={sorted(row)}")


BF16_PRECISIONS = ("mixed_bfloat16", "autocast_bfloat16")


def workload_key(row):
    """The table row of a result: its workload, with " (bf16)" for bfloat16 runs."""
    if row.get("precision") in BF16_PRECISIONS:
        return f"{row['workload']} (bf16)"
    return row["workload"]


def _ok(row):
    return row.get("status", "ok") == "ok" and row.get("median_s_per_step")


def summarize(rows):
    """Collect per workload: the kzoo runs per jit setting, the peer runs, the failures.

    Args:
        rows: result rows (dicts) of one sitting.

    Returns:
        dict workload -> {"kzoo": {jit: [rows]}, "peer": [rows], "failed": {jit: error}}.
    """
    out = {}
    for row in rows:
        if row.get("kind") == MEMORY_KIND:
            continue
        entry = out.setdefault(workload_key(row), {"kzoo": {}, "peer": [], "failed": {}})
        if side(row) == "peer":
            if _ok(row):
                entry["peer"].append(row)
        elif _ok(row):
            entry["kzoo"].setdefault(row.get("jit_compile"), []).append(row)
        else:
            entry["failed"][row.get("jit_compile")] = row.get("error", "failed")
    return out


def sitting_peak(rows):
    """The sitting's 100%: kzoo's fastest matmul_peak step, else the peak the rows used."""
    best = [
        r["flops_per_step"] / r["min_s_per_step"]
        for r in rows
        if r["workload"] == "matmul_peak" and side(r) == "kzoo" and _ok(r)
    ]
    if best:
        return max(best)
    used = [r["peak_flops_per_s_used"] for r in rows if r.get("peak_flops_per_s_used")]
    return max(used) if used else None


def aggregate(runs, peak_flops=None):
    """Median step over runs, best step, items/s and % of peak of a list of rows.

    The median of the runs' median step times (for two runs: their mean) gives
    `items_per_s`; the fastest single step of all runs gives `items_per_s_best`;
    `pct_of_peak` is the median step's FLOP/s over `peak_flops`.
    """
    items = runs[0]["items_per_step"]
    median_s = statistics.median(r["median_s_per_step"] for r in runs)
    best_s = min(r["min_s_per_step"] for r in runs)
    flops = runs[0].get("flops_per_step")
    pct = 100.0 * flops / median_s / peak_flops if flops and peak_flops else None
    return {
        "runs": len(runs),
        "median_s": median_s,
        "items_per_s": items / median_s,
        "items_per_s_best": items / best_s,
        "per_run_items_per_s": [r["items_per_s"] for r in runs],
        "gflops_per_s": flops / median_s / 1e9 if flops else None,
        "pct_of_peak": pct,
    }


def _fmt(value, digits=None):
    if value is None:
        return "-"
    if digits is None:
        digits = 0 if value >= 100 else (1 if value >= 10 else 2)
    return f"{value:,.{digits}f}"


def _runs(stats):
    return " / ".join(_fmt(v) for v in stats["per_run_items_per_s"])


def _pct(stats):
    if stats["pct_of_peak"] is None:
        return "-"
    return f"{stats['pct_of_peak']:.1f}% ({stats['gflops_per_s']:.0f} GFLOP/s)"


def best_jit(kzoo_runs, peak_flops=None):
    """The jit setting with the higher aggregated items/s, and its stats."""
    stats = {jit: aggregate(runs, peak_flops) for jit, runs in kzoo_runs.items()}
    jit = max(stats, key=lambda j: stats[j]["items_per_s"])
    return jit, stats


def tables(rows):
    """The three markdown tables (a string) for the rows of one sitting."""
    data = summarize(rows)
    peak = sitting_peak(rows)
    order = [key for name in ORDER for key in (name, f"{name} (bf16)")]
    names = [n for n in order if n in data] + sorted(n for n in data if n not in order)
    header = (
        f"100% of peak = {peak / 1e9:.0f} GFLOP/s (kzoo's fastest matmul_peak step in this file)"
        if peak
        else "no peak in this file"
    )
    lines = [
        header,
        "",
        "| workload | kzoo items/s (runs) | peer items/s (runs) | ratio of medians | "
        "kzoo best | peer best | kzoo % of peak | peer % of peak | kzoo jit_compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    jit_lines = [
        "| workload | jit_compile=False items/s | jit_compile=True items/s | faster |",
        "|---|---|---|---|",
    ]
    load_lines = [
        "| workload | side | runs | max load1 before | min cpu_util | max others_cpu_per_s |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        entry = data[name]
        kzoo, peer = None, None
        jit, stats = (None, {})
        if entry["kzoo"]:
            jit, stats = best_jit(entry["kzoo"], peak)
            kzoo = stats[jit]
        if entry["peer"]:
            peer = aggregate(entry["peer"], peak)
        ratio = kzoo["items_per_s"] / peer["items_per_s"] if kzoo and peer else None
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name,
                f"{_fmt(kzoo['items_per_s'])} ({_runs(kzoo)})" if kzoo else "-",
                f"{_fmt(peer['items_per_s'])} ({_runs(peer)})" if peer else "-",
                f"**{ratio:.2f}x**" if ratio else "-",
                _fmt(kzoo["items_per_s_best"]) if kzoo else "-",
                _fmt(peer["items_per_s_best"]) if peer else "-",
                _pct(kzoo) if kzoo else "-",
                _pct(peer) if peer else "-",
                jit if kzoo else "-",
            )
        )
        cells = []
        for setting in (False, True):
            if setting in stats:
                cells.append(_fmt(stats[setting]["items_per_s"]))
            elif setting in entry["failed"]:
                cells.append(f"failed: {entry['failed'][setting][:90]}")
            else:
                cells.append("not run")
        faster = str(jit) if len(stats) == 2 else (f"{jit} (only one ran)" if stats else "-")
        jit_lines.append(f"| {name} | {cells[0]} | {cells[1]} | {faster} |")
        for label, runs in [("kzoo", [r for rs in entry["kzoo"].values() for r in rs])] + [
            ("peer", entry["peer"])
        ]:
            if not runs:
                continue
            loads = [float(r["loadavg_before"].split()[0]) for r in runs if r.get("loadavg_before")]
            others = [r["others_cpu_per_s"] for r in runs if r.get("others_cpu_per_s") is not None]
            load_lines.append(
                f"| {name} | {label} | {len(runs)} | {_fmt(max(loads), 2) if loads else '-'} | "
                f"{_fmt(min(r['cpu_util'] for r in runs), 2)} | "
                f"{_fmt(max(others), 2) if others else '-'} |"
            )
    text = "\n".join(lines) + "\n\n" + "\n".join(jit_lines) + "\n\n" + "\n".join(load_lines)
    memory = memory_table(rows)
    return text + "\n\n" + memory if memory else text


def memory_table(rows):
    """Markdown table of the peak-memory rows (one line per row and setting), or ''."""
    lines = [
        "| workload | jit_compile | setting | device | peak RSS MiB | RSS after build MiB | "
        "peak - build MiB | device peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    memory_rows = [r for r in rows if r.get("kind") == MEMORY_KIND and r.get("status") == "ok"]
    for row in memory_rows:
        for name, setting in row["settings"].items():
            cells = [
                setting.get(key)
                for key in (
                    "peak_rss_bytes",
                    "rss_after_build_bytes",
                    "peak_minus_build_bytes",
                    "device_peak_bytes",
                )
            ]
            mib = [_fmt(v / 2**20, 0) if v is not None else "-" for v in cells]
            lines.append(
                f"| {row['workload']} | {row.get('jit_compile')} | {name} | "
                f"{setting.get('device', '-')} | {' | '.join(mib)} |"
            )
    return "\n".join(lines) if memory_rows else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON-lines file of one sitting")
    args = parser.parse_args(argv)
    sys.stdout.write(tables(load_rows(args.results)) + "\n")


if __name__ == "__main__":
    main()
