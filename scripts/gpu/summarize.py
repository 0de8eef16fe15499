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


def mean_batches(rows):
    """{concurrency: mean batch the engine formed} from a sweep CSV."""
    out = {}
    for r in rows or []:
        c, b = num(r.get("concurrency")), num(r.get("mean_batch"))
        if c is not None and b:
            out[int(c)] = round(b, 1)
    return out


def ceiling_at(ceiling, batch):
    """The ceiling's throughput at batch, interpolated in log2(batch)
    between the measured batch sizes; None outside them."""
    import math
    pts = sorted((b, t) for b, (t, _) in ceiling.items() if t)
    if not batch or not pts or batch < pts[0][0] or batch > pts[-1][0]:
        return None
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if b0 <= batch <= b1:
            w = (math.log2(batch) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
            return t0 + w * (t1 - t0)
    return pts[0][1]


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

    for name in ("selftest.json", "selftest-tf32.json"):
        if os.path.exists(p(name)):
            lines += [f"## Golden vectors on the GPU ({name})", "", "```json",
                      open(p(name)).read().strip()[:4000], "```", ""]

    dyn = read_csv(p("bench-dynamic.csv"))
    unb = read_csv(p("bench-unbatched.csv"))
    ceil = read_csv(p("ceiling.csv"))
    sd, su, sc = series(dyn, "concurrency"), series(unb, "concurrency"), series(ceil, "batch")
    batches = mean_batches(dyn)
    if sd or su:
        lines += ["## USE-Lite on the GPU: dynamic batching vs unbatched", "",
                  "| concurrency | dynamic /s | dynamic p99 ms | mean batch | % of ceiling at that batch "
                  "| unbatched /s | unbatched p99 ms | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in sorted(set(sd) | set(su)):
            d, u = sd.get(c, (None, None)), su.get(c, (None, None))
            ratio = f"{d[0] / u[0]:.1f}×" if d[0] and u[0] else ""
            b = batches.get(c)
            at = ceiling_at(sc, b)
            pct = f"{100 * d[0] / at:.0f} %" if d[0] and at else ""
            lines.append(f"| {c} | {d[0]} | {d[1]} | {b if b is not None else ''} | {pct} | {u[0]} | {u[1]} | {ratio} |")
        lines.append("")
    split = [r for r in dyn or [] if num(r.get("engine_batch_ms"))]
    if split:
        # Where a request's mean latency goes: the engine's own histograms
        # for its queue and its batch run; the rest is HTTP, JSON and the
        # load generator.
        lines += ["### Dynamic batching: where a request's time goes", "",
                  "| concurrency | mean ms | engine queue ms | batch run ms | rest ms |", "|---|---|---|---|---|"]
        for r in split:
            mean, q, b = num(r.get("mean_ms")), num(r.get("engine_queue_ms")) or 0, num(r.get("engine_batch_ms"))
            lines.append(f"| {r.get('concurrency')} | {mean:.2f} | {q:.2f} | {b:.2f} | {mean - q - b:.2f} |")
        lines.append("")
    for name in sorted(os.listdir(out)):
        if not (name.startswith("bench-dynamic-delay-") and name.endswith(".csv")):
            continue
        rows = read_csv(p(name))
        sx, bx = series(rows, "concurrency"), mean_batches(rows)
        delay = name[len("bench-dynamic-delay-"):-len(".csv")]
        lines += [f"### Dynamic batching with max_queue_delay {delay}", "",
                  "| concurrency | /s | p99 ms | mean batch | % of ceiling at that batch | ÷ unbatched |",
                  "|---|---|---|---|---|---|"]
        for c in sorted(sx):
            t, p99 = sx[c]
            at = ceiling_at(sc, bx.get(c))
            u = su.get(c, (None, None))[0]
            lines.append(f"| {c} | {t} | {p99} | {bx.get(c, '')} | {f'{100 * t / at:.0f} %' if t and at else ''} | "
                         f"{f'{t / u:.1f}×' if t and u else ''} |")
        lines.append("")
    if sc:
        best_bs, (best, _) = max(sc.items(), key=lambda kv: kv[1][0] or 0)
        lines += [f"In-process ceiling: {best} items/s (batch {best_bs}); the % column compares each point "
                  "with the ceiling interpolated at the mean batch the engine formed there."]
        if sd:
            top = max(v[0] or 0 for v in sd.values())
            lines += [f"Engine with dynamic batching at its best: {top} /s = "
                      f"{100 * top / best:.0f} % of the best ceiling (one text per request)."]
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
            lines += ["| batch | PyTorch items/s | PyTorch p99 ms | infergate in-process items/s | p99 ms | infergate ÷ PyTorch |",
                      "|---|---|---|---|---|---|"]
            for b in sorted(set(st) | set(so)):
                t, o = st.get(b, (None, None)), so.get(b, (None, None))
                ratio = f"{o[0] / t[0]:.2f}" if o[0] and t[0] else ""
                lines.append(f"| {b} | {t[0]} | {t[1]} | {o[0]} | {o[1]} | {ratio} |")
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

    for name, title in (("bench-dynamic.csv", "Raw: dynamic"), ("bench-mixed.csv", "Raw: dynamic, texts of mixed lengths"),
                        ("bench-inputs.csv", "Raw: dynamic, several texts per request"),
                        ("bench-unbatched.csv", "Raw: unbatched"), ("ceiling.csv", "Raw: ceiling")):
        rows = read_csv(p(name))
        if rows:
            lines += [f"## {title}", "", table(rows)]

    if os.path.exists(p("env.txt")):
        lines += ["## Environment the engine ran with", "", "```", open(p("env.txt")).read().strip(), "```"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
