#!/usr/bin/env python3
"""Generate the small ONNX test models under models/.

Run from anywhere:  /work/genvenv/bin/python models/generate.py [case ...]

Every model is built from a config with random init (fixed seeds); no pretrained
weights are downloaded (HF_HUB_OFFLINE=1).  For every case we write into models/<case>/:

  unmerged.ts.onnx      TorchScript exporter (dynamo=False)
  unmerged.dynamo.onnx  dynamo exporter (dynamo=True)
  merged.ts.onnx        reference merged model (when the adapter folds)
  merged.dynamo.onnx
  inputs.npz            graph input name -> array
  expected.npz          graph output name -> array (PyTorch, UNMERGED model, float32; the merged
                        model where there are no unmerged files: bert_multi_peft)
  expected_merged.npz   only for approximate merges: PyTorch output of the merged reference
  calibration.npz       only for approximate merges: the calibration batches used
  adapter/              PEFT cases: save_pretrained folder (adapter_config.json,
                        adapter_model.safetensors) for the base case's exports
  adapter_a/, adapter_b/  bert_multi_peft: two PEFT folders applied with weights 0.7 / 0.3
  true_delta.npz        bert_lowrank_ft: module path -> weight delta actually applied

and models/manifest.json describing all cases.  Every exported file is checked with
onnx.checker (full_check=True) and run with onnxruntime against expected outputs.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
import copy
import io
import json
import math
import re
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import onnx
import onnxruntime as ort

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent
OPSET = 18
TOL = 1e-4  # relative Frobenius error accepted between ONNX Runtime and PyTorch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)
# nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX
# export; disable it so MHA runs (and traces) through F.multi_head_attention_forward.
torch.backends.mha.set_fastpath_enabled(False)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def seed(n: int) -> None:
    torch.manual_seed(n)
    np.random.seed(n)


@dataclass
class Case:
    name: str
    method: str
    foldable: object  # True | False | "approximate" | None (base model: nothing to fold)
    notes: str
    unmerged: nn.Module | None  # None: no unmerged files, expected.npz from the merged model
    inputs: dict  # ordered: graph input name -> torch tensor
    output_names: list
    merged: nn.Module | None = None
    merged_notes: str = ""
    calibration: dict | None = None  # name -> np array with leading batch-index axis
    extra: dict = field(default_factory=dict)  # extra manifest fields
    # PEFT adapter folders to write with save_pretrained (see PeftOut); one entry -> manifest
    # "peft_adapter", several (weighted combination) -> "peft_adapters"
    peft: list = field(default_factory=list)
    # extraction fixtures: name of the base case whose unmerged exports must have the same graph
    # structure and initializer names/shapes (only values may differ); checked after export
    same_graph_as: str | None = None
    extra_npz: dict = field(default_factory=dict)  # file name -> {key: np array}, written into the case dir


@dataclass
class PeftOut:
    """A PEFT model whose active adapter is written to models/<case>/<subdir>/ with save_pretrained.
    base_case: the case whose (unwrapped) model holds exactly this PEFT model's base weights, i.e.
    whose unmerged exports are the ONNX base the adapter applies to. weight: only for weighted
    multi-adapter cases."""
    subdir: str
    pm: nn.Module
    base_case: str
    weight: float | None = None


CASES: list[tuple[str, Callable[[], Case]]] = []


def case(fn):
    CASES.append((fn.__name__.removeprefix("case_"), fn))
    return fn


def randomize_(module: nn.Module, pred: Callable[[str, torch.Tensor], bool], scale: float = 0.1,
               gen_seed: int = 1234) -> list[str]:
    """Set every parameter whose name satisfies pred to randn*scale (non-zero)."""
    g = torch.Generator().manual_seed(gen_seed)
    names = []
    with torch.no_grad():
        for n, p in module.named_parameters():
            if pred(n, p):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
                names.append(n)
    return names


def perturb_vectors_(module: nn.Module, gen_seed: int = 4321, scale: float = 0.05) -> None:
    """Add noise to every 1-D parameter (biases, LayerNorm gains/shifts), which random init leaves at
    exactly 0 or 1. Without this the exporters de-duplicate identical initializers (all zero biases
    collapse into one shared tensor), which a trained model would never show."""
    g = torch.Generator().manual_seed(gen_seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def to_tuple(out):
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(out.values())
    return tuple(out)


class HFWrap(nn.Module):
    """Calls a transformers/PEFT model with keyword inputs (named like the ONNX graph inputs) and
    returns the selected fields of its ModelOutput as a tuple.  Parameter names get the prefix 'm.'."""

    def __init__(self, m, in_keys, out_keys):
        super().__init__()
        self.m = m
        self.in_keys = list(in_keys)
        self.out_keys = list(out_keys)

    def forward(self, *args):
        out = self.m(**dict(zip(self.in_keys, args)))
        return tuple(out[k] for k in self.out_keys)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (den if den > 0 else 1.0))


@contextlib.contextmanager
def quiet():
    buf_o, buf_e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_o), contextlib.redirect_stderr(buf_e):
        yield buf_o, buf_e


def export(model: nn.Module, inputs: dict, output_names: list, path: Path, dynamo: bool,
           ts_kwargs: dict | None = None, dynamo_kwargs: dict | None = None) -> None:
    args = tuple(inputs.values())
    model.eval()
    with torch.no_grad(), quiet():
        if dynamo:
            kw = dict(dynamo_kwargs or {})
            keep_bn = kw.pop("keep_batchnorm", False)
            if keep_bn:
                kw["optimize"] = False
            prog = torch.onnx.export(
                model, args, None, input_names=list(inputs.keys()), output_names=output_names,
                opset_version=OPSET, dynamo=True, external_data=False, verbose=False, **kw)
            if keep_bn:
                optimize_without_bn_fusion(prog)
            prog.save(str(path), external_data=False)
            strip_stack_traces(path)
        else:
            kw = dict(do_constant_folding=True)
            kw.update(ts_kwargs or {})
            torch.onnx.export(
                model, args, str(path), input_names=list(inputs.keys()), output_names=output_names,
                opset_version=OPSET, dynamo=False, **kw)


def strip_stack_traces(path: Path) -> None:
    """Drop the per-node 'pkg.torch.onnx.stack_trace' metadata the dynamo exporter writes: it holds
    absolute local paths and source line numbers of this script (so every edit would change every
    file) and is ~40% of the file size. All other metadata_props are kept."""
    m = onnx.load(str(path))
    nodes = list(m.graph.node)
    for fn in m.functions:
        nodes += list(fn.node)
    for n in nodes:
        keep = [p for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(n.metadata_props):
            del n.metadata_props[:]
            n.metadata_props.extend(keep)
    onnx.save(m, str(path))


def optimize_without_bn_fusion(prog) -> None:
    """Run the same optimizer pipeline torch 2.15's dynamo exporter runs (onnxscript
    optimize_ir + onnx_fusions.fuse, see onnxscript/_framework_apis/torch_2_8.py) but with the
    fuse_batchnorm rewrite rules removed, so BatchNormalization nodes stay in the graph."""
    import onnxscript.optimizer
    import onnxscript.rewriter as rw
    import onnxscript.rewriter.onnx_fusions
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    saved = rw._DEFAULT_REWRITE_RULES
    bn_rules = set(id(r) for r in _fuse_batchnorm.rules)
    rw._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in bn_rules)
    assert len(rw._DEFAULT_REWRITE_RULES) < len(saved)
    try:
        onnxscript.optimizer.optimize_ir(prog.model)
        onnxscript.rewriter.onnx_fusions.fuse(prog.model)
    finally:
        rw._DEFAULT_REWRITE_RULES = saved


def graph_summary(m: onnx.ModelProto) -> dict:
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [i.name for i in m.graph.input],
        "outputs": [o.name for o in m.graph.output],
        "n_nodes": len(m.graph.node),
        "n_initializers": len(m.graph.initializer),
        "ops": dict(sorted(ops.items())),
    }


def run_ort(path: Path, feeds: dict) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    res = sess.run(names, feeds)
    return dict(zip(names, res))


def check_file(path: Path, feeds: dict, expected: dict) -> dict:
    """onnx.checker full check + onnxruntime vs expected. Returns a report dict."""
    rep: dict = {"file": path.name, "bytes": path.stat().st_size}
    m = onnx.load(str(path))
    rep["graph"] = graph_summary(m)
    try:
        onnx.checker.check_model(m, full_check=True)
        rep["checker"] = "ok"
    except Exception as e:  # noqa: BLE001
        rep["checker"] = f"FAIL: {type(e).__name__}: {e}"
    try:
        got = run_ort(path, feeds)
        errs = {}
        for k, v in expected.items():
            if k not in got:
                errs[k] = None
            else:
                errs[k] = rel_err(got[k], v)
        rep["rel_err"] = errs
        rep["max_rel_err"] = max((e for e in errs.values() if e is not None), default=None)
        rep["missing_outputs"] = [k for k, e in errs.items() if e is None]
    except Exception as e:  # noqa: BLE001
        rep["ort"] = f"FAIL: {type(e).__name__}: {e}"
        rep["max_rel_err"] = None
    return rep


# --------------------------------------------------------------------------------------
# model builders
# --------------------------------------------------------------------------------------


def tiny_bert(seed_: int = 0):
    from transformers import BertConfig, BertModel

    seed(seed_)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    m = BertModel(cfg)
    perturb_vectors_(m)
    m.eval()
    return m


def wrap_bert(m):
    return HFWrap(m, ["input_ids", "attention_mask"], BERT_OUTS).eval()


def wrap_gpt2(m):
    return HFWrap(m, ["input_ids", "attention_mask"], ["logits"]).eval()


def bert_inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 100, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


BERT_OUTS = ["last_hidden_state", "pooler_output"]


def tiny_gpt2(seed_: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    seed(seed_)
    cfg = GPT2Config(
        vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2, n_inner=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
        tie_word_embeddings=True, attn_implementation="eager", bos_token_id=0, eos_token_id=0,
    )
    m = GPT2LMHeadModel(cfg)
    perturb_vectors_(m)
    m.eval()
    assert m.lm_head.weight is m.transformer.wte.weight, "expected tied embeddings"
    return m


def gpt2_inputs():
    # attention_mask is passed explicitly: without it transformers 5 runs find_packed_sequence_indices
    # (torch.diff), which the TorchScript exporter cannot export.
    g = torch.Generator().manual_seed(8)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    return {"input_ids": torch.randint(0, 100, (2, 8), generator=g), "attention_mask": mask}


def tiny_vit(seed_: int = 0):
    import timm

    seed(seed_)
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=2,
        num_heads=2, mlp_ratio=2.0, qkv_bias=True, class_token=True, global_pool="token",
    )
    perturb_vectors_(m)
    m.eval()
    return m


def image_inputs(n=2, c=3, hw=32, seed_=9, name="pixel_values"):
    g = torch.Generator().manual_seed(seed_)
    return {name: torch.randn(n, c, hw, hw, generator=g)}


def randomize_bn_(module: nn.Module, gen_seed: int = 99) -> None:
    """Non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(gen_seed)
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g))
                mod.bias.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))


# ---- ResNet-like CNN -----------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.down is None else self.down(x)
        return F.relu(y + s)


class TinyResNet(nn.Module):
    """stem BN on the raw input + 1x1 conv (BN-before-conv, pad 0), conv-BN-ReLU stem,
    two basic blocks (second strided with a 1x1 conv-BN shortcut), GAP, BN1d, Linear."""

    def __init__(self):
        super().__init__()
        self.in_bn = nn.BatchNorm2d(3)
        self.in_proj = nn.Conv2d(3, 8, 1, 1, 0, bias=True)
        self.stem = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.head_bn = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.in_proj(self.in_bn(x))
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        x = x.mean(dim=(2, 3))
        return self.fc(self.head_bn(x))


def fuse_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """BN after conv: W' = t W, b' = t (b - mu) + beta."""
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        new.weight.copy_(conv.weight * t.reshape(-1, 1, 1, 1))
        new.bias.copy_(t * (b - bn.running_mean) + bn.bias)
    return new


def fold_bn_before_conv1x1(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """BN on the input of a pad-0, groups-1 conv: W' = W diag(t), b' = b + W (beta - mu t)."""
    assert conv.groups == 1 and all(p == 0 for p in conv.padding)
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * t
    new = copy.deepcopy(conv)
    with torch.no_grad():
        new.weight.copy_(conv.weight * t.reshape(1, -1, 1, 1))
        new.bias.copy_(conv.bias + (conv.weight.sum(dim=(2, 3)) @ shift))
    return new


def fold_bn1d_before_linear(bn: nn.BatchNorm1d, lin: nn.Linear) -> nn.Linear:
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * t
    new = copy.deepcopy(lin)
    with torch.no_grad():
        new.weight.copy_(lin.weight * t.reshape(1, -1))
        new.bias.copy_(lin.bias + lin.weight @ shift)
    return new


class TinyResNetFused(nn.Module):
    def __init__(self, src: TinyResNet):
        super().__init__()
        self.in_proj = fold_bn_before_conv1x1(src.in_bn, src.in_proj)
        self.stem = fuse_bn_into_conv(src.stem, src.stem_bn)
        self.l1c1 = fuse_bn_into_conv(src.layer1.conv1, src.layer1.bn1)
        self.l1c2 = fuse_bn_into_conv(src.layer1.conv2, src.layer1.bn2)
        self.l2c1 = fuse_bn_into_conv(src.layer2.conv1, src.layer2.bn1)
        self.l2c2 = fuse_bn_into_conv(src.layer2.conv2, src.layer2.bn2)
        self.l2d = fuse_bn_into_conv(src.layer2.down[0], src.layer2.down[1])
        self.fc = fold_bn1d_before_linear(src.head_bn, src.fc)

    def forward(self, x):
        x = F.relu(self.stem(self.in_proj(x)))
        x = F.relu(self.l1c2(F.relu(self.l1c1(x))) + x)
        x = F.relu(self.l2c2(F.relu(self.l2c1(x))) + self.l2d(x))
        return self.fc(x.mean(dim=(2, 3)))


# ---- RepVGG --------------------------------------------------------------------------


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride, pad, groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class RepVGGBlock(nn.Module):
    """Training-form RepVGG block (DingXiaoH/RepVGG repvgg.py):
    ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)); identity only if cin==cout and stride 1."""

    def __init__(self, cin, cout, stride=1, groups=1):
        super().__init__()
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        self.rbr_identity = nn.BatchNorm2d(cin) if (cin == cout and stride == 1) else None
        self.rbr_dense = ConvBN(cin, cout, 3, stride, 1, groups)
        self.rbr_1x1 = ConvBN(cin, cout, 1, stride, 0, groups)

    def forward(self, x):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)

    # --- reparameterization (repvgg.py get_equivalent_kernel_bias / _fuse_bn_tensor)
    def _fuse(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, ConvBN):
            kernel = branch.conv.weight
            bn = branch.bn
        else:
            input_dim = self.cin // self.groups
            kernel = torch.zeros(self.cin, input_dim, 3, 3)
            for i in range(self.cin):
                kernel[i, i % input_dim, 1, 1] = 1
            bn = branch
        t = (bn.weight / (bn.running_var + bn.eps).sqrt()).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()

    def deploy(self) -> nn.Conv2d:
        k3, b3 = self._fuse(self.rbr_dense)
        k1, b1 = self._fuse(self.rbr_1x1)
        kid, bid = self._fuse(self.rbr_identity)
        conv = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, groups=self.groups, bias=True)
        with torch.no_grad():
            conv.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]) + kid)
            conv.bias.copy_(b3 + b1 + bid)
        return conv


class TinyRepVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(
            RepVGGBlock(3, 16, stride=2),           # no identity (channels change)
            RepVGGBlock(16, 16, stride=1),          # identity BN branch
            RepVGGBlock(16, 16, stride=1, groups=2),  # grouped, identity BN branch
            RepVGGBlock(16, 32, stride=2, groups=2),  # grouped, strided, no identity
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stages(x)
        return self.fc(x.mean(dim=(2, 3)))


class TinyRepVGGDeploy(nn.Module):
    def __init__(self, src: TinyRepVGG):
        super().__init__()
        self.stages = nn.ModuleList([b.deploy() for b in src.stages])
        self.fc = copy.deepcopy(src.fc)

    def forward(self, x):
        for c in self.stages:
            x = F.relu(c(x))
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------
# Block 1: base models
# --------------------------------------------------------------------------------------


@case
def case_bert_base():
    m = tiny_bert(0)
    return Case("bert_base", "none", None,
                "transformers BertModel, hidden 32, 2 layers, 2 heads, intermediate 64, vocab 100, "
                "eager attention; outputs last_hidden_state (rank-3 MatMul linears) and pooler_output "
                "(rank-2 Gemm pooler).", wrap_bert(m), bert_inputs(), BERT_OUTS)


@case
def case_gpt2_base():
    m = tiny_gpt2(0)
    return Case("gpt2_base", "none", None,
                "transformers GPT2LMHeadModel, n_embd 32, 2 layers, 2 heads, n_inner 64, vocab 100, "
                "tied wte/lm_head, Conv1D linears (Gemm transB=0 on 2-D reshaped input), eager attention, "
                "use_cache=False.", wrap_gpt2(m), gpt2_inputs(), ["logits"])


@case
def case_vit_base():
    m = tiny_vit(0)
    return Case("vit_base", "none", None,
                "timm VisionTransformer img 32, patch 8, embed 32, depth 2, 2 heads, mlp_ratio 2, "
                "10 classes, class token; fused qkv Linear(32,96); timm default (fused SDPA) attention.",
                m, image_inputs(), ["logits"])


@case
def case_resnet_bn():
    seed(0)
    m = TinyResNet()
    randomize_bn_(m)
    m.eval()
    merged = TinyResNetFused(m).eval()
    return Case("resnet_bn", "batchnorm", True,
                "Hand-written ResNet-like CNN, conv-BN-ReLU post-activation blocks plus BN on the raw "
                "input before a 1x1 pad-0 conv and BN1d before the final Linear. Unmerged files are "
                "exported so that ALL BatchNormalization nodes stay: TorchScript with "
                "training=TrainingMode.PRESERVE (model in eval; skips the eval-mode Conv+BN fusion), dynamo "
                "with optimize=False followed by the exporter's own onnxscript optimizer pipeline minus its "
                "fuse_batchnorm rules (with default flags both exporters fold Conv+BN). The merged reference is the "
                "exact BN fold (after-conv: W'=tW, b'=t(b-mu)+beta; before 1x1 conv / before Linear: "
                "W'=W diag(t), b'=b+W(beta-mu t)) exported normally.",
                m, image_inputs(), ["logits"], merged=merged,
                extra={"unmerged_export_flags": {"ts": "training=torch.onnx.TrainingMode.PRESERVE",
                                                 "dynamo": "optimize=False, then onnxscript optimize_ir + onnx_fusions.fuse "
                                                           "with the fuse_batchnorm rules removed"}})


@case
def case_repvgg_base():
    seed(0)
    m = TinyRepVGG()
    randomize_bn_(m)
    m.eval()
    merged = TinyRepVGGDeploy(m).eval()
    return Case("repvgg_base", "repvgg", True,
                "Hand-written RepVGG training-form stack (3x3 conv+BN, 1x1 conv+BN, identity BN, ReLU); "
                "blocks: 3->16 s2 (no identity), 16->16 (identity), 16->16 groups=2 (identity), "
                "16->32 s2 groups=2; GAP; Linear. Exported with default flags, so both exporters fold the "
                "conv BNs and only the identity-branch BatchNormalization stays. Merged reference = "
                "RepVGG reparameterization (repvgg.py get_equivalent_kernel_bias).",
                m, image_inputs(), ["logits"], merged=merged)


# --------------------------------------------------------------------------------------
# Block 2: adapters
# --------------------------------------------------------------------------------------


def is_lora_param(n: str, p) -> bool:
    return any(k in n for k in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"))


def peft_lora(model: nn.Module, cfg, gen_seed: int = 1234):
    from peft import get_peft_model

    pm = get_peft_model(model, cfg)
    names = randomize_(pm, is_lora_param, 0.1, gen_seed)
    assert names, "no LoRA parameters found"
    g = torch.Generator().manual_seed(gen_seed + 1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:  # DoRA magnitude: perturb the init (= weight norm)
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    pm.eval()
    return pm


def peft_merged(pm):
    m = copy.deepcopy(pm).merge_and_unload()
    m.eval()
    return m


def lora_scalings(pm) -> dict:
    out = {}
    for n, mod in pm.named_modules():
        sc = getattr(mod, "scaling", None)
        if isinstance(sc, dict) and sc and hasattr(mod, "lora_A"):
            out[n] = sc["default"] if list(sc) == ["default"] else dict(sc)
    return out


@case
def case_bert_lora():
    from peft import LoraConfig

    pm = peft_lora(tiny_bert(0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query", "value", "pooler.dense"]))
    return Case("bert_lora", "lora", True,
                "PEFT LoRA r=4 alpha=8 (s=2) on attention query/value (rank-3 input: MatMul) and on "
                "pooler.dense (rank-2 input: Gemm base). lora_A/lora_B random (randn*0.1). Merged = PEFT "
                "merge_and_unload().", wrap_bert(pm), bert_inputs(), BERT_OUTS,
                merged=wrap_bert(peft_merged(pm)), extra={"scalings": lora_scalings(pm)},
                peft=[PeftOut("adapter", pm, "bert_base")])


@case
def case_bert_rslora():
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True,
                     target_modules=["query", "key", "value"],
                     rank_pattern={"key": 2}, alpha_pattern={"value": 16})
    pm = peft_lora(tiny_bert(0), cfg)
    return Case("bert_rslora", "rslora", True,
                "PEFT LoRA with use_rslora=True (s = alpha/sqrt(r)) on query/key/value with per-module "
                "overrides: query r=4 alpha=8 (s=4), key r=2 (rank_pattern) alpha=8 (s=5.657), value r=4 "
                "alpha=16 (alpha_pattern, s=8). Merged = PEFT merge_and_unload().",
                wrap_bert(pm), bert_inputs(), BERT_OUTS, merged=wrap_bert(peft_merged(pm)),
                extra={"scalings": lora_scalings(pm)}, peft=[PeftOut("adapter", pm, "bert_base")])


@case
def case_bert_dora():
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                     target_modules=["query", "value", "pooler.dense"])
    pm = peft_lora(tiny_bert(0), cfg)
    return Case("bert_dora", "dora", True,
                "PEFT DoRA (use_dora=True) r=4 alpha=8 on query/value (rank-3) and pooler.dense (rank-2); "
                "lora_A/B random, lora_magnitude_vector = init norm * (1+0.2*randn). Bias not scaled. Merged "
                "= PEFT merge_and_unload().", wrap_bert(pm), bert_inputs(), BERT_OUTS,
                merged=wrap_bert(peft_merged(pm)), extra={"scalings": lora_scalings(pm)},
                peft=[PeftOut("adapter", pm, "bert_base")])


@case
def case_bert_ia3():
    from peft import IA3Config, get_peft_model

    cfg = IA3Config(
        target_modules=r".*\.(key|value|intermediate\.dense|layer\.\d+\.output\.dense)$",
        feedforward_modules=r".*\.layer\.\d+\.output\.dense$",
    )
    pm = get_peft_model(tiny_bert(0), cfg)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        n_set = 0
        for n, p in pm.named_parameters():
            if "ia3_l" in n:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                n_set += 1
    assert n_set == 8, n_set
    pm.eval()
    return Case("bert_ia3", "ia3", True,
                "PEFT IA3: output-side (non-FF, ia3_l [out,1], scales rows and bias) on key, value, "
                "intermediate.dense; input-side (feedforward_modules, ia3_l [1,in], scales input columns, "
                "bias unchanged) on the FFN down projection encoder.layer.N.output.dense. ia3_l = "
                "1+0.2*randn. Merged = PEFT merge_and_unload().",
                wrap_bert(pm), bert_inputs(), BERT_OUTS, merged=wrap_bert(peft_merged(pm)),
                peft=[PeftOut("adapter", pm, "bert_base")])


@case
def case_gpt2_lora():
    from peft import LoraConfig

    base = tiny_gpt2(0)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "wte"],
                     fan_in_fan_out=True)
    pm = peft_lora(base, cfg)
    inner = pm.base_model.model
    assert inner.lm_head.weight is inner.transformer.wte.base_layer.weight
    # Reference merge: untie first (clone the head), then merge; merging into the shared tensor
    # would also change lm_head, which in the unmerged model reads the base embedding.
    merged_pm = copy.deepcopy(pm)
    mi = merged_pm.base_model.model
    mi.lm_head.weight = nn.Parameter(mi.lm_head.weight.detach().clone())
    merged = merged_pm.merge_and_unload().eval()
    # what plain merge_and_unload() does (tied head modified too): measured, reported in notes
    naive = peft_merged(pm)
    with torch.no_grad():
        ins = gpt2_inputs()
        a = wrap_gpt2(pm)(*ins.values())[0].numpy()
        b = wrap_gpt2(naive)(*ins.values())[0].numpy()
    naive_err = rel_err(b, a)
    return Case("gpt2_lora", "lora", True,
                "PEFT LoRA r=4 alpha=8 (s=2) on GPT-2 Conv1D c_attn (fan_in_fan_out=True, fused qkv, "
                "Gemm transB=0 base) and on the token embedding wte (lora_embedding_A [r,vocab], "
                "lora_embedding_B [dim,r]); wte is tied to lm_head. The unmerged model's lm_head reads the "
                "BASE embedding (LoRA only affects the lookup). Reference merge: lm_head untied (cloned) "
                "before merge_and_unload(), so lm_head keeps E and wte gets E + s(BA)^T. Plain PEFT "
                f"merge_and_unload() on the tied model also changes lm_head: rel. error {naive_err:.3g} vs "
                "unmerged (not the reference).",
                wrap_gpt2(pm), gpt2_inputs(), ["logits"], merged=wrap_gpt2(merged),
                extra={"scalings": lora_scalings(pm), "naive_tied_merge_rel_err": naive_err},
                peft=[PeftOut("adapter", pm, "gpt2_base")])


@case
def case_vit_lora():
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv", "fc1", "fc2"])
    pm = peft_lora(tiny_vit(0), cfg)
    return Case("vit_lora", "lora", True,
                "PEFT LoRA r=4 alpha=8 (s=2) on timm ViT fused attn.qkv Linear(32,96), mlp.fc1, mlp.fc2. "
                "Merged = PEFT merge_and_unload().", pm, image_inputs(), ["logits"],
                merged=peft_merged(pm), extra={"scalings": lora_scalings(pm)},
                peft=[PeftOut("adapter", pm, "vit_base")])


# ---- ZeroI2V linear adapters ---------------------------------------------------------


class LinearAdapter(nn.Module):
    """ZeroI2V LinearAdapter: x + scale * D_fc2(D_fc1(x)), no nonlinearity, with biases."""

    def __init__(self, d, ratio=0.25, scale=0.5):
        super().__init__()
        h = int(d * ratio)
        self.D_fc1 = nn.Linear(d, h)
        self.D_fc2 = nn.Linear(h, d)
        self.scale = scale

    def forward(self, x):
        return x + self.scale * self.D_fc2(self.D_fc1(x))

    def affine(self):
        W1, b1, W2, b2 = self.D_fc1.weight, self.D_fc1.bias, self.D_fc2.weight, self.D_fc2.bias
        M = torch.eye(W1.shape[1]) + self.scale * W2 @ W1
        c = self.scale * (W2 @ b1 + b2)
        return M, c


def merged_linear(lin: nn.Linear, W, b) -> nn.Linear:
    new = nn.Linear(W.shape[1], W.shape[0], bias=True)
    with torch.no_grad():
        new.weight.copy_(W)
        new.bias.copy_(b)
    return new


def fold_adapter_before(ad: LinearAdapter, lin: nn.Linear) -> nn.Linear:
    M, c = ad.affine()
    return merged_linear(lin, lin.weight @ M, lin.weight @ c + lin.bias)


def fold_adapter_after(lin: nn.Linear, ad: LinearAdapter) -> nn.Linear:
    M, c = ad.affine()
    return merged_linear(lin, M @ lin.weight, M @ lin.bias + c)


@case
def case_vit_zeroi2v():
    m = tiny_vit(0)
    seed(11)
    for blk in m.blocks:
        d = blk.attn.qkv.in_features
        blk.attn.qkv = nn.Sequential(LinearAdapter(d), blk.attn.qkv)      # T_Adapter_in
        blk.attn.proj = nn.Sequential(blk.attn.proj, LinearAdapter(d))    # S_Adapter
        blk.mlp.fc1 = nn.Sequential(LinearAdapter(d), blk.mlp.fc1)        # MLP_Adapter
        blk.mlp.fc2 = nn.Sequential(blk.mlp.fc2, LinearAdapter(d))        # MLP_Adapter_out
    randomize_(m, lambda n, p: ".D_fc" in n, 0.1, 1234)
    m.eval()
    merged = copy.deepcopy(m)
    with torch.no_grad():
        for blk in merged.blocks:
            blk.attn.qkv = fold_adapter_before(blk.attn.qkv[0], blk.attn.qkv[1])
            blk.attn.proj = fold_adapter_after(blk.attn.proj[0], blk.attn.proj[1])
            blk.mlp.fc1 = fold_adapter_before(blk.mlp.fc1[0], blk.mlp.fc1[1])
            blk.mlp.fc2 = fold_adapter_after(blk.mlp.fc2[0], blk.mlp.fc2[1])
    merged.eval()
    return Case("vit_zeroi2v", "zeroi2v_linear_adapter", True,
                "timm ViT with hand-written ZeroI2V LinearAdapters (x + 0.5*D_fc2(D_fc1(x)), 32->8->32, "
                "biases, no nonlinearity; all adapter weights randn*0.1): before attn.qkv and before "
                "mlp.fc1 (after the LayerNorm), after attn.proj and after mlp.fc2 (before the residual "
                "add). Merged by ADAPTERS.md 6.1: M = I + s W2 W1, c = s(W2 b1 + b2); before: W' = W M, "
                "b' = W c + b; after: W' = M W, b' = M b + c.", m, image_inputs(), ["logits"],
                merged=merged)


# ---- Conv LoRA -----------------------------------------------------------------------


class TinyCNN(nn.Module):
    def __init__(self, padding_mode="zeros"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, padding_mode=padding_mode)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1, padding_mode=padding_mode)
        self.conv3 = nn.Conv2d(16, 16, 1, 1, 0)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


@case
def case_cnn_conv_lora():
    from peft import LoraConfig

    seed(0)
    base = TinyCNN()
    perturb_vectors_(base)
    pm = peft_lora(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                    target_modules=["conv1", "conv2", "conv3"]))
    return Case("cnn_conv_lora", "lora_conv", True,
                "Hand-written CNN; PEFT LoRA r=4 alpha=8 (s=2) on Conv2d conv1 (3x3 pad 1), conv2 (3x3 "
                "stride 2 pad 1), conv3 (1x1); groups 1, dilation 1, zero padding. lora_A = conv with the "
                "base kernel/stride/padding, lora_B = 1x1 conv. Merged = PEFT merge_and_unload().",
                pm, image_inputs(), ["logits"], merged=peft_merged(pm),
                extra={"scalings": lora_scalings(pm)}, peft=[PeftOut("adapter", pm, "cnn_base")])


@case
def case_conv_lora_reflect():
    from peft import LoraConfig

    seed(0)
    base = TinyCNN(padding_mode="reflect")
    perturb_vectors_(base)
    pm = peft_lora(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                    target_modules=["conv1", "conv2"]))
    naive = peft_merged(pm)
    ins = image_inputs(hw=8)  # small image: border pixels (where reflect != zero padding) dominate
    with torch.no_grad():
        err = rel_err(naive(*ins.values()).numpy(), pm(*ins.values()).numpy())
    return Case("conv_lora_reflect", "lora_conv", False,
                "Same CNN but conv1/conv2 use padding_mode='reflect'; PEFT LoRA r=4 alpha=8 on conv1, "
                "conv2; input 8x8. The LoRA A conv zero-pads while the base reflect-pads, so folding changes border "
                f"outputs: PEFT merge_and_unload() gives rel. error {err:.3g} vs unmerged. Must be refused "
                "(no merged files).", pm, ins, ["logits"],
                extra={"naive_merge_rel_err": err})


# ---- ResLoRA -------------------------------------------------------------------------


class ResLoraNet(nn.Module):
    """Tiny pre-LN residual MLP stack with ResLoRA on both linears of every block.

    Groups: 'f_in' = blocks[l].fc_in (D->H), 'f_out' = blocks[l].fc_out (H->D); within a group module l
    links to modules l-1, l-2, ... (pre_num = -1: all).  Modes (training-time forms, eval):
      bs: y = W x + b + s * sum_{k=0..l} B_{l-k} A_{l-k} x
      is: y = W x + b + s * B_l A_l (x_l + x_{l-1}),   x_{-1} := x_0
      ms: y = W x + b + s * B_l (A_l x_l + sum_{k=1..l} A_{l-k} x_{l-k})
      plain: y = W x + b (after merging)
    """

    def __init__(self, mode, D=32, H=64, L=3, r=4, alpha=8, n_out=10):
        super().__init__()
        self.mode, self.L, self.s = mode, L, alpha / r
        self.blocks = nn.ModuleList()
        for _ in range(L):
            blk = nn.Module()
            blk.ln = nn.LayerNorm(D)
            blk.fc_in = nn.Linear(D, H)
            blk.fc_out = nn.Linear(H, D)
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, n_out)
        if mode != "plain":
            # (group keys must not be Python keywords: torch.export's FX codegen would emit
            #  'self.lora_A.in.0' and fail with a SyntaxError)
            self.lora_A = nn.ParameterDict({
                "f_in": nn.ParameterList([nn.Parameter(torch.zeros(r, D)) for _ in range(L)]),
                "f_out": nn.ParameterList([nn.Parameter(torch.zeros(r, H)) for _ in range(L)])})
            self.lora_B = nn.ParameterDict({
                "f_in": nn.ParameterList([nn.Parameter(torch.zeros(H, r)) for _ in range(L)]),
                "f_out": nn.ParameterList([nn.Parameter(torch.zeros(D, r)) for _ in range(L)])})

    def lin(self, g, l, base, x, hist, record=None):
        y = base(x)
        if record is not None:
            record.setdefault((g, l), []).append(x.detach())
        if self.mode == "plain":
            return y
        A, B = self.lora_A[g], self.lora_B[g]
        if self.mode == "bs":
            d = None
            for k in range(l + 1):
                t = F.linear(F.linear(x, A[l - k]), B[l - k])
                d = t if d is None else d + t
        elif self.mode == "is":
            prev = hist[g][-1] if hist[g] else x
            hist[g].append(x)
            d = F.linear(F.linear(x + prev, A[l]), B[l])
        elif self.mode == "ms":
            xa = F.linear(x, A[l])
            mid = xa
            for k in range(1, l + 1):
                mid = mid + hist[g][l - k]
            hist[g].append(xa)
            d = F.linear(mid, B[l])
        else:
            raise ValueError(self.mode)
        return y + self.s * d

    def forward(self, x, record=None):
        hist = {"f_in": [], "f_out": []}
        for l, blk in enumerate(self.blocks):
            h = blk.ln(x)
            u = F.gelu(self.lin("f_in", l, blk.fc_in, h, hist, record))
            x = x + self.lin("f_out", l, blk.fc_out, u, hist, record)
        return self.head(self.norm(x))


def reslora_case(mode: str) -> Case:
    seed(0)
    net = ResLoraNet(mode)
    perturb_vectors_(net)
    randomize_(net, lambda n, p: n.startswith("lora_"), 0.1, 1234)
    net.eval()
    g = torch.Generator().manual_seed(555)
    x = torch.randn(2, 8, 32, generator=g)
    inputs = {"x": x}
    merged = ResLoraNet("plain")
    merged.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("lora_")})
    s = net.s
    A, B = net.lora_A, net.lora_B
    extra: dict = {"scaling": s}
    calibration = None
    factors: dict = {}
    if mode in ("is", "ms"):
        # calibration: mean Frobenius norm of each module's input over calibration batches
        gc = torch.Generator().manual_seed(777)
        calib = torch.randn(8, 2, 8, 32, generator=gc)
        rec: dict = {}
        with torch.no_grad():
            for i in range(calib.shape[0]):
                net(calib[i], record=rec)
        nbar = {k: float(torch.stack([t.norm() for t in v]).mean()) for k, v in rec.items()}
        calibration = {"x": calib.numpy()}
        extra["calibration_input_mean_frobenius_norms"] = {f"{g_}[{l}]": v for (g_, l), v in nbar.items()}
    with torch.no_grad():
        for l, (blk, mblk) in enumerate(zip(net.blocks, merged.blocks)):
            for g_, lin, mlin in (("f_in", blk.fc_in, mblk.fc_in), ("f_out", blk.fc_out, mblk.fc_out)):
                if mode == "bs":
                    delta = sum(B[g_][l - k] @ A[g_][l - k] for k in range(l + 1))
                    factors[f"{g_}[{l}]"] = {"blocks_summed": list(range(l + 1))}
                elif mode == "is":
                    # merge_flag=4 of the official code: alpha_l = nbar(x_{l-1}) / nbar(x_l); first: 1
                    alpha = 1.0 if l == 0 else nbar[(g_, l - 1)] / nbar[(g_, l)]
                    delta = (1 + alpha) * (B[g_][l] @ A[g_][l])
                    factors[f"{g_}[{l}]"] = {"alpha": alpha}
                else:
                    # merge_flag=3: W' = W + s B_l (A_l + sum_k rho_{l,k} A_{l-k}),
                    # rho_{l,k} = nbar(x_{l-k}) / nbar(x_l)
                    Aeff = A[g_][l].clone()
                    rhos = {}
                    for k in range(1, l + 1):
                        rho = nbar[(g_, l - k)] / nbar[(g_, l)]
                        rhos[k] = rho
                        Aeff = Aeff + rho * A[g_][l - k]
                    delta = B[g_][l] @ Aeff
                    factors[f"{g_}[{l}]"] = {"rho": rhos}
                mlin.weight.copy_(lin.weight + s * delta)
    merged.eval()
    extra["merge_factors"] = factors
    if mode == "bs":
        return Case("reslora_bs", "reslora_bs", True,
                    "Hand-written ResLoRA block-shortcut (res_flag=2, pre_num=-1) per ADAPTERS.md 7, on a "
                    "3-block pre-LN residual MLP (D=32, H=64; fc_in D->H, GELU, fc_out H->D; LoRA r=4 "
                    "alpha=8 s=2 on both linears, groups 'f_in' and 'f_out'). Block l adds s*sum_{k<=l} "
                    "B_k A_k x_l: earlier blocks' A/B initializers are reused in later blocks. Input 'x' "
                    "[2,8,32] float. Merged (exact): W'_l = W_l + s*sum_{k=0..l} B_k A_k.",
                    net, inputs, ["y"], merged=merged, extra=extra)
    if mode == "is":
        return Case("reslora_is", "reslora_is", "approximate",
                    "Hand-written ResLoRA input-shortcut (res_flag=1): LoRA of module l reads x_l + x_{l-1} "
                    "(x_{l-1} = input of the same-group module in the previous block; first block: 2*x_0). "
                    "Same 3-block net as reslora_bs. Merged (APPROXIMATE, official merge_flag=4 formula): "
                    "W'_l = W_l + (1+alpha_l) s B_l A_l, alpha_l = nbar(x_{l-1})/nbar(x_l) (first module "
                    "alpha=1, exact), nbar = mean Frobenius norm of the module input over the 8 calibration "
                    "batches in calibration.npz (key 'x', shape [8,2,8,32]; each batch is one graph input). "
                    "expected_merged.npz holds the merged reference's own PyTorch output; merged files are "
                    "checked against it, and their error vs the unmerged output is reported.",
                    net, inputs, ["y"], merged=merged, calibration=calibration, extra=extra)
    return Case("reslora_ms", "reslora_ms", "approximate",
                "Hand-written ResLoRA middle-shortcut (res_flag=3): LoRA middle activation of module l is "
                "A_l x_l + sum_{k=1..l} A_{l-k} x_{l-k} (the earlier blocks' A-MatMul outputs). Same net as "
                "reslora_bs. Merged (APPROXIMATE, official merge_flag=3 formula): W'_l = W_l + s B_l (A_l + "
                "sum_k rho_{l,k} A_{l-k}), rho_{l,k} = nbar(x_{l-k})/nbar(x_l), nbar = mean Frobenius norm of "
                "the module input over the calibration batches in calibration.npz (key 'x', [8,2,8,32]). "
                "expected_merged.npz: PyTorch output of the merged reference.",
                net, inputs, ["y"], merged=merged, calibration=calibration, extra=extra)


@case
def case_reslora_bs():
    return reslora_case("bs")


@case
def case_reslora_is():
    return reslora_case("is")


@case
def case_reslora_ms():
    return reslora_case("ms")


# ---- Houlsby (not foldable) ----------------------------------------------------------


class HoulsbyAdapter(nn.Module):
    def __init__(self, d, h=8):
        super().__init__()
        self.down = nn.Linear(d, h)
        self.up = nn.Linear(h, d)

    def forward(self, x):
        return x + self.up(F.gelu(self.down(x)))


@case
def case_houlsby():
    m = tiny_vit(0)
    seed(12)
    for blk in m.blocks:
        d = blk.attn.proj.out_features
        blk.attn.proj = nn.Sequential(blk.attn.proj, HoulsbyAdapter(d))
        blk.mlp.fc2 = nn.Sequential(blk.mlp.fc2, HoulsbyAdapter(d))
    randomize_(m, lambda n, p: ".1.down." in n or ".1.up." in n, 0.1, 1234)
    m.eval()
    return Case("houlsby", "houlsby", False,
                "timm ViT with Houlsby bottleneck adapters h + up(GELU(down(h))) (32->8->32, biases) after "
                "attn.proj and after mlp.fc2 of each block. GELU between down and up: not affine, must be "
                "refused; no merged files.", m, image_inputs(), ["logits"])


# ---- PiSSA ---------------------------------------------------------------------------


@case
def case_pissa():
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights="pissa",
                     target_modules=["query", "value"])
    base = tiny_bert(0)
    orig = {n: p.detach().clone() for n, p in base.named_parameters()}
    pm = peft_lora(base, cfg)
    # sanity: base now holds W_res = W - s B0 A0 (checked before randomizing would be exact; here just
    # record that the base weights differ from the original)
    changed = [n for n, p in pm.base_model.model.named_parameters()
               if n.replace(".base_layer", "") in orig and "base_layer" in n
               and not torch.equal(p, orig[n.replace(".base_layer", "")])]
    return Case("pissa", "pissa", True,
                "PEFT LoRA with init_lora_weights='pissa' (r=4 alpha=8) on BERT query/value: the base "
                "weights are overwritten with W_res = W - s B0 A0 (SVD top-r), then lora_A/B set to random "
                "values (randn*0.1). The ONNX looks like plain LoRA; the base initializers hold W_res. "
                "Merged = PEFT merge_and_unload() (W_res + s B A).",
                wrap_bert(pm), bert_inputs(), BERT_OUTS, merged=wrap_bert(peft_merged(pm)),
                extra={"scalings": lora_scalings(pm), "base_weights_rewritten": changed})


# ---- Hydra ---------------------------------------------------------------------------


class LowRankBranch(nn.Module):
    def __init__(self, din, dout, r=4):
        super().__init__()
        self.down = nn.Linear(din, r)
        self.up = nn.Linear(r, dout)

    def forward(self, x):
        return self.up(self.down(x))

    def affine(self):
        return self.up.weight @ self.down.weight, self.up.weight @ self.down.bias + self.up.bias


class HydraLinear(nn.Module):
    """y = L(h) + s*P(h) + s*S(L(h)) (Hydra: parallel + sequential low-rank branches)."""

    def __init__(self, base: nn.Linear, r=4, scale=0.5):
        super().__init__()
        self.base = base
        self.par = LowRankBranch(base.in_features, base.out_features, r)
        self.seq = LowRankBranch(base.out_features, base.out_features, r)
        self.scale = scale

    def forward(self, h):
        z = self.base(h)
        return z + self.scale * self.par(h) + self.scale * self.seq(z)

    def merged(self) -> nn.Linear:
        P, p = self.par.affine()
        S, q = self.seq.affine()
        W, b, s = self.base.weight, self.base.bias, self.scale
        return merged_linear(self.base, W + s * (P + S @ W), b + s * (S @ b + p + q))


@case
def case_hydra():
    m = tiny_vit(0)
    seed(13)
    for blk in m.blocks:
        blk.mlp.fc2 = HydraLinear(blk.mlp.fc2)
        blk.attn.proj = HydraLinear(blk.attn.proj)
    randomize_(m, lambda n, p: ".par." in n or ".seq." in n, 0.1, 1234)
    m.eval()
    merged = copy.deepcopy(m)
    with torch.no_grad():
        for blk in merged.blocks:
            blk.mlp.fc2 = blk.mlp.fc2.merged()
            blk.attn.proj = blk.attn.proj.merged()
    merged.eval()
    return Case("hydra", "hydra", True,
                "timm ViT with hand-written Hydra on mlp.fc2 and attn.proj: y = L(h) + s*P(h) + s*S(L(h)), "
                "P reads the Linear input, S its output (bias included); each branch down(r=4, bias) -> "
                "up(bias), s=0.5, no nonlinearity. Merged (ADAPTERS.md 8.4, using each Linear's own W,b): "
                "W' = W + s(P + S W), b' = b + s(S b + p + q).", m, image_inputs(), ["logits"],
                merged=merged)


# ---- AdapterBias ---------------------------------------------------------------------


class AdapterBiasLinear(nn.Module):
    """out = dense(h) + v * (w^T h + c)  (AdapterBias, L_alpha reads the Linear's input)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.adapter_alpha = nn.Linear(base.in_features, 1)
        self.adapter_vector = nn.Parameter(torch.zeros(base.out_features))

    def forward(self, h):
        return self.base(h) + self.adapter_alpha(h) * self.adapter_vector

    def merged(self) -> nn.Linear:
        w = self.adapter_alpha.weight[0]
        c = self.adapter_alpha.bias[0]
        v = self.adapter_vector
        return merged_linear(self.base, self.base.weight + torch.outer(v, w), self.base.bias + c * v)


@case
def case_adapterbias():
    m = tiny_bert(0)
    for layer in m.encoder.layer:
        layer.output.dense = AdapterBiasLinear(layer.output.dense)
    randomize_(m, lambda n, p: "adapter_" in n, 0.1, 1234)
    m.eval()
    merged = copy.deepcopy(m)
    with torch.no_grad():
        for layer in merged.encoder.layer:
            layer.output.dense = layer.output.dense.merged()
    merged.eval()
    return Case("adapterbias", "adapterbias", True,
                "BERT with hand-written AdapterBias on every BertOutput.dense (FFN down projection, "
                "input = post-GELU intermediate h): out = dense(h) + v*(w^T h + c), L_alpha = Linear(64,1), "
                "v in R^32, all randn*0.1. Merged: W' = W + v w^T, b' = b + c v.",
                wrap_bert(m), bert_inputs(), BERT_OUTS, merged=wrap_bert(merged))


# ---- nn.MultiheadAttention LoRA ------------------------------------------------------


class MHANet(nn.Module):
    def __init__(self, d=32, heads=2, n_out=10):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        h = self.ln(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(x + a)


@case
def case_mha_lora():
    from peft import LoraConfig

    seed(0)
    base = MHANet()
    perturb_vectors_(base)
    pm = peft_lora(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["attn"]))
    g = torch.Generator().manual_seed(556)
    ins = {"x": torch.randn(2, 8, 32, generator=g)}
    # PEFT 0.21.2 bug: MultiheadAttention.merge() adds the out_proj delta to a copy of the weight AND
    # then calls out_proj.merge(), which adds it again in place (.data), so eager forward and
    # merge_and_unload() use Wo + 2 s Bo Ao, while a TorchScript trace records only the traced copy
    # (Wo + s Bo Ao).  Measure that mismatch, then zero out_proj.lora_B so the three agree.
    with torch.no_grad():
        eager_2x = pm(*ins.values()).numpy()
        out_lora = pm.base_model.model.attn.base_layer.out_proj
        Wo = out_lora.base_layer.weight
        d1 = out_lora.get_delta_weight("default")
        ref = copy.deepcopy(pm)
        rb = ref.base_model.model.attn.base_layer.out_proj
        rb.lora_B["default"].weight.zero_()
        rb.base_layer.weight.add_(d1)  # single delta, applied as a base weight change
        once = ref(*ins.values()).numpy()
        double_err = rel_err(eager_2x, once)
        out_lora.lora_B["default"].weight.zero_()
    return Case("mha_lora", "lora_mha", True,
                "nn.MultiheadAttention (D=32, 2 heads, batch_first, self-attention q=k=v, inference fast "
                "path disabled) with PEFT LoRA r=4 alpha=8 (s=2) on in_proj (fused [3D,D], lora_B [3D,r], "
                "random) and out_proj (lora_A random, lora_B ZERO, see below). PEFT's MHA forward merges "
                "the LoRA into in_proj_weight/out_proj.weight, runs the base MHA and unmerges, so the "
                "TorchScript graph computes W + s*B@A from constants (base weights become Constant nodes, "
                "not initializers) instead of a parallel activation branch. out_proj.lora_B is zeroed "
                "because PEFT 0.21.2 applies the out_proj delta twice in eager forward and in "
                "merge_and_unload() but the trace records it once (rel. output error "
                f"{double_err:.3g} with a random out_proj lora_B). Dynamo cannot export PEFT's MHA. "
                "Merged = PEFT merge_and_unload().",
                pm, ins, ["y"], merged=peft_merged(pm),
                extra={"scalings": lora_scalings(pm), "peft_out_proj_double_delta_rel_err": double_err})


# ---- extras --------------------------------------------------------------------------


@case
def case_bert_lora_bias():
    from peft import LoraConfig

    pm = peft_lora(tiny_bert(0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, lora_bias=True,
                                            target_modules=["query", "value"]))
    assert any("lora_B.default.bias" in n for n, _ in pm.named_parameters())
    return Case("bert_lora_bias", "lora", True,
                "PEFT LoRA r=4 alpha=8 (s=2) with lora_bias=True on query/value: lora_B has a bias b_B "
                "(random), so the branch is s*(B(A x) + b_B). Merge: W' = W + s B A, b' = b + s b_B. "
                "Merged = PEFT merge_and_unload().", wrap_bert(pm), bert_inputs(), BERT_OUTS,
                merged=wrap_bert(peft_merged(pm)), extra={"scalings": lora_scalings(pm)})


@case
def case_bert_multi_lora():
    from peft import LoraConfig

    pm = peft_lora(tiny_bert(0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query", "value"]))
    pm.add_adapter("second", LoraConfig(r=2, lora_alpha=6, lora_dropout=0.0,
                                        target_modules=["value", "intermediate.dense"]))
    pm.base_model.set_adapter(["default", "second"])
    randomize_(pm, is_lora_param, 0.1, 2345)
    pm.eval()
    return Case("bert_multi_lora", "lora", True,
                "Two PEFT LoRA adapters active at once: 'default' r=4 alpha=8 (s=2) on query/value and "
                "'second' r=2 alpha=6 (s=3) on value/intermediate.dense; value therefore carries two "
                "parallel LoRA branches whose deltas add. Merged = PEFT merge_and_unload() (both).",
                wrap_bert(pm), bert_inputs(), BERT_OUTS, merged=wrap_bert(peft_merged(pm)),
                extra={"scalings": lora_scalings(pm)})


@case
def case_cnn_dora():
    from peft import LoraConfig

    seed(0)
    base = TinyCNN()
    perturb_vectors_(base)
    pm = peft_lora(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                                    target_modules=["conv1", "conv2"]))
    return Case("cnn_dora", "dora_conv", True,
                "PEFT DoRA r=4 alpha=8 on Conv2d conv1 (3x3) and conv2 (3x3 stride 2) of the tiny CNN; "
                "magnitude [1,C_out,1,1] = init norm*(1+0.2 randn); norm over (C_in,kH,kW) per output "
                "channel. Merged = PEFT merge_and_unload().", pm, image_inputs(), ["logits"],
                merged=peft_merged(pm), extra={"scalings": lora_scalings(pm)})


# --------------------------------------------------------------------------------------
# Block 3: bases for PEFT adapter folders, weighted multi-adapter, extraction fixtures
# --------------------------------------------------------------------------------------


@case
def case_cnn_base():
    seed(0)
    m = TinyCNN()
    perturb_vectors_(m)
    m.eval()
    return Case("cnn_base", "none", None,
                "The plain TinyCNN of cnn_conv_lora (same seed and 1-D perturbation, no adapter): the base "
                "that cnn_conv_lora/adapter applies to. Conv2d 3x3 pad 1, 3x3 stride 2 pad 1, 1x1, ReLU, "
                "global mean, Linear(16,10).", m, image_inputs(), ["logits"])


MULTI_PEFT_WEIGHTS = [0.7, 0.3]


@case
def case_bert_multi_peft():
    from peft import LoraConfig

    pa = peft_lora(tiny_bert(0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query", "value"]), gen_seed=3456)
    pb = peft_lora(tiny_bert(0), LoraConfig(r=2, lora_alpha=6, lora_dropout=0.0, use_rslora=False,
                                            target_modules=["value", "key"]), gen_seed=4567)
    # reference: W' = W + sum_i w_i * s_i * B_i A_i, deltas summed in float64, added once, stored float32
    deltas: dict = {}
    for w, pm in zip(MULTI_PEFT_WEIGHTS, (pa, pb)):
        for n, mod in pm.base_model.model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                A = mod.lora_A["default"].weight.detach().double()
                B = mod.lora_B["default"].weight.detach().double()
                deltas[n] = deltas.get(n, 0) + w * mod.scaling["default"] * (B @ A)
    merged = tiny_bert(0)
    with torch.no_grad():
        for n, d in sorted(deltas.items()):
            lin = merged.get_submodule(n)
            lin.weight.copy_((lin.weight.double() + d).float())
    merged.eval()
    return Case("bert_multi_peft", "lora_weighted", True,
                "Two separate PEFT LoRA adapters for bert_base (tiny_bert(0)), applied with weights "
                "[0.7, 0.3]: adapter_a r=4 alpha=8 (s=2) on query/value (lora seed 3456), adapter_b r=2 "
                "alpha=6 (s=3, use_rslora=False) on value/key (lora seed 4567); value gets both. "
                "Reference (used for expected.npz and merged.*): W' = W + 0.7*2*B_a A_a + 0.3*3*B_b A_b, "
                "the weighted deltas summed in float64 and added to the float32 base once. There are no "
                "unmerged files: the input is bert_base/unmerged.{ts,dynamo}.onnx + adapter_a/ + "
                "adapter_b/. Cross-check: PEFT add_weighted_adapter(['a','b'], [0.7,0.3], "
                "combination_type='cat') on the reloaded folders (rel. error in "
                "peft_add_weighted_adapter_cat_rel_err).",
                None, bert_inputs(), BERT_OUTS, merged=wrap_bert(merged),
                extra={"weights": MULTI_PEFT_WEIGHTS,
                       "scalings": {"adapter_a": lora_scalings(pa), "adapter_b": lora_scalings(pb)}},
                peft=[PeftOut("adapter_a", pa, "bert_base", MULTI_PEFT_WEIGHTS[0]),
                      PeftOut("adapter_b", pb, "bert_base", MULTI_PEFT_WEIGHTS[1])])


@case
def case_bert_full_ft():
    m = tiny_bert(0)
    g = torch.Generator().manual_seed(5678)
    changed = []
    with torch.no_grad():
        for n, mod in m.named_modules():
            if isinstance(mod, nn.Linear):
                mod.weight.add_(0.02 * torch.randn(mod.weight.shape, generator=g))
                changed.append(f"{n}.weight")
    assert len(changed) == 13, changed
    return Case("bert_full_ft", "full_finetune", None,
                "Extraction fixture: 'fine-tuned' tiny_bert(0) where every nn.Linear weight (per layer "
                "query/key/value, attention.output.dense, intermediate.dense, output.dense; plus "
                "pooler.dense: 13 matrices) got full-rank noise W += 0.02*randn (generator seed 5678; the "
                "init std of these weights is also 0.02). Biases, LayerNorms and embeddings are unchanged. "
                "Same graph structure and initializer names/shapes as bert_base's exports (checked), "
                "only the values of changed_initializers differ. expected.npz = PyTorch output of the tuned "
                "model. No merged files.", wrap_bert(m), bert_inputs(), BERT_OUTS,
                same_graph_as="bert_base",
                extra={"extract": {"base_case": "bert_base", "changed_parameters": changed,
                                   "change": "W += 0.02*randn (full rank), torch.Generator seed 5678, "
                                             "in named_modules order"}})


LOWRANK_FT_TARGETS = ("attention.self.query", "attention.self.value", "intermediate.dense")


@case
def case_bert_lowrank_ft():
    m = tiny_bert(0)
    g = torch.Generator().manual_seed(6789)
    deltas = {}
    svals = {}
    max_back = 0.0
    with torch.no_grad():
        for n, mod in m.named_modules():
            if isinstance(mod, nn.Linear) and n.endswith(LOWRANK_FT_TARGETS):
                out_f, in_f = mod.weight.shape
                B = torch.randn(out_f, 4, generator=g, dtype=torch.float64) * 0.1
                A = torch.randn(4, in_f, generator=g, dtype=torch.float64) * 0.1
                w0 = mod.weight.detach().clone()
                mod.weight.copy_((w0.double() + B @ A).float())
                d = (mod.weight.detach() - w0).numpy()
                deltas[n] = d
                # base + delta in float32 is tuned only up to rounding (the subtraction was rounded)
                back = (w0 + torch.from_numpy(d) - mod.weight.detach()).abs().max().item()
                max_back = max(max_back, back)
                sv = np.linalg.svd(d.astype(np.float64), compute_uv=False)
                svals[n] = [float(f"{x:.4g}") for x in sv[:6]]
    assert len(deltas) == 6, list(deltas)
    return Case("bert_lowrank_ft", "lowrank_finetune", None,
                "Extraction fixture: tiny_bert(0) with an exactly rank-4 delta B@A (B [out,4], A [4,in], "
                "both 0.1*randn float64, generator seed 6789, in named_modules order, B drawn before A) added "
                "in float64 to the query, value and intermediate.dense weights of both layers (6 matrices) "
                "and stored as float32; everything else unchanged. true_delta.npz: module path (e.g. "
                "encoder.layer.0.attention.self.query) -> the float32 delta actually applied (tuned - base "
                "weight, [out,in], computed in float32), so it is rank 4 up to float32 rounding "
                "(singular values in extract.delta_singular_values); base + true_delta gives the tuned "
                "weight only up to float32 rounding (extract.base_plus_true_delta_vs_tuned_max_abs_err). "
                "Same graph structure as bert_base (checked). expected.npz = PyTorch output of the tuned model. No merged files.",
                wrap_bert(m), bert_inputs(), BERT_OUTS, same_graph_as="bert_base",
                extra_npz={"true_delta.npz": deltas},
                extra={"extract": {"base_case": "bert_base",
                                   "changed_parameters": [f"{n}.weight" for n in deltas],
                                   "change": "W += B@A, rank 4, float64 product, stored float32",
                                   "rank": 4, "delta_singular_values": svals,
                                   "base_plus_true_delta_vs_tuned_max_abs_err": max_back}})


# --------------------------------------------------------------------------------------
# Block 4: LAuReL (RW: exact alpha fold; LR: refuse) and TinyTL lite residual (refuse)
# --------------------------------------------------------------------------------------


class LaurelNet(nn.Module):
    """Pre-LN residual MLP stack with LAuReL residuals (ADAPTERS.md 9.2), D=32, H=64, L=3 blocks:
      rw:    x_{i+1} = alpha_i * f_i(x_i) + beta_i * x_i
      lr:    x_{i+1} = f_i(x_i) + (x_i + (x_i A_i) B_i)      A_i [D,r], B_i [r,D], no biases
      plain: x_{i+1} = f_i(x_i) + beta_i * x_i   (rw with alpha folded into fc2; beta kept)
    f_i = fc2(GELU(fc1(LN(x)))); head = Linear(LN(x)). alpha/beta are 0-d scalar parameters."""

    def __init__(self, mode, D=32, H=64, L=3, r=4, n_out=10):
        super().__init__()
        self.mode = mode
        self.blocks = nn.ModuleList()
        for _ in range(L):
            blk = nn.Module()
            blk.ln = nn.LayerNorm(D)
            blk.fc1 = nn.Linear(D, H)
            blk.fc2 = nn.Linear(H, D)
            if mode == "rw":
                blk.laurel_alpha = nn.Parameter(torch.tensor(1.0))
            if mode in ("rw", "plain"):
                blk.laurel_beta = nn.Parameter(torch.tensor(1.0))
            if mode == "lr":
                blk.laurel_A = nn.Parameter(torch.zeros(D, r))
                blk.laurel_B = nn.Parameter(torch.zeros(r, D))
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, n_out)

    def forward(self, x):
        for blk in self.blocks:
            f = blk.fc2(F.gelu(blk.fc1(blk.ln(x))))
            if self.mode == "rw":
                x = blk.laurel_alpha * f + blk.laurel_beta * x
            elif self.mode == "plain":
                x = f + blk.laurel_beta * x
            else:
                x = f + (x + (x @ blk.laurel_A) @ blk.laurel_B)
        return self.head(self.norm(x))


def laurel_net(mode: str) -> LaurelNet:
    seed(0)
    net = LaurelNet(mode)
    perturb_vectors_(net)  # 1-D only; the 0-d alpha/beta and 2-D A/B are set below
    return net


def laurel_inputs() -> dict:
    g = torch.Generator().manual_seed(557)
    return {"x": torch.randn(2, 8, 32, generator=g)}


@case
def case_laurel_rw():
    net = laurel_net("rw")
    g = torch.Generator().manual_seed(2468)
    alphas, betas = [], []
    with torch.no_grad():
        for blk in net.blocks:
            blk.laurel_alpha.fill_(0.7 + 0.1 * torch.randn((), generator=g).item())
            blk.laurel_beta.fill_(1.3 + 0.1 * torch.randn((), generator=g).item())
            alphas.append(blk.laurel_alpha.item())
            betas.append(blk.laurel_beta.item())
    net.eval()
    merged = laurel_net("plain")
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("laurel_alpha")}
    merged.load_state_dict(sd)
    with torch.no_grad():
        for mb, ub in zip(merged.blocks, net.blocks):
            mb.fc2.weight.mul_(ub.laurel_alpha)
            mb.fc2.bias.mul_(ub.laurel_alpha)
    merged.eval()
    return Case("laurel_rw", "laurel_rw", True,
                "Hand-written pre-LN residual MLP stack (D=32, H=64, 3 blocks, final LayerNorm + "
                "Linear(32,10) head) with LAuReL-RW residuals x_{i+1} = alpha_i*f_i(x_i) + beta_i*x_i, "
                "f_i = fc2(GELU(fc1(LN(x_i)))); alpha_i = 0.7+0.1 randn, beta_i = 1.3+0.1 randn (0-d "
                "parameters used directly, no softmax/sigmoid; values in laurel_alpha/laurel_beta). "
                "ADAPTERS.md 9.2: alpha folds exactly into fc2 (W' = alpha W, b' = alpha b); beta scales "
                "the skip path where no op exists, so the reference keeps it as one scalar Mul per block "
                "(no scale propagation). Merged: fc2 scaled by alpha, x_{i+1} = f'_i(x_i) + beta_i*x_i.",
                net, laurel_inputs(), ["y"], merged=merged,
                extra={"laurel_alpha": alphas, "laurel_beta": betas})


@case
def case_laurel_lr():
    net = laurel_net("lr")
    randomize_(net, lambda n, p: ".laurel_" in n, 0.1, 1234)
    net.eval()
    return Case("laurel_lr", "laurel_lr", False,
                "Same stack as laurel_rw but with LAuReL-LR residuals x_{i+1} = f_i(x_i) + (x_i + "
                "(x_i A_i) B_i), A_i [32,4], B_i [4,32] (randn*0.1, no biases, alpha = beta = 1). The "
                "low-rank map acts on the residual stream itself: its input x_i is the block input (graph "
                "input x for block 0, an Add otherwise) and its output goes through the residual Add to the "
                "next block's LayerNorm and skip (final: LayerNorm before the head); no Linear/MatMul with "
                "a weight is adjacent to it without a norm in between, so it cannot be absorbed (ADAPTERS.md "
                "9.2: stays as two small MatMuls per block). Must be refused in zero-cost --strict mode; "
                "no merged files.", net, laurel_inputs(), ["y"])


class LiteResidual(nn.Module):
    """TinyTL LiteResidualModule-style branch: AvgPool(2) -> grouped 3x3 conv -> BN -> ReLU -> 1x1 conv
    -> BN -> bilinear upsample back to the input size."""

    def __init__(self, cin, cout, groups=4):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        r = self.pool(x)
        r = F.relu(self.bn1(self.conv1(r)))
        r = self.bn2(self.conv2(r))
        return F.interpolate(r, size=x.shape[2:], mode="bilinear", align_corners=False)


class TinyTLNet(nn.Module):
    """stem Conv3x3(3->16, stride 2)-BN-ReLU (32x32 -> 16x16), then two Conv3x3(16->16)-BN-ReLU blocks,
    each with a lite residual branch added to the block output, global mean, Linear(16,10)."""

    def __init__(self, c=16, n_blocks=2, n_out=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            blk = nn.Module()
            blk.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            blk.bn = nn.BatchNorm2d(c)
            blk.lite_residual = LiteResidual(c, c)
            self.blocks.append(blk)
        self.fc = nn.Linear(c, n_out)

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            x = F.relu(blk.bn(blk.conv(x))) + blk.lite_residual(x)
        return self.fc(x.mean(dim=(2, 3)))


@case
def case_tinytl():
    seed(0)
    m = TinyTLNet()
    perturb_vectors_(m)
    randomize_bn_(m)
    m.eval()
    return Case("tinytl", "tinytl_lite_residual", False,
                "Hand-written CNN with TinyTL-style lite residuals (mit-han-lab/tinyml LiteResidualModule): "
                "stem Conv3x3 s2-BN-ReLU, then 2 blocks y = ReLU(BN(Conv3x3(x))) + lite(x), lite = "
                "AvgPool(2) -> grouped Conv3x3 (16->16, groups 4) -> BN -> ReLU -> Conv1x1 -> BN -> "
                "bilinear upsample (align_corners=False) to the block size; global mean, Linear(16,10). "
                "Random non-trivial BN stats. Exported with default flags (the exporters fold eval-mode "
                "BN into the convs). ReLU inside the branch, pooling + bilinear resampling, and the branch is "
                "parallel to a nonlinear block (Conv-BN-ReLU), not to one linear op (ADAPTERS.md 10): must "
                "be refused; no merged files.", m, image_inputs(), ["logits"])


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


# exporter failures that are known and recorded in the manifest; any other failure makes the run fail
EXPECTED_EXPORT_FAILURES = {
    ("mha_lora", "unmerged_dynamo"),  # PEFT swaps MHA parameters during forward; torch.export rejects it
}

EXPORT_FLAGS = {
    # case -> (ts_kwargs, dynamo_kwargs) for the UNMERGED export
    "resnet_bn": ({"training": torch.onnx.TrainingMode.PRESERVE}, {"keep_batchnorm": True}),
}


def unwrap(m: nn.Module) -> nn.Module:
    return m.m if isinstance(m, HFWrap) else m


def rewrap(like: nn.Module, inner: nn.Module) -> nn.Module:
    return HFWrap(inner, like.in_keys, like.out_keys).eval() if isinstance(like, HFWrap) else inner.eval()


def base_case_model(base_case: str) -> nn.Module:
    """A fresh instance of a base case's (possibly HFWrap-wrapped) model."""
    c = dict(CASES)[base_case]()
    assert c.unmerged is not None and c.merged is None, base_case
    return c.unmerged


def peft_base_state(pm) -> dict:
    """The PEFT model's base parameters/buffers under the plain model's names."""
    out = {}
    for k, v in pm.get_base_model().state_dict().items():
        if "lora_" in k or "ia3_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


def save_peft_adapter(pm, d: Path) -> None:
    """save_pretrained, minus the generated model card (README.md), with the config made
    deterministic: PEFT stores target_modules as a set and writes it in hash order (varies run to
    run with PYTHONHASHSEED), so list-valued module fields are sorted; auto_mapping of a class defined
    in this script ("__main__" or the module name, depending on how it is run) is set to null. The
    config is rewritten exactly as PEFT writes it (json.dumps(indent=2, sort_keys=True)). It must not
    hold local paths (base_model_name_or_path is null for models built from a config)."""
    pm.save_pretrained(str(d))
    (d / "README.md").unlink(missing_ok=True)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors"], names
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("target_modules", "modules_to_save", "exclude_modules", "feedforward_modules"):
        if isinstance(cfg.get(k), list):
            cfg[k] = sorted(cfg[k])
    am = cfg.get("auto_mapping")
    if am and am.get("parent_library") in ("__main__", __name__):
        cfg["auto_mapping"] = None
    text = json.dumps(cfg, indent=2, sort_keys=True)
    cfg_path.write_text(text)
    assert str(ROOT) not in text and "/tmp" not in text and "/work" not in text, text
    assert cfg.get("base_model_name_or_path") is None


def write_peft_adapters(name: str, c: Case, out: Path, expected: dict) -> tuple[dict, list]:
    """Write c.peft folders, assert that each PEFT model's base weights equal its base case's model,
    reload the folders onto a fresh base with PeftModel.from_pretrained and compare with expected.npz
    (several folders: PEFT add_weighted_adapter(cat) with the recorded weights)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    failed = []
    infos = []
    for p in c.peft:
        d = out / p.subdir
        save_peft_adapter(p.pm, d)
        base = base_case_model(p.base_case)
        bs, ps = unwrap(base).state_dict(), peft_base_state(p.pm)
        if sorted(bs) != sorted(ps) or any(not torch.equal(bs[k], ps[k]) for k in bs):
            failed.append(f"{p.subdir}: PEFT base weights differ from {p.base_case}'s model")
        tensors = {}
        with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                tensors[k] = f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
        info = {"dir": f"{name}/{p.subdir}", "base_case": p.base_case,
                "base_files": {"ts": f"{p.base_case}/unmerged.ts.onnx",
                               "dynamo": f"{p.base_case}/unmerged.dynamo.onnx"}}
        if p.weight is not None:
            info["weight"] = p.weight
        info["tensors"] = tensors
        infos.append(info)

    feeds = tuple(c.inputs.values())
    base = base_case_model(c.peft[0].base_case)
    names = ["default"] if len(c.peft) == 1 else [f"a{i}" for i in range(len(c.peft))]
    loaded = PeftModel.from_pretrained(unwrap(base), str(out / c.peft[0].subdir), adapter_name=names[0])
    for p, an in zip(c.peft[1:], names[1:]):
        loaded.load_adapter(str(out / p.subdir), adapter_name=an)
    for p, an in zip(c.peft, names):  # the folders hold exactly the adapter tensors of the PEFT model
        a = get_peft_model_state_dict(p.pm)
        b = get_peft_model_state_dict(loaded, adapter_name=an)
        if sorted(a) != sorted(b) or any(not torch.equal(a[k], b[k]) for k in a):
            failed.append(f"{p.subdir}: reloaded adapter tensors differ")
    if len(c.peft) > 1:
        loaded.add_weighted_adapter(names, [p.weight for p in c.peft], "combined", combination_type="cat")
        loaded.set_adapter("combined")
    loaded.eval()
    with torch.no_grad():
        got = to_tuple(rewrap(base, loaded)(*feeds))
    errs = {k: rel_err(v.float().numpy(), expected[k]) for k, v in zip(c.output_names, got)}
    key = "reload_rel_err" if len(c.peft) == 1 else "peft_add_weighted_adapter_cat_rel_err"
    if max(errs.values()) > 1e-6:
        failed.append(f"PEFT reload of the adapter folder(s) vs expected.npz: {errs}")
    if len(c.peft) == 1:
        infos[0][key] = errs
        return {"peft_adapter": infos[0]}, failed
    return {"peft_adapters": infos, key: errs}, failed


def compare_graph_structure(path: Path, base_path: Path, params: dict) -> dict:
    """Same nodes (op_type, domain, name, inputs, outputs, attributes), graph inputs/outputs, opsets
    and initializer names/dtypes/shapes (in order); report which initializers' values differ and which
    changed parameter (name -> array in params) each one holds, as stored or transposed."""
    from onnx import numpy_helper

    a, b = onnx.load(str(path)), onnx.load(str(base_path))
    diffs = []
    if a.ir_version != b.ir_version or list(a.opset_import) != list(b.opset_import):
        diffs.append("ir_version/opset_import")
    for what in ("input", "output"):
        if [x.SerializeToString() for x in getattr(a.graph, what)] != \
                [x.SerializeToString() for x in getattr(b.graph, what)]:
            diffs.append(f"graph {what}s")
    if len(a.graph.node) != len(b.graph.node):
        diffs.append(f"node count {len(a.graph.node)} != {len(b.graph.node)}")
    for i, (na, nb) in enumerate(zip(a.graph.node, b.graph.node)):
        if (na.op_type, na.domain, na.name, list(na.input), list(na.output)) != \
                (nb.op_type, nb.domain, nb.name, list(nb.input), list(nb.output)) or \
                [x.SerializeToString() for x in na.attribute] != [x.SerializeToString() for x in nb.attribute]:
            diffs.append(f"node {i}: {na.op_type} {na.name} vs {nb.op_type} {nb.name}")
    ia = [(t.name, t.data_type, list(t.dims)) for t in a.graph.initializer]
    ib = [(t.name, t.data_type, list(t.dims)) for t in b.graph.initializer]
    if ia != ib:
        diffs.append("initializer names/dtypes/shapes")
    changed = {}
    if ia == ib:
        for ta, tb in zip(a.graph.initializer, b.graph.initializer):
            arr = numpy_helper.to_array(ta)
            if not np.array_equal(arr, numpy_helper.to_array(tb)):
                hits = [n for n, v in params.items() if np.array_equal(arr, v)] + \
                       [f"{n} (transposed)" for n, v in params.items() if v.ndim == 2 and np.array_equal(arr, v.T)]
                changed[ta.name] = hits[0] if len(hits) == 1 else hits
        holders = [v for v in changed.values() if isinstance(v, str)]
        if len(holders) != len(changed) or sorted(h.removesuffix(" (transposed)") for h in holders) != sorted(params):
            diffs.append(f"changed initializers do not map one-to-one to the changed parameters: {changed}")
    return {"base_file": base_path.relative_to(ROOT).as_posix(), "same_structure": not diffs,
            "differences": diffs[:20], "changed_initializers": changed}


def build_and_write(name: str, fn: Callable[[], Case]) -> dict:
    out = ROOT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    entry: dict = {"case": name, "files": {}, "exporter_errors": {}, "checks": {}, "sizes": {}}
    try:
        c = fn()
    except Exception as e:  # noqa: BLE001
        entry.update(method="?", foldable=None, notes="case construction failed",
                     build_error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
        return entry
    entry.update(method=c.method, foldable=c.foldable, notes=c.notes)
    if c.merged_notes:
        entry["merged_notes"] = c.merged_notes
    entry.update(c.extra)
    ref_model = c.unmerged if c.unmerged is not None else c.merged
    if c.unmerged is None:
        entry["expected_from"] = "merged"
    ref_model.eval()
    with torch.no_grad():
        exp = to_tuple(ref_model(*c.inputs.values()))
    assert len(exp) == len(c.output_names), (name, len(exp), c.output_names)
    expected = {k: v.detach().float().numpy() for k, v in zip(c.output_names, exp)}
    feeds = {k: v.numpy() for k, v in c.inputs.items()}
    np.savez(out / "inputs.npz", **feeds)
    np.savez(out / "expected.npz", **expected)
    entry["files"]["inputs"] = f"{name}/inputs.npz"
    entry["files"]["expected"] = f"{name}/expected.npz"
    entry["input_shapes"] = {k: [list(v.shape), str(v.dtype)] for k, v in feeds.items()}
    entry["output_shapes"] = {k: list(v.shape) for k, v in expected.items()}

    merged_expected = None
    if c.unmerged is None:
        merged_expected = expected
    elif c.merged is not None:
        c.merged.eval()
        with torch.no_grad():
            mexp = to_tuple(c.merged(*c.inputs.values()))
        merged_expected = {k: v.detach().float().numpy() for k, v in zip(c.output_names, mexp)}
        entry["torch_merged_vs_unmerged_rel_err"] = {
            k: rel_err(merged_expected[k], expected[k]) for k in expected}
        if c.foldable == "approximate":
            np.savez(out / "expected_merged.npz", **merged_expected)
            entry["files"]["expected_merged"] = f"{name}/expected_merged.npz"
    if c.calibration is not None:
        np.savez(out / "calibration.npz", **c.calibration)
        entry["files"]["calibration"] = f"{name}/calibration.npz"

    ts_kw, dy_kw = EXPORT_FLAGS.get(name, ({}, {}))
    jobs = []
    if c.unmerged is not None:
        jobs += [("unmerged_ts", "unmerged.ts.onnx", c.unmerged, False, ts_kw, {}),
                 ("unmerged_dynamo", "unmerged.dynamo.onnx", c.unmerged, True, {}, dy_kw)]
    if c.merged is not None:
        jobs += [("merged_ts", "merged.ts.onnx", c.merged, False, {}, {}),
                 ("merged_dynamo", "merged.dynamo.onnx", c.merged, True, {}, {})]
    for key, fname, model, dyn, tkw, dkw in jobs:
        path = out / fname
        try:
            export(model, c.inputs, c.output_names, path, dyn, tkw, dkw)
        except Exception as e:  # noqa: BLE001
            msg = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")  # drop ANSI colours
            entry["exporter_errors"][key] = msg[:4000]
            print(f"  !! {name} {key}: export failed: {msg[:300]}")
            if path.exists():
                path.unlink()
            continue
        entry["files"][key] = f"{name}/{fname}"
        ref = expected
        if key.startswith("merged") and c.foldable == "approximate":
            ref = merged_expected
        rep = check_file(path, feeds, ref)
        if key.startswith("merged") and c.foldable == "approximate":
            g = run_ort(path, feeds)
            rep["approx_rel_err_vs_unmerged"] = {k: rel_err(g[k], expected[k]) for k in expected if k in g}
        entry["checks"][key] = rep
    failed = []
    for fname, arrays in c.extra_npz.items():
        np.savez(out / fname, **arrays)
        entry["files"][fname.removesuffix(".npz")] = f"{name}/{fname}"
    if c.same_graph_as:
        gv = {}
        sd = unwrap(c.unmerged).state_dict()
        changed_params = {n: sd[n].numpy() for n in entry["extract"]["changed_parameters"]}
        for key, fname in (("unmerged_ts", "unmerged.ts.onnx"), ("unmerged_dynamo", "unmerged.dynamo.onnx")):
            if key not in entry["files"]:
                continue
            r = compare_graph_structure(out / fname, ROOT / c.same_graph_as / fname, changed_params)
            gv[key] = r
            if not r["same_structure"]:
                failed.append(f"{key}: graph structure differs from {r['base_file']}: {r['differences']}")
        entry.setdefault("extract", {})["graph_vs_base"] = gv
    if c.peft:
        try:
            info, f = write_peft_adapters(name, c, out, expected)
            entry.update(info)
            failed += f
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            failed.append(f"PEFT adapter folders: {type(e).__name__}: {e}")
    if failed:
        entry["failed_checks"] = failed
        for f in failed:
            print(f"  !! {name}: {f}")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            entry["sizes"][p.relative_to(out).as_posix()] = p.stat().st_size
    return entry


def status_of(rep: dict) -> str:
    if rep is None:
        return "-"
    ok = rep.get("checker") == "ok" and rep.get("max_rel_err") is not None and rep["max_rel_err"] < TOL \
        and not rep.get("missing_outputs")
    e = rep.get("max_rel_err")
    es = f"{e:.1e}" if e is not None else "n/a"
    return ("ok " if ok else "BAD ") + es


def main(argv):
    want = set(argv)
    names = [n for n, _ in CASES]
    unknown = want - set(names)
    if unknown:
        sys.exit(f"unknown cases: {sorted(unknown)}; known: {names}")
    manifest_path = ROOT / "manifest.json"
    old = {}
    if want and manifest_path.exists():
        old = {e["case"]: e for e in json.loads(manifest_path.read_text())["cases"]}
    entries = []
    for name, fn in CASES:
        if want and name not in want:
            if name in old:
                entries.append(old[name])
            continue
        print(f"== {name}", flush=True)
        entries.append(build_and_write(name, fn))
    versions = {
        "python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": ort.__version__, "numpy": np.__version__,
    }
    for mod in ["transformers", "peft", "timm", "onnxscript"]:
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    manifest = {
        "generator": "models/generate.py",
        "regenerate": "/work/genvenv/bin/python models/generate.py",
        "versions": versions,
        "opset_requested": OPSET,
        "tolerance_rel_frobenius": TOL,
        "cases": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")

    # table
    cols = ["unmerged_ts", "unmerged_dynamo", "merged_ts", "merged_dynamo"]
    print()
    print(f"{'case':22s} " + " ".join(f"{c:18s}" for c in cols))
    bad = 0
    for e in entries:
        if "build_error" in e:
            bad += 1
        bad += len(e.get("failed_checks", []))
        row = []
        for c in cols:
            if c in e.get("exporter_errors", {}):
                row.append("EXPORT FAIL")
                if (e["case"], c) not in EXPECTED_EXPORT_FAILURES:
                    bad += 1
                continue
            r = e.get("checks", {}).get(c)
            s = status_of(r)
            if s.startswith("BAD"):
                bad += 1
            row.append(s)
        print(f"{e['case']:22s} " + " ".join(f"{s:18s}" for s in row))
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"\ntotal size of models/: {total / 1e6:.2f} MB; bad checks: {bad}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
