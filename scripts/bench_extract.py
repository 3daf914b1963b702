#!/usr/bin/env python3
"""Extraction benchmark (docs/benchmarks.md, "Extraction").

    .venv/bin/python scripts/bench_extract.py [--runs 5] [--work target/bench]

Builds a base model with one 4096x4096 MatMul weight and a tuned copy whose weight moved by an
exactly rank-16 delta plus 1e-3 noise, then times `graft extract base tuned --rank 16` (release
build; the end-to-end check that applies the adapter and runs both models is on, as by
default, and once more with --no-verify). Medians of --runs, side by side with `cp` of the two
files in the same run.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(w, path):
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="/proj/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
        [numpy_helper.from_array(w, "proj.weight")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.save(m, path)


def timed(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench"))
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=16)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = np.random.default_rng(0)
    n = a.n
    w = (rng.standard_normal((n, n)) * 0.02).astype(np.float32)
    d = (rng.standard_normal((n, a.rank)) @ rng.standard_normal((a.rank, n))) * 0.01 / np.sqrt(a.rank)
    d += rng.standard_normal((n, n)) * 1e-3 * 0.01
    base, tuned = os.path.join(a.work, "ex_base.onnx"), os.path.join(a.work, "ex_tuned.onnx")
    model(w, base)
    model((w + d).astype(np.float32), tuned)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    graft = os.path.join(ROOT, "target", "release", "graft")
    out = os.path.join(a.work, "ex_adapter")
    cmds = {
        "cp (both files)": ["sh", "-c", f'cp "{base}" "{a.work}/cp_b.onnx"; cp "{tuned}" "{a.work}/cp_t.onnx"'],
        f"graft extract --rank {a.rank}": [graft, "extract", base, tuned, "--rank", str(a.rank), "-o", out],
        f"graft extract --rank {a.rank} --no-verify": [graft, "extract", base, tuned, "--rank", str(a.rank), "--no-verify", "-o", out],
    }
    times = {k: [] for k in cmds}
    for _ in range(a.runs):
        for k, c in cmds.items():
            times[k].append(timed(c))
    ref = statistics.median(times["cp (both files)"])
    print(f"{n}x{n} weight, exact rank-{a.rank} delta + noise, {a.runs} runs, medians:")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"  {k:<40} {m:7.3f} s  ({m / ref:6.1f}x cp)")


if __name__ == "__main__":
    main()
