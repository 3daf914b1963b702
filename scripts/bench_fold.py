#!/usr/bin/env python3
"""Fold benchmark (docs/benchmarks.md, "Fold"): a >= 3 GiB GPT-2-shaped model with external data
and LoRA on every attention and MLP projection (models/make_big.py --lora 8).

    python3 scripts/bench_fold.py [--runs 3] [--work target/bench] [--tools-python PY]

Measures, alternating in one run, medians (each command timed together with the `sync` that
writes its output back to disk): `cp` of the model files, and
`graft fold big.onnx -o out/model.onnx --no-verify` (the model is over graft's 1 GiB whole-model
check limit), wall time and peak RSS. With --tools-python (a Python that has onnxsim and/or
onnxslim installed) it also runs those on the same file once each and records their time or
their failure.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_io import dir_bytes, fresh, generate, timed  # noqa: E402


def try_tool(cmd, timeout):
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + cmd, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"failed: timed out after {timeout} s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])
        msg = [l for l in last if not l[:1].isdigit()][-1:] or last[-1:]
        return f"failed (exit {r.returncode}): {msg[0][:160]}"
    wall, rss = r.stderr.strip().splitlines()[-1].split()
    return f"{float(wall):.1f} s, peak RSS {int(rss) / 1024:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(ROOT, "target/bench"))
    ap.add_argument("--tools-python", default=None)
    args = ap.parse_args()
    py = os.environ.get("GRAFT_PYTHON", os.path.join(ROOT, ".venv/bin/python"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    graft = os.path.join(ROOT, "target/release/graft")
    big = os.path.join(args.work, "big_lora")
    generate(py, big, ["--layers", "16", "--d", "2048", "--lora", "8"])
    size = dir_bytes(big)
    files = [os.path.join(big, f) for f in sorted(os.listdir(big))]
    cp_dir, out_dir = os.path.join(args.work, "cp"), os.path.join(args.work, "out")
    cp_t, cp_m, g_t, g_m = [], [], [], []
    for i in range(args.runs + 1):
        fresh(cp_dir)
        t, m = timed(["cp"] + files + [cp_dir])
        fresh(out_dir)
        gt, gm = timed([graft, "fold", os.path.join(big, "model.onnx"), "-o",
                        os.path.join(out_dir, "model.onnx"), "--no-verify"])
        if i:
            cp_t.append(t); cp_m.append(m); g_t.append(gt); g_m.append(gm)
    med = statistics.median
    print(f"## graft fold vs cp ({args.runs} runs each, alternating, medians)\n")
    print(f"Model: {size / 2**30:.2f} GiB, GPT-2-shaped, LoRA rank 8 on every attention and MLP "
          f"projection (models/make_big.py --layers 16 --d 2048 --lora 8)\n")
    print("| command | wall s | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| cp | {med(cp_t):.2f} | {med(cp_m):.0f} |")
    print(f"| graft fold --no-verify | {med(g_t):.2f} | {med(g_m):.0f} |")
    print(f"\nwall-time ratio graft/cp: {med(g_t) / med(cp_t):.2f} (target <= 2); "
          f"peak RSS {med(g_m):.0f} MiB (target < 1024)")
    if args.tools_python:
        print("\nOther tools on the same file (one run each):\n")
        model = os.path.join(big, "model.onnx")
        fresh(out_dir)
        slim = try_tool([args.tools_python, "-m", "onnxslim", model, os.path.join(out_dir, "slim.onnx")], 1800)
        print(f"- onnxslim: {slim}")
        fresh(out_dir)
        sim = try_tool([args.tools_python, "-m", "onnxsim", model, os.path.join(out_dir, "sim.onnx")], 1800)
        print(f"- onnxsim: {sim}")
    shutil.rmtree(cp_dir, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
