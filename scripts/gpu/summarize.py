#!/usr/bin/env python3
"""Turns what gpu-check.sh left in OUT into summary.md (printed to stdout).

It reads the bench CSVs by column name, so it needs only that a sweep CSV
has a concurrency column, a ceiling CSV a batch_size column, and both a
throughput column (throughput*, *_per_s or rps) and a p99 column.
"""

import csv
import json
import os
import sys


def read_csv(path):
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows, *keys):
    """First column whose name contains one of keys, in order of keys."""
    if not rows:
        return None
    names = list(rows[0].keys())
    for k in keys:
        for n in names:
            if n and k in n.lower():
                return n
    return None


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def table(rows):
    if not rows:
        return "_(no data)_\n"
    names = list(rows[0].keys())
    out = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    out += ["| " + " | ".join(str(r.get(n, "")) for n in names) + " |" for r in rows]
    return "\n".join(out) + "\n"


def series(rows, key):
    """{key value: (throughput, p99)} for a sweep or ceiling CSV."""
    if not rows:
        return {}
    k = column(rows, key)
    t = column(rows, "throughput", "items_per_s", "per_s", "rps")
    p = column(rows, "p99")
    if not k or not t:
        return {}
    return {int(float(r[k])): (num(r[t]), num(r[p]) if p else None) for r in rows if num(r[k]) is not None}


def main():
    out = sys.argv[1]
    p = lambda *a: os.path.join(out, *a)
    lines = ["# infergate GPU check", ""]

    if os.path.exists(p("nvidia-smi.csv")):
        lines += ["## GPU", "", "```", open(p("nvidia-smi.csv")).read().strip(), "```", ""]

    lines += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    if os.path.exists(p("steps.txt")):
        for s in open(p("steps.txt")).read().splitlines():
            parts = (s.split("|", 3) + ["", "", ""])[:4]
            lines.append("| " + " | ".join(x.replace("|", "/") for x in parts) + " |")
    lines.append("")

    for name in ("selftest.json", "selftest-no-tf32.json"):
        if os.path.exists(p(name)):
            lines += [f"## Golden vectors on the GPU ({name})", "", "```json",
                      open(p(name)).read().strip()[:4000], "```", ""]

    dyn = read_csv(p("bench-dynamic.csv"))
    unb = read_csv(p("bench-unbatched.csv"))
    ceil = read_csv(p("ceiling.csv"))
    sd, su, sc = series(dyn, "concurrency"), series(unb, "concurrency"), series(ceil, "batch")
    if sd or su:
        lines += ["## USE-Lite on the GPU: dynamic batching vs unbatched", "",
                  "| concurrency | dynamic /s | dynamic p99 | unbatched /s | unbatched p99 | speed-up |",
                  "|---|---|---|---|---|---|"]
        for c in sorted(set(sd) | set(su)):
            d, u = sd.get(c, (None, None)), su.get(c, (None, None))
            ratio = f"{d[0] / u[0]:.1f}×" if d[0] and u[0] else ""
            lines.append(f"| {c} | {d[0]} | {d[1]} | {u[0]} | {u[1]} | {ratio} |")
        lines.append("")
    if sc:
        best_bs, (best, _) = max(sc.items(), key=lambda kv: kv[1][0] or 0)
        lines += [f"In-process ceiling: {best} items/s (batch {best_bs})."]
        if sd:
            top = max(v[0] or 0 for v in sd.values())
            lines += [f"Engine with dynamic batching at its best: {top} /s = "
                      f"{100 * top / best:.0f} % of the ceiling (one text per request)."]
        lines.append("")

    torch_all = read_csv(p("torch", "torch_bench.csv")) or []
    torch_rows = [r for r in torch_all if r.get("precision", "fp32") == "fp32"]
    tf32 = [r for r in torch_all if r.get("precision") == "tf32"]
    onnx_dyn = read_csv(p("bench-onnx-dynamic.csv"))
    onnx_ceil = read_csv(p("ceiling-onnx.csv"))
    if torch_rows or onnx_dyn or onnx_ceil:
        st, so = series(torch_rows, "batch"), series(onnx_ceil, "batch")
        lines += ["## Same BERT-shaped encoder: PyTorch vs infergate (onnx-gomlx on XLA)", ""]
        if st or so:
            lines += ["| batch | PyTorch items/s | PyTorch p99 ms | infergate in-process items/s | p99 |",
                      "|---|---|---|---|---|"]
            for b in sorted(set(st) | set(so)):
                t, o = st.get(b, (None, None)), so.get(b, (None, None))
                lines.append(f"| {b} | {t[0]} | {t[1]} | {o[0]} | {o[1]} |")
            lines.append("")
        for r in tf32:
            lines += [f"PyTorch with TF32 matmuls at batch {r['batch_size']}: {r['items_per_s']} items/s, "
                      f"p99 {r['p99_ms']} ms.", ""]
        if onnx_dyn:
            lines += ["infergate engine serving the ONNX export over HTTP:", "", table(onnx_dyn)]
        tj = p("torch", "torch_bench.json")
        if os.path.exists(tj):
            info = json.load(open(tj))
            lines += [f"PyTorch {info.get('torch')} / transformers {info.get('transformers')} on "
                      f"{info.get('gpu')}, fp32 (TF32 off), seq len {info.get('seq_len')}, "
                      f"model {info.get('model')}.", ""]
            for e in info.get("errors", []):
                lines.append(f"- error: `{e.strip().splitlines()[-1][:300]}`")
            lines.append("")

    samples = p("gpu-metrics-under-load.txt")
    if os.path.exists(samples):
        peak = {}
        for ln in open(samples):
            if ln.startswith("infergate_gpu_"):
                name, _, val = ln.rpartition(" ")
                metric = name.split("{")[0]
                v = num(val)
                if v is not None and v >= peak.get(metric, float("-inf")):
                    peak[metric] = v
        lines += ["## NVML gauges on /metrics under load (peak of 2 s samples)", ""]
        lines += [f"- `{k}` {v:g}" for k, v in sorted(peak.items())] or ["_(none seen)_"]
        smi = [ln.split(": ", 1)[1].strip() for ln in open(samples) if ln.startswith("# nvidia-smi: ")]
        if smi:
            lines += ["", "nvidia-smi at the same moments (index, util, memory used, power, temp, SM clock), last:",
                      "", f"    {smi[-1]}"]
        lines.append("")

    for name, title in (("bench-dynamic.csv", "Raw: dynamic"), ("bench-unbatched.csv", "Raw: unbatched"),
                        ("ceiling.csv", "Raw: ceiling")):
        rows = read_csv(p(name))
        if rows:
            lines += [f"## {title}", "", table(rows)]

    if os.path.exists(p("env.txt")):
        lines += ["## Environment the engine ran with", "", "```", open(p("env.txt")).read().strip(), "```"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
