#!/usr/bin/env bash
# Run wonnx_compare on every prepared corpus model; one JSON line per model on stdout.
# Prerequisites: scripts/prepare.py has written $PREP, and the binary is built
# (CARGO_TARGET_DIR=/work/scratch/wonnx_target cargo build --release).
set -u
PREP=${PREP:-/work/scratch/wonnx_prep}
BIN=${BIN:-/work/scratch/wonnx_target/release/wonnx_compare}
RUNS=${RUNS:-20}
MODELS=${MODELS:-models}   # "models" (shape-inferred only) or "models_compat" (prepare.py --compat)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
for m in "$PREP"/"$MODELS"/*/*.onnx; do
  case=$(basename "$(dirname "$m")")
  args=()
  for f in "$PREP"/inputs/"$case"/*.npy; do args+=(--input "$(basename "$f" .npy)=$f"); done
  for f in "$PREP"/inputs/"$case"/expected/*.npy; do
    [ -e "$f" ] && args+=(--expected "$(basename "$f" .npy)=$f")
  done
  timeout 300 "$BIN" --model "$m" "${args[@]}" --runs "$RUNS" 2>/dev/null \
    || echo "{\"model\":\"$m\",\"status\":\"error\",\"error\":\"process died/timed out (rc=$?)\"}"
done
