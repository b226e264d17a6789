#!/usr/bin/env bash
# Reproduces the pruning acceptance table of BENCHMARKS.md: trains the dense LeNets on MNIST
# (skipped when present), then prunes each model with every criterion at the same tolerance and
# budget, and prints one table. Every run is resumable: re-running the script continues.
#
#   scripts/acceptance.sh [MODELS...]     MODELS from: lenet300 lenet5 m1 (default: all)
#
# Environment: NAP_FIXTURES (default fixtures), RUNS (default runs), MAX_DROP (default 0.1%),
# CRITERIA (default "nap magnitude obd"), EXTRA (more `nap prune` flags), FT_EXAMPLES
# (training examples per fine-tune of LeNet-5 and M1, default 12000; empty: all). Channel
# pruning (BENCHMARKS.md §7): RUNS=runs/channel MAX_DROP=0.5% CRITERIA="nap magnitude"
# FT_EXAMPLES= EXTRA="--mode channel" scripts/acceptance.sh m1 lenet5
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${NAP_FIXTURES:-fixtures}
RUNS=${RUNS:-runs}
MAX_DROP=${MAX_DROP:-0.1%}
CRITERIA=${CRITERIA:-nap magnitude obd}
MODELS=${*:-lenet300 lenet5 m1}
FT_EXAMPLES=${FT_EXAMPLES-12000}
FT=${FT_EXAMPLES:+--ft-examples $FT_EXAMPLES}
mkdir -p "$RUNS"
cargo build --release --quiet
NAP=${CARGO_TARGET_DIR:-target}/release/nap

dense() { # model -> "checkpoint arch extra-prune-flags"
    case $1 in
    lenet300)
        [ -f "$RUNS/lenet300.safetensors" ] || "$NAP" train --arch lenet-300-100 --data-dir "$FIX/mnist" \
            --split train --epochs 12 --lr 2e-3 --seed 0 -o "$RUNS/lenet300.safetensors"
        echo "$RUNS/lenet300.safetensors lenet-300-100"
        ;;
    lenet5)
        [ -f "$RUNS/lenet5.safetensors" ] || "$NAP" train --arch lenet5-caffe --data-dir "$FIX/mnist" \
            --split train --epochs 12 --lr 2e-3 --seed 0 -o "$RUNS/lenet5.safetensors"
        echo "$RUNS/lenet5.safetensors lenet5-caffe $FT --stats-examples 4000"
        ;;
    m1)
        echo "$FIX/m1.pth mnist-cnn $FT --stats-examples 4000"
        ;;
    *)
        echo "unknown model $1" >&2
        return 1
        ;;
    esac
}

for model in $MODELS; do
    read -r ckpt arch flags < <(dense "$model" | tail -1)
    for c in $CRITERIA; do
        out="$RUNS/$model-$c"
        resume=()
        [ -f "$out/state.json" ] && resume=(--resume)
        echo "== $model $c -> $out"
        # shellcheck disable=SC2086
        /usr/bin/time -v "$NAP" prune "$ckpt" --arch "$arch" --data-dir "$FIX/mnist" -o "$out" \
            --criterion "$c" --max-drop "$MAX_DROP" $flags ${EXTRA:-} "${resume[@]}" --json \
            >"$out.json" 2>"$out.log" || { tail -5 "$out.log"; exit 1; }
        grep -E "Maximum resident|Elapsed" "$out.log" || true
    done
done

python3 - "$RUNS" $MODELS <<'PY'
import json, sys, os
runs, models = sys.argv[1], sys.argv[2:]
print("| model | mode | criterion | compression (weights) | total | FLOP reduction (dense) | non-zero MAC reduction | test err dense | test err pruned | runtime test err | val drop | steps (acc.) | run time | stats/step |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    for f in sorted(os.listdir(runs)):
        if not (f.startswith(m + "-") and f.endswith(".json")):
            continue
        r = json.load(open(os.path.join(runs, f)))
        st, d, p = r["state"], r["dense"], r["pruned"]
        steps = st["steps"]
        acc = sum(1 for s in steps if s["accepted"])
        nstats = sum(1 for s in steps if s["stats_s"] > 0) or 1
        mode = st["settings"].get("mode", "fine")
        fl = f"{d['macs']/p['macs']:.2f}x" if "macs" in p else "-"
        nz = f"{d['macs']/p['nonzero_macs']:.2f}x" if "nonzero_macs" in p else "-"
        print(f"| {r['arch']} | {mode} | {st['settings']['criterion']} | {p['compression']:.1f}x | {p['total_compression']:.1f}x | {fl} | {nz} "
              f"| {100-100*d['test_accuracy']:.2f}% | {100-100*p['test_accuracy']:.2f}% | {100-100*p['runtime_test_accuracy']:.2f}% "
              f"| {100*(d['val_accuracy']-p['val_accuracy']):.2f} | {len(steps)} ({acc}) | {st['seconds']:.0f} s | {st['stats_s']/nstats:.1f} s |")
PY
