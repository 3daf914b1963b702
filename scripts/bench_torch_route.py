#!/usr/bin/env python3
"""The PyTorch route to a merged ONNX file, for comparison with `graft fold` (docs/benchmarks.md).

    /work/genvenv/bin/python scripts/bench_torch_route.py [--runs 3] [--work target/bench]
        [--layers 16] [--d 2048] [--heads 1] [--seq 16] [--vocab 50257] [--keep]

Needs a Python with torch, transformers, peft, onnx and onnxscript (no network: every model is
built from a config with random init). Steps:

1. (not timed) Builds a transformers GPT2LMHeadModel with the shapes of graft's fold benchmark
   model (models/make_big.py --layers 16 --d 2048 --lora 8: single-head attention, MLP 4d,
   16 positions, vocab 50257, tied LM head), float32, random init; wraps it with PEFT
   LoraConfig(r=8, lora_alpha=16, target_modules=[c_attn, c_proj, c_fc], fan_in_fan_out=True),
   sets every LoRA B to random non-zero values and saves base (safetensors) and adapter to
   WORK/torch_route/ckpt: the fine-tuned checkpoint a user starts from.
2. Times, each as one process under GNU time followed by `sync` (peak RSS is that process's):
   PeftModel.from_pretrained + merge_and_unload() + torch.onnx.export with external data, once
   with the TorchScript exporter (dynamo=False), again with it and an all-ones attention_mask
   (transformers 5 otherwise uses torch.diff, which that exporter cannot export), and once with
   the dynamo exporter (dynamo=True, external_data=True). One run each (slow). A failure (error, OOM kill) is recorded as a result.
3. Times `cp` of WORK/big_lora/model.onnx{,.data} and, if that model exists,
   `target/release/graft fold WORK/big_lora/model.onnx -o OUT --no-verify` (runs + 1 rounds,
   alternating, the first dropped, medians), and prints a markdown table.

The multi-GB outputs under WORK/torch_route are deleted at the end unless --keep.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dir_bytes(d):
    total, files = 0, 0
    for dp, _, fs in os.walk(d):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
            files += 1
    return total, files


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)


def timed(cmd, timeout=None):
    """(ok, wall s, peak RSS MiB, error text) of a command followed by `sync`, via GNU time."""
    subprocess.run(["sync"], check=True)
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M", "sh", "-c", '"$0" "$@" && sync'] + cmd,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, float(timeout), float("nan"), f"timed out after {timeout} s"
    lines = r.stderr.strip().splitlines()
    wall, rss = float("nan"), float("nan")
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 2:
            try:
                wall, rss = float(parts[0]), int(parts[1]) / 1024.0
                break
            except ValueError:
                pass
    if r.returncode != 0:
        err = [l for l in lines if l.strip() and not l.startswith("Command ")
               and not l[:1].isdigit()]
        sig = [l for l in lines if l.startswith("Command terminated by signal")]
        msg = (sig[-1] + "; " if sig else "") + (err[-1] if err else f"exit {r.returncode}")
        return False, wall, rss, msg[:300]
    return True, wall, rss, ""


# ---------------------------------------------------------------------------------------------
# Child stages (run in their own processes).

def gpt2_config(a):
    from transformers import GPT2Config
    return GPT2Config(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.d, n_layer=a.layers,
                      n_head=a.heads, n_inner=4 * a.d, activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                      tie_word_embeddings=True)


def lora_config():
    from peft import LoraConfig
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                      target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                      task_type="CAUSAL_LM")


def stage_make(a):
    import torch
    from peft import get_peft_model
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    t0 = time.time()
    base = GPT2LMHeadModel(gpt2_config(a)).float().eval()
    n = sum(p.numel() for p in base.parameters())
    base.save_pretrained(os.path.join(a.ckpt, "base"))  # safetensors
    model = get_peft_model(base, lora_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.save_pretrained(os.path.join(a.ckpt, "adapter"))
    print(f"checkpoint: {n / 1e6:.1f} M base parameters, built and saved in {time.time() - t0:.1f} s")


def stage_route(a):
    import torch
    from peft import PeftModel
    from transformers import GPT2LMHeadModel
    phases = {}
    t0 = time.time()
    base = GPT2LMHeadModel.from_pretrained(os.path.join(a.ckpt, "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(a.ckpt, "adapter"))
    phases["load"] = time.time() - t0
    t0 = time.time()
    merged = model.merge_and_unload().eval()
    phases["merge"] = time.time() - t0
    with open(a.phases_out, "w") as f:  # kept if the export fails
        json.dump(phases, f)
    with_mask = a.exporter == "torchscript_mask"

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            # transformers 5 builds the causal mask with torch.diff (no TorchScript-ONNX
            # symbolic) unless an attention_mask is given; the _mask variant passes ones.
            mask = torch.ones_like(input_ids) if with_mask else None
            return self.m(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    wrapped = Logits(merged).eval()
    ids = torch.randint(0, a.vocab, (1, a.seq), dtype=torch.long)
    os.makedirs(os.path.dirname(a.onnx_out), exist_ok=True)
    t0 = time.time()
    with torch.no_grad():
        if a.exporter in ("torchscript", "torchscript_mask"):
            torch.onnx.export(wrapped, (ids,), a.onnx_out, dynamo=False, opset_version=18,
                              input_names=["input_ids"], output_names=["logits"])
        else:
            torch.onnx.export(wrapped, (ids,), a.onnx_out, dynamo=True, external_data=True,
                              opset_version=18, input_names=["input_ids"],
                              output_names=["logits"])
    phases["export"] = time.time() - t0
    with open(a.phases_out, "w") as f:
        json.dump(phases, f)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["make", "route"], default=None)
    ap.add_argument("--exporter", choices=["torchscript", "torchscript_mask", "dynamo"], default="torchscript")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--onnx-out", default=None)
    ap.add_argument("--phases-out", default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(ROOT, "target/bench"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=1, help="make_big.py uses single-head attention")
    ap.add_argument("--seq", type=int, default=16, help="positions and input length (make_big: 16)")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--timeout", type=int, default=3600, help="per torch-route export, seconds")
    ap.add_argument("--exporters", default="torchscript,torchscript_mask,dynamo")
    ap.add_argument("--skip-graft", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the torch-route outputs")
    a = ap.parse_args()
    if a.stage == "make":
        return stage_make(a)
    if a.stage == "route":
        return stage_route(a)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import peft
    import torch
    import transformers
    import onnx
    import onnxscript
    versions = (f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
                f"{transformers.__version__}, peft {peft.__version__}, onnx {onnx.__version__}, "
                f"onnxscript {onnxscript.__version__}")
    shape = ["--layers", str(a.layers), "--d", str(a.d), "--heads", str(a.heads),
             "--seq", str(a.seq), "--vocab", str(a.vocab)]
    me = [sys.executable, os.path.abspath(__file__)]
    tr = os.path.join(a.work, "torch_route")
    ckpt = os.path.join(tr, "ckpt")
    rows = []
    try:
        if not os.path.exists(os.path.join(ckpt, "adapter", "adapter_config.json")):
            fresh(ckpt)
            subprocess.run(me + ["--stage", "make", "--ckpt", ckpt] + shape, check=True)
        ck_bytes, _ = dir_bytes(ckpt)
        print(f"checkpoint {ckpt}: {ck_bytes / 2**30:.2f} GiB", flush=True)
        for exp in [e for e in a.exporters.split(",") if e]:
            out_dir = os.path.join(tr, f"onnx_{exp}")
            fresh(out_dir)
            phases_f = os.path.join(tr, f"phases_{exp}.json")
            if os.path.exists(phases_f):
                os.remove(phases_f)
            cmd = me + ["--stage", "route", "--exporter", exp, "--ckpt", ckpt,
                        "--onnx-out", os.path.join(out_dir, "model.onnx"),
                        "--phases-out", phases_f] + shape
            print(f"running: {' '.join(cmd)}", flush=True)
            ok, wall, rss, err = timed(cmd, a.timeout)
            size, nfiles = dir_bytes(out_dir)
            phases = json.load(open(phases_f)) if os.path.exists(phases_f) else {}
            detail = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
            if ok:
                detail += f"; {nfiles} file(s), {size / 2**30:.2f} GiB"
            else:
                detail = (detail + "; " if detail else "") + f"FAILED: {err}"
            label = "PEFT load + merge_and_unload + torch.onnx.export " + {
                "torchscript": "(TorchScript, dynamo=False)",
                "torchscript_mask": "(TorchScript, dynamo=False, attention_mask=ones)",
                "dynamo": "(dynamo=True, external_data=True)"}[exp]
            rows.append((label, 1, wall, rss, detail))
            print(rows[-1], flush=True)
            if not a.keep:
                shutil.rmtree(out_dir, ignore_errors=True)

        big = os.path.join(a.work, "big_lora")
        if os.path.exists(os.path.join(big, "model.onnx")):
            files = [os.path.join(big, f) for f in sorted(os.listdir(big))]
            big_bytes = sum(os.path.getsize(f) for f in files)
            graft = os.path.join(ROOT, "target/release/graft")
            if not a.skip_graft:
                subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT,
                               check=True)
            cp_dir, out_dir = os.path.join(tr, "cp"), os.path.join(tr, "graft_out")
            cp_t, cp_m, g_t, g_m = [], [], [], []
            for i in range(a.runs + 1):  # first round warms the page cache and is dropped
                fresh(cp_dir)
                ok, t, m, err = timed(["cp"] + files + [cp_dir])
                if not ok:
                    sys.exit(f"cp failed: {err}")
                shutil.rmtree(cp_dir, ignore_errors=True)
                if not a.skip_graft:
                    fresh(out_dir)
                    ok, gt, gm, err = timed([graft, "fold", os.path.join(big, "model.onnx"),
                                             "-o", os.path.join(out_dir, "model.onnx"),
                                             "--no-verify"])
                    if not ok:
                        sys.exit(f"graft fold failed: {err}")
                    shutil.rmtree(out_dir, ignore_errors=True)
                if i:
                    cp_t.append(t); cp_m.append(m)
                    if not a.skip_graft:
                        g_t.append(gt); g_m.append(gm)
            med = statistics.median
            rows.append((f"cp big_lora/model.onnx + .data ({big_bytes / 2**30:.2f} GiB)", a.runs,
                         med(cp_t), med(cp_m), ""))
            if g_t:
                rows.append(("graft fold --no-verify", a.runs, med(g_t), med(g_m), ""))
        else:
            print(f"{big} missing: no cp / graft rows (run scripts/bench_fold.py first)")
    finally:
        if not a.keep:
            shutil.rmtree(tr, ignore_errors=True)

    cp_wall = next((r[2] for r in rows if r[0].startswith("cp ")), None)
    print(f"\n## PyTorch route vs graft fold\n")
    print(f"Model: GPT2LMHeadModel n_layer={a.layers} n_embd={a.d} n_head={a.heads} "
          f"n_inner={4 * a.d} n_positions={a.seq} vocab={a.vocab}, float32, LoRA r=8 alpha=16 "
          f"on c_attn/c_proj/c_fc; input_ids [1, {a.seq}]. {versions}.\n")
    print("| route | runs | wall s | x cp | peak RSS MiB | notes |")
    print("|---|---|---|---|---|---|")
    for label, runs, wall, rss, detail in rows:
        ratio = f"{wall / cp_wall:.1f}" if cp_wall and wall == wall else "-"
        rss_s = f"{rss:.0f}" if rss == rss else "-"
        print(f"| {label} | {runs} | {wall:.2f} | {ratio} | {rss_s} | {detail} |")


if __name__ == "__main__":
    main()
