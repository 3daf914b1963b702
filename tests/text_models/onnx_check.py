"""onnx-side helper of tests/text_format.rs (one process for all jobs).

Usage: python onnx_check.py <jobs file>
Each line of the jobs file is one of
    parse <in.txt> <out.pb>     onnx.parser.parse_model; writes the model bytes, or <out.pb>.err
    print <in.onnx> <out.txt>   onnx.printer.to_text of the model
    floats <out.onnx> <out.txt> a model with random float/double initializers and its onnx text
"""

import sys

import numpy as np
import onnx
import onnx.parser
import onnx.printer
from onnx import TensorProto as T
from onnx import helper as h


def floats_model():
    rng = np.random.default_rng(1234)
    bits32 = rng.integers(0, 2**32, size=3000, dtype=np.uint64).astype(np.uint32)
    f32 = bits32.view(np.float32)
    f32 = f32[np.isfinite(f32)]
    # also values near powers of ten, where fixed / scientific choice changes
    near = np.array([10.0**e for e in range(-12, 25)], dtype=np.float64)
    f32 = np.concatenate([f32, near.astype(np.float32), np.nextafter(near.astype(np.float32), np.float32(np.inf))])
    bits64 = rng.integers(0, 2**63, size=3000, dtype=np.uint64)
    f64 = bits64.view(np.float64)
    f64 = f64[np.isfinite(f64)]
    f64 = np.concatenate([f64, near, np.nextafter(near, np.inf), -near / 3])
    g = h.make_graph(
        [],
        "floats",
        [],
        [],
        [
            h.make_tensor("f32", T.FLOAT, [len(f32)], f32.tolist()),
            h.make_tensor("f64", T.DOUBLE, [len(f64)], f64.tolist()),
        ],
    )
    return h.make_model(g)


def main():
    with open(sys.argv[1]) as f:
        jobs = [line.split() for line in f if line.strip()]
    for kind, src, dst in jobs:
        if kind == "parse":
            with open(src, encoding="utf-8") as f:
                text = f.read()
            try:
                m = onnx.parser.parse_model(text)
            except Exception as e:  # noqa: BLE001 - report any parse failure
                with open(dst + ".err", "w", encoding="utf-8") as f:
                    f.write(str(e))
                continue
            with open(dst, "wb") as f:
                f.write(m.SerializeToString())
        elif kind == "print":
            m = onnx.load(src, load_external_data=False)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(onnx.printer.to_text(m))
        elif kind == "floats":
            m = floats_model()
            with open(src, "wb") as f:
                f.write(m.SerializeToString())
            with open(dst, "w", encoding="utf-8") as f:
                f.write(onnx.printer.to_text(m))
        else:
            raise SystemExit(f"unknown job {kind}")


if __name__ == "__main__":
    main()
