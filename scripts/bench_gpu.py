#!/usr/bin/env python3
"""End-to-end latency of corpus models on graft's WGSL/wgpu backend against ONNX Runtime (CPU),
and wonnx on the same adapter where it can run the model (docs/benchmarks.md, "WGSL / wgpu").

    python3 scripts/bench_gpu.py [--runs 10] [--cases bert_lora,resnet_bn] [--json out.json]

For every models/<case>/*.onnx (folders holding an inputs.npz), one after the other in the same
run:

* graft: `target/release/graft run MODEL --inputs CASE/inputs.npz --time N --no-cache` (compiled
  afresh; one warm-up run that also uploads the inputs, then N timed runs of the dispatches only:
  encode, submit, wait; no upload, no read-back). The release binary is built if missing.
  The same command also gets `--output-dir TMP`; the warm-up's outputs are compared with ONNX
  Runtime's (largest relative Frobenius error over float outputs; reported, not enforced).
* ONNX Runtime: CPUExecutionProvider, default session options (graph optimizations on, ORT's
  own thread pool: one intra-op thread per physical core), because lavapipe also spreads a
  dispatch's workgroups over every core; `--ort-threads 1` gives the single-threaded setting of
  scripts/bench_ort.py. Same inputs; one warm-up, median of N `session.run`.
* wonnx 0.5.1 (benches/wonnx_compare, a separate binary): only if
  /work/scratch/wonnx_target/release/wonnx_compare exists, on the models that
  benches/wonnx_compare/scripts/prepare.py --compat prepared (TorchScript exports only); its
  median covers `Session::run`, i.e. upload + dispatch + read-back of all outputs.

Ratios: graft/ORT and graft/wonnx of the medians (< 1: graft faster). Needs numpy and
onnxruntime: run it with graft's .venv/bin/python (plain python3 re-executes itself with
.venv/bin/python when onnxruntime is missing and that exists). Sets XDG_RUNTIME_DIR=/tmp for the
Vulkan loader unless set.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")

try:
    import numpy as np
    import onnxruntime as ort
except ImportError:
    # (compare prefixes: the venv's python is often a symlink to this very interpreter)
    if os.path.exists(VENV_PY) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.join(ROOT, ".venv")):
        os.execv(VENV_PY, [VENV_PY, os.path.abspath(__file__)] + sys.argv[1:])
    if "-h" in sys.argv or "--help" in sys.argv:
        np = ort = None
    else:
        raise

WONNX_BIN = "/work/scratch/wonnx_target/release/wonnx_compare"
WONNX_PREP = "/work/scratch/wonnx_prep"


def parse_args():
    ap = argparse.ArgumentParser(
        description="graft run (WGSL/wgpu) vs ONNX Runtime CPU vs wonnx, per corpus model.",
        epilog="Example: .venv/bin/python scripts/bench_gpu.py --runs 10 --json /tmp/gpu.json",
    )
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model and runtime (default 10)")
    ap.add_argument("--cases", default="", help="comma-separated case folders to run (default: all)")
    ap.add_argument("--files", default="*.onnx",
                    help="glob of model files inside each case folder (default *.onnx)")
    ap.add_argument("--json", metavar="OUT", help="write every result as a JSON list to OUT")
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads (default 0: ORT's default, one per "
                         "physical core; 1 as in scripts/bench_ort.py)")
    ap.add_argument("--graft", default=os.path.join(ROOT, "target/release/graft"),
                    help="graft binary (default target/release/graft, built if missing)")
    ap.add_argument("--no-wonnx", action="store_true", help="do not run wonnx")
    ap.add_argument("--wonnx-prep", default=os.path.join(WONNX_PREP, "models_compat"),
                    help="folder of models prepared for wonnx (default %(default)s)")
    ap.add_argument("--specialised", action="store_true",
                    help="also time graft with --specialise (elementwise programs compiled into "
                         "their own pipelines) in the same run, as an extra column")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per subprocess")
    return ap.parse_args()


def median(xs):
    return statistics.median(xs) if xs else None


def rel_fro(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    den = np.linalg.norm(want)
    num = np.linalg.norm(got - want)
    return float(num / den) if den > 0 else float(num)


def safe_name(name):
    # graft run --output-dir keeps ASCII letters, digits and "-_." and turns the rest into '_'.
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)


def run_graft(graft, model, npz, runs, timeout, env, extra=()):
    """Times `graft run --time`; the same run writes the outputs (of its warm-up) for the check."""
    out = tempfile.mkdtemp(prefix="bench_gpu_")
    cmd = [graft, "run", model, "--inputs", npz, "--time", str(runs), "--no-cache",
           "--output-dir", out, *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        timing = None
        for line in p.stdout.splitlines():
            if line.startswith("{") and "median_ms" in line:
                timing = json.loads(line)
        if p.returncode != 0 or timing is None:
            err = (p.stderr.strip() or p.stdout.strip()).splitlines()
            return {"status": "error", "error": err[-1] if err else f"exit {p.returncode}"}, None
        outputs = {f[:-4]: np.load(os.path.join(out, f))
                   for f in os.listdir(out) if f.endswith(".npy")}
        return ({"status": "ok", "median_ms": timing["median_ms"], "min_ms": timing.get("min_ms"),
                 "runs": timing.get("runs"), "backend": timing.get("backend")}, outputs)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout} s"}, None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_ort(model, npz, runs, threads):
    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - report any load failure
        return {"status": "error", "error": str(e).splitlines()[0]}, None
    data = np.load(npz)
    feeds = {i.name: data[i.name] for i in sess.get_inputs() if i.name in data.files}
    out = sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    names = [o.name for o in sess.get_outputs()]
    return ({"status": "ok", "median_ms": median(times), "min_ms": min(times), "runs": runs},
            dict(zip(names, out)))


def run_wonnx(case, fname, runs, prep_dir, timeout, env):
    model = os.path.join(prep_dir, case, fname)
    if not os.path.exists(model):
        return {"status": "n/a", "error": "not prepared (prepare.py --compat covers .ts.onnx only)"}
    args = [WONNX_BIN, "--model", model, "--runs", str(runs)]
    for f in sorted(glob.glob(os.path.join(WONNX_PREP, "inputs", case, "*.npy"))):
        args += ["--input", f"{os.path.basename(f)[:-4]}={f}"]
    for f in sorted(glob.glob(os.path.join(WONNX_PREP, "inputs", case, "expected", "*.npy"))):
        args += ["--expected", f"{os.path.basename(f)[:-4]}={f}"]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"status": "error", "error": f"no output (exit {p.returncode})"}
    r = json.loads(lines[-1])
    if r.get("status") != "ok":
        return {"status": "error", "error": (r.get("error") or "?").splitlines()[0]}
    return {"status": "ok", "median_ms": r["median_ms"], "min_ms": r.get("min_ms"),
            "runs": r.get("runs"), "adapter": r.get("adapter"),
            "matches_expected": r.get("matches_expected")}


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def main():
    args = parse_args()
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    if not os.path.exists(args.graft):
        print(f"{args.graft} missing: cargo build --release --locked --bin graft", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "graft"], cwd=ROOT,
                       check=True)
    wanted = {c for c in args.cases.split(",") if c}
    cases = sorted(d for d in os.listdir(os.path.join(ROOT, "models"))
                   if os.path.exists(os.path.join(ROOT, "models", d, "inputs.npz")))
    unknown = wanted - set(cases)
    if unknown:
        sys.exit(f"unknown case(s): {', '.join(sorted(unknown))}")
    if wanted:
        cases = [c for c in cases if c in wanted]
    use_wonnx = not args.no_wonnx and os.path.exists(WONNX_BIN)
    if not args.no_wonnx and not use_wonnx:
        print("wonnx: not built, see benches/wonnx_compare/README.md")
    threads = ("default session options (ORT's default thread pool)" if args.ort_threads == 0
               else f"intra_op_num_threads={args.ort_threads}")
    print(f"ONNX Runtime {ort.__version__} CPU ({threads}); {args.runs} timed runs after a warm-up; "
          "medians in ms")
    results = []
    adapter = None
    rows = []
    for case in cases:
        npz = os.path.join(ROOT, "models", case, "inputs.npz")
        for model in sorted(glob.glob(os.path.join(ROOT, "models", case, args.files))):
            fname = os.path.basename(model)
            label = f"{case}/{fname[:-5]}"
            g, got = run_graft(args.graft, model, npz, args.runs, args.timeout, env)
            gs = (run_graft(args.graft, model, npz, args.runs, args.timeout, env,
                            ["--specialise"])[0] if args.specialised else None)
            o, ort_out = run_ort(model, npz, args.runs, args.ort_threads)
            w = (run_wonnx(case, fname, args.runs, args.wonnx_prep, args.timeout, env)
                 if use_wonnx else None)
            err = None
            if got is not None and ort_out is not None:
                errs = [rel_fro(got[safe_name(n)], v) for n, v in ort_out.items()
                        if safe_name(n) in got and np.issubdtype(np.asarray(v).dtype, np.floating)]
                err = max(errs) if errs else None
            if g["status"] == "ok":
                adapter = g.get("backend")
            r_go = (g["median_ms"] / o["median_ms"]
                    if g["status"] == "ok" and o["status"] == "ok" else None)
            r_gw = (g["median_ms"] / w["median_ms"]
                    if w and g["status"] == "ok" and w["status"] == "ok" else None)
            r_so = (gs["median_ms"] / o["median_ms"]
                    if gs and gs["status"] == "ok" and o["status"] == "ok" else None)
            res = {"model": label, "graft": g, "graft_specialised": gs,
                   "graft_specialised_over_ort": r_so, "ort": o, "wonnx": w, "graft_over_ort": r_go,
                   "graft_over_wonnx": r_gw, "rel_fro_graft_vs_ort": err}
            results.append(res)
            print(json.dumps(res), flush=True)
            notes = []
            for name, r in (("graft", g), ("ort", o), ("wonnx", w)):
                if r and r["status"] == "error":
                    notes.append(f"{name}: {r['error'][:120]}")
            spec = ""
            if args.specialised:
                spec = " {} | {} |".format(
                    fmt(gs.get("median_ms")) if gs["status"] == "ok" else "fail",
                    fmt(r_so, ".2f"))
            rows.append("| {} | {} |{} {} | {} | {} | {} | {} | {} |".format(
                label,
                fmt(g.get("median_ms")) if g["status"] == "ok" else "fail",
                spec,
                fmt(o.get("median_ms")) if o["status"] == "ok" else "fail",
                fmt(r_go, ".2f"),
                ("-" if not w else fmt(w["median_ms"]) if w["status"] == "ok"
                 else "n/a" if w["status"] == "n/a" else "fail"),
                fmt(r_gw, ".2f"),
                fmt(err, ".1e"),
                "; ".join(notes),
            ))
    print()
    print(f"adapter: {adapter or '?'}")
    print(f"ONNX Runtime {ort.__version__}, CPUExecutionProvider, {threads}")
    spec_head = " graft --specialise ms | specialised/ORT |" if args.specialised else ""
    print("| model | graft-wgpu ms |" + spec_head + " ORT CPU ms | graft/ORT | wonnx ms | "
          "graft/wonnx | rel err graft vs ORT | notes |")
    # wonnx "n/a": no prepared copy of the model (prepare.py --compat covers .ts.onnx only)
    print("|---|---|" + ("---|---|" if args.specialised else "") + "---|---|---|---|---|---|")
    for r in rows:
        print(r)
    ok = [r for r in results if r["graft_over_ort"] is not None]
    if ok:
        gm = float(np.exp(np.mean(np.log([r["graft_over_ort"] for r in ok]))))
        print(f"\ngraft ran {len(ok)}/{len(results)} models; geometric mean graft/ORT {gm:.2f}")
    sk = [r for r in results if r["graft_specialised_over_ort"] is not None]
    if sk:
        gm = float(np.exp(np.mean(np.log([r["graft_specialised_over_ort"] for r in sk]))))
        print(f"graft --specialise ran {len(sk)}; geometric mean specialised/ORT {gm:.2f}")
    wk = [r for r in results if r["graft_over_wonnx"] is not None]
    if wk:
        gm = float(np.exp(np.mean(np.log([r["graft_over_wonnx"] for r in wk]))))
        print(f"wonnx ran {len(wk)} of them; geometric mean graft/wonnx {gm:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"adapter": adapter, "ort_version": ort.__version__,
                       "ort_threads": args.ort_threads, "runs": args.runs, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
