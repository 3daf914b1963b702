"""Generate a large GPT-2-shaped decoder with random weights, for benchmarks (never committed).

    python models/make_big.py --out target/bench/big [--layers 16] [--d 2048] [--lora 0]
                              [--embedded]

Writes OUT/model.onnx and (unless --embedded) OUT/model.onnx.data with every weight as external
data. Weights are random (normal, std 0.02); the structure follows GPT-2: token embedding, per
layer LayerNorm -> fused QKV projection -> single-head attention -> output projection ->
residual -> LayerNorm -> MLP (4d, sigmoid-GELU) -> residual, final LayerNorm and a tied LM head.
With --lora R every projection gets a LoRA branch (A [in,R], B [R,out], scale alpha/R) in the
TorchScript-export pattern. One unused initializer and one dead node are added so `dce` has
work to do. Needs numpy and onnx (the test venv has both).
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096


class Writer:
    def __init__(self, out_dir, embedded):
        self.embedded = embedded
        self.inits = []
        self.rng = np.random.default_rng(0)
        self.offset = 0
        self.data = None
        if not embedded:
            self.data = open(os.path.join(out_dir, "model.onnx.data"), "wb")

    def tensor(self, name, shape, scale=0.02, fill=None):
        if fill is not None:
            arr = np.full(shape, fill, dtype=np.float32)
        else:
            arr = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        if self.embedded:
            self.inits.append(onnx.numpy_helper.from_array(arr, name))
            return name
        pad = (-self.offset) % ALIGN
        if pad:
            self.data.write(b"\0" * pad)
            self.offset += pad
        raw = arr.tobytes()
        self.data.write(raw)
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "model.onnx.data"), ("offset", str(self.offset)),
                     ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.offset += len(raw)
        self.inits.append(t)
        return name


def build(args):
    os.makedirs(args.out, exist_ok=True)
    w = Writer(args.out, args.embedded)
    d, seq, vocab = args.d, args.seq, args.vocab
    nodes = []

    def node(op, ins, outs=None, **attrs):
        outs = outs or [f"{op.lower()}_{len(nodes)}"]
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    scale = w.tensor("lora_scale", [], fill=args.alpha / max(args.lora, 1)) if args.lora else None

    def linear(x, name, din, dout):
        wt = w.tensor(f"{name}.weight", [din, dout])
        b = w.tensor(f"{name}.bias", [dout], fill=0.0)
        y = node("Add", [node("MatMul", [x, wt]), b])
        if args.lora:
            a = w.tensor(f"{name}.lora_A", [din, args.lora])
            bb = w.tensor(f"{name}.lora_B", [args.lora, dout])
            delta = node("Mul", [node("MatMul", [node("MatMul", [x, a]), bb]), scale])
            y = node("Add", [y, delta])
        return y

    def layernorm(x, name):
        g = w.tensor(f"{name}.weight", [d], fill=1.0)
        b = w.tensor(f"{name}.bias", [d], fill=0.0)
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)

    wte = w.tensor("wte", [vocab, d])
    wpe = w.tensor("wpe", [seq, d])
    x = node("Add", [node("Gather", [wte, "input_ids"], axis=0), wpe])
    att_scale = w.tensor("att_scale", [], fill=1.0 / np.sqrt(d))
    sizes = helper.make_tensor("qkv_sizes", TensorProto.INT64, [3], [d, d, d])
    w.inits.append(sizes)
    for i in range(args.layers):
        p = f"h.{i}"
        h = layernorm(x, f"{p}.ln_1")
        qkv = linear(h, f"{p}.attn.c_attn", d, 3 * d)
        q, k, v = (f"{p}.q", f"{p}.k", f"{p}.v")
        node("Split", [qkv, "qkv_sizes"], [q, k, v], axis=-1)
        kt = node("Transpose", [k], perm=[0, 2, 1])
        att = node("Softmax", [node("Mul", [node("MatMul", [q, kt]), att_scale])], axis=-1)
        o = node("MatMul", [att, v])
        x = node("Add", [x, linear(o, f"{p}.attn.c_proj", d, d)])
        h2 = layernorm(x, f"{p}.ln_2")
        m = linear(h2, f"{p}.mlp.c_fc", d, 4 * d)
        act = node("Mul", [m, node("Sigmoid", [node("Mul", [m, w.tensor(f"{p}.gelu_k", [], fill=1.702)])])])
        x = node("Add", [x, linear(act, f"{p}.mlp.c_proj", 4 * d, d)])
    x = layernorm(x, "ln_f")
    head = node("Transpose", [wte], perm=[1, 0])
    node("MatMul", [x, head], ["logits"])
    # Dead code for dce.
    unused = w.tensor("unused.weight", [d, d])
    node("Relu", [unused], ["dead_relu"])
    graph = helper.make_graph(
        nodes, "big_gpt2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
        w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="graft models/make_big.py")
    path = os.path.join(args.out, "model.onnx")
    if w.data:
        w.data.close()
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{path}: {total / 2**30:.2f} GiB in {len(w.inits)} initializers, {len(nodes)} nodes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank on every projection (0: none)")
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--embedded", action="store_true", help="embed weights (keep it under 2 GiB)")
    build(ap.parse_args())


if __name__ == "__main__":
    main()
