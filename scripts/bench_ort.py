#!/usr/bin/env python3
"""Inference latency of folded models (docs/benchmarks.md, "Inference"): for every corpus case
with a reference merged export, ONNX Runtime (CPU, 1 thread, default optimizations) latency of
the unmerged export, PyTorch's reference merge and graft's fold, timed alternately in one run.

    .venv/bin/python scripts/bench_ort.py [--iters 200] [--rounds 5]

Reports medians and the ratios folded/merged (target within 1.03) and folded/unmerged.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(sess, feeds, iters):
    for _ in range(10):
        sess.run(None, feeds)
    t = time.perf_counter()
    for _ in range(iters):
        sess.run(None, feeds)
    return (time.perf_counter() - t) / iters * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    graft = os.path.join(ROOT, "target/release/graft")
    out_dir = os.path.join(ROOT, "target/bench/ort")
    os.makedirs(out_dir, exist_ok=True)
    manifest = json.load(open(os.path.join(ROOT, "models/manifest.json")))
    print(f"ONNX Runtime {ort.__version__}, CPU, 1 thread; microseconds per run, median of "
          f"{args.rounds} rounds x {args.iters} runs, the three models alternating\n")
    print("| case | unmerged | reference merged | graft fold | fold/merged | fold/unmerged |")
    print("|---|---|---|---|---|---|")
    for case in manifest["cases"]:
        if case.get("foldable") is not True:
            continue
        files = case["files"]
        for exp in ("ts", "dynamo"):
            u, m = files.get(f"unmerged_{exp}"), files.get(f"merged_{exp}")
            if not u or not m:
                continue
            u, m = os.path.join(ROOT, "models", u), os.path.join(ROOT, "models", m)
            f = os.path.join(out_dir, f"{case['case']}.{exp}.onnx")
            subprocess.run([graft, "fold", u, "-o", f], check=True, capture_output=True)
            data = np.load(os.path.join(ROOT, "models", files["inputs"]))
            sessions = [session(p) for p in (u, m, f)]
            feeds = {i.name: data[i.name] for i in sessions[0].get_inputs()}
            times = [[], [], []]
            for _ in range(args.rounds):
                for k, s in enumerate(sessions):
                    times[k].append(bench(s, feeds, args.iters))
            tu, tm, tf = (statistics.median(t) for t in times)
            print(f"| {case['case']}.{exp} | {tu:.1f} | {tm:.1f} | {tf:.1f} | {tf / tm:.3f} | {tf / tu:.3f} |")


if __name__ == "__main__":
    main()
