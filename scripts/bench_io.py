#!/usr/bin/env python3
"""I/O benchmark for graft's load/save path (docs/benchmarks.md, "Load and save").

    python3 scripts/bench_io.py [--runs 5] [--work target/bench]

1. A >= 3 GiB GPT-2-shaped model with external data (models/make_big.py): wall time and peak
   RSS of `graft opt big.onnx --passes dce -o out.onnx` against `cp` of the same files, runs
   alternating, medians reported with their ratio.
2. A model with embedded weights (about 1.5 GiB): peak RSS of the same command against the file
   size (target: at most 1.5x the file size + 100 MiB).

Uses the release build (built here) and GNU time for peak RSS. Needs the test venv's python for
the generator (GRAFT_PYTHON, default .venv/bin/python).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd):
    """(wall seconds, peak RSS MiB) of a command followed by `sync`, via GNU time: every
    command pays for writing its own output back to disk, so one command's dirty pages do not
    slow the next one down."""
    subprocess.run(["sync"], check=True)
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", "sh", "-c", '"$0" "$@" && sync'] + cmd,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    wall, rss_kb = r.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / 1024.0


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def generate(py, out, extra):
    if os.path.exists(os.path.join(out, "model.onnx")):
        return
    subprocess.run([py, os.path.join(ROOT, "models/make_big.py"), "--out", out] + extra, check=True)


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(ROOT, "target/bench"))
    args = ap.parse_args()
    py = os.environ.get("GRAFT_PYTHON", os.path.join(ROOT, ".venv/bin/python"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    graft = os.path.join(ROOT, "target/release/graft")

    big = os.path.join(args.work, "big")
    generate(py, big, ["--layers", "16", "--d", "2048"])
    size = dir_bytes(big)
    cp_dir, out_dir = os.path.join(args.work, "cp"), os.path.join(args.work, "out")
    files = [os.path.join(big, f) for f in sorted(os.listdir(big))]
    cp_t, cp_m, g_t, g_m = [], [], [], []
    for i in range(args.runs + 1):  # first round warms the page cache and is dropped
        fresh(cp_dir)
        t, m = timed(["cp"] + files + [cp_dir])
        fresh(out_dir)
        gt, gm = timed([graft, "opt", os.path.join(big, "model.onnx"), "--passes", "dce",
                        "-o", os.path.join(out_dir, "model.onnx")])
        if i:
            cp_t.append(t); cp_m.append(m); g_t.append(gt); g_m.append(gm)
    shutil.rmtree(cp_dir, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)

    emb = os.path.join(args.work, "embedded")
    generate(py, emb, ["--layers", "8", "--d", "1536", "--vocab", "32000", "--embedded"])
    emb_size = os.path.getsize(os.path.join(emb, "model.onnx"))
    e_m = []
    for i in range(args.runs + 1):
        fresh(out_dir)
        _, m = timed([graft, "opt", os.path.join(emb, "model.onnx"), "--passes", "dce",
                      "-o", os.path.join(out_dir, "model.onnx")])
        if i:
            e_m.append(m)
    shutil.rmtree(out_dir, ignore_errors=True)

    med = statistics.median
    gib = 2**30
    print(f"## graft opt --passes dce vs cp ({args.runs} runs each, alternating, medians)\n")
    print(f"External-data model: {size / gib:.2f} GiB (models/make_big.py --layers 16 --d 2048)\n")
    print("| command | wall s | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| cp | {med(cp_t):.2f} | {med(cp_m):.0f} |")
    print(f"| graft opt --passes dce | {med(g_t):.2f} | {med(g_m):.0f} |")
    print(f"\nwall-time ratio graft/cp: {med(g_t) / med(cp_t):.2f} (target <= 1.5); "
          f"graft peak RSS {med(g_m):.0f} MiB (target < 512)\n")
    limit = 1.5 * emb_size / 2**20 + 100
    print(f"Embedded-weights model: {emb_size / gib:.2f} GiB; graft opt --passes dce peak RSS "
          f"{med(e_m):.0f} MiB (target <= 1.5 x size + 100 MiB = {limit:.0f} MiB)")


if __name__ == "__main__":
    main()
