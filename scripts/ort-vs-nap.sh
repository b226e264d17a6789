#!/usr/bin/env bash
# Times ONNX models in nap-runtime and in ONNX Runtime, in one run on this machine: batch 1,
# one thread each, interleaved per model. For each MODEL.onnx: `nap convert` to .nap, `nap bench`
# (median of --seconds), then ONNX Runtime's own timing of the same ONNX file through
# scripts/ort-run.py (median of RUNS run() calls, graph optimisations on), and a check that the
# two give the same output (max relative error against the largest logit). Prints one table.
#
#   scripts/ort-vs-nap.sh MODEL.onnx [MODEL.onnx ...]
#
# Env: NAP (default target/release/nap), PYTHON (default fixtures/.venv-onnx/bin/python, made by
# scripts/fetch-fixtures.sh), RUNS (default 200), SECONDS_PER_MODEL (default 3), THREADS
# (default 1), INPUT_SHAPE (for models with dynamic dimensions, e.g. 3,224,224).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
NAP="${NAP:-target/release/nap}"
PY="${PYTHON:-fixtures/.venv-onnx/bin/python}"
RUNS="${RUNS:-200}"
SECS="${SECONDS_PER_MODEL:-3}"
THREADS="${THREADS:-1}"
[[ $# -ge 1 ]] || { echo "usage: $0 MODEL.onnx [MODEL.onnx ...]" >&2; exit 2; }
[[ -x "$NAP" ]] || { echo "$NAP not built (cargo build --release)" >&2; exit 1; }
[[ -x "$PY" ]] || { echo "$PY missing (scripts/fetch-fixtures.sh fixtures)" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
shape_args=()
[[ -n "${INPUT_SHAPE:-}" ]] && shape_args=(--input-shape "$INPUT_SHAPE")

printf '%-28s %12s %12s %10s %12s\n' model "nap ms" "ORT ms" "ORT/nap" "max rel err"
for m in "$@"; do
    name="$(basename "$m" .onnx)"
    "$NAP" convert "$m" "${shape_args[@]}" -o "$TMP/$name.nap" >/dev/null
    # One seeded input in the model's shape, as raw f32 for nap and .npy for ORT.
    "$NAP" inspect "$TMP/$name.nap" --json >"$TMP/$name.json"
    "$PY" - "$TMP/$name.json" "$TMP/$name" <<'PY'
import json, sys
import numpy as np
info, stem = json.load(open(sys.argv[1])), sys.argv[2]
shape = [1] + info["input_shape"]
x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
np.save(stem + ".x.npy", x)
x.tofile(stem + ".x.f32")
PY
    nap_ms="$("$NAP" bench "$TMP/$name.nap" --threads "$THREADS" --seconds "$SECS" \
        --input "$TMP/$name.x.f32" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["model"]["latency"]["median_ms"])')"
    ort_ms="$("$PY" scripts/ort-run.py "$m" "$TMP/$name.x.npy" "$TMP/$name.ort.npy" \
        --threads "$THREADS" --time "$RUNS" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')"
    "$NAP" run "$TMP/$name.nap" --input "$TMP/$name.x.npy" --save "$TMP/$name.nap.npy" --json >/dev/null
    err="$("$PY" - "$TMP/$name.nap.npy" "$TMP/$name.ort.npy" <<'PY'
import sys
import numpy as np
a, b = np.load(sys.argv[1]).ravel(), np.load(sys.argv[2]).ravel()
print(f"{np.abs(a - b).max() / np.abs(b).max():.1e}")
PY
)"
    printf '%-28s %12.3f %12.3f %10.2f %12s\n' "$name" "$nap_ms" "$ort_ms" \
        "$("$PY" -c "print($ort_ms / $nap_ms)")" "$err"
done
echo "($(uname -m), $(nproc) CPUs, $THREADS thread(s), batch 1; nap: median over ${SECS} s; ORT: median of $RUNS runs)"
