#!/usr/bin/env bash
# Is the curvature right? One-shot NAP steps of 1, 2, 5, 10 and 20 % of the alive weights from a
# checkpoint, no fine-tuning: the predicted loss increase (sum of the removed weights' joint
# OBS costs, K-FAC on training examples) against the loss increase measured on those training
# examples, the raw validation-loss increase, and its second-order part
# ½ (L(θ+δ) + L(θ−δ)) − L(θ) (the first-order term cancelled). Prints one markdown table.
#
#   scripts/calibration.sh CHECKPOINT ARCH [nap prune flags...]
#
# Environment: NAP_FIXTURES (default fixtures), STEPS (default "0.01 0.02 0.05 0.1 0.2").
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || {
    echo "usage: $0 CHECKPOINT ARCH [nap prune flags...]" >&2
    exit 2
}
ckpt=$1
arch=$2
shift 2
FIX=${NAP_FIXTURES:-fixtures}
cargo build --release --quiet
NAP=${CARGO_TARGET_DIR:-target}/release/nap
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nap-calibration.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
for s in ${STEPS:-0.01 0.02 0.05 0.1 0.2}; do
    "$NAP" prune "$ckpt" --arch "$arch" --data-dir "$FIX/mnist" -o "$TMP/$s" --step "$s" \
        --max-steps 1 --schedule iterative --ft-epochs 0 --max-drop 99 --layer-cap 1 "$@" --json >"$TMP/$s.json" 2>"$TMP/$s.log" ||
        {
            tail -5 "$TMP/$s.log"
            exit 1
        }
done
python3 - "$TMP" ${STEPS:-0.01 0.02 0.05 0.1 0.2} <<'PY'
import json, sys
tmp, steps = sys.argv[1], sys.argv[2:]
print("| step | predicted ΔL | measured, training examples | ratio | measured, validation | validation, second-order part | ratio |")
print("|---|---|---|---|---|---|---|")
for s in steps:
    st = json.load(open(f"{tmp}/{s}.json"))["state"]["steps"][0]
    p, t, v, d2 = st["predicted_dl"], st["measured_dl_train"], st["measured_dl"], st["measured_d2_val"]
    r = lambda a, b: f"{a / b:.2f}" if b > 0 else "n/a (≤ 0)"
    print(f"| {100 * float(s):g} % | {p:.3e} | {t:.3e} | {r(p, t)} | {v:.3e} | {d2:.3e} | {r(p, d2)} |")
PY
