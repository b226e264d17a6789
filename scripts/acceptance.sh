#!/usr/bin/env bash
# Reproduces the pruning acceptance tables of BENCHMARKS.md: trains the dense LeNets on MNIST
# (skipped when present; `nap train` holds out the validation and confirmation splits `nap prune`
# uses), then prunes each model with every criterion at the same tolerance and with the same
# defaults, and prints one table. Every run is resumable: re-running the script continues.
#
#   scripts/acceptance.sh [MODELS...]     MODELS from: lenet300 lenet5 m1 (default: all)
#
# Environment: NAP_FIXTURES (default fixtures), RUNS (default runs), MAX_DROP (default 0.1%),
# CRITERIA (default "nap magnitude gmp"), SEED (default 0), EXTRA (more `nap prune` flags, e.g.
# "--target-sparsity 0.98214 --budget 20 --prune-events 40" for a straight run to 56x, which
# then replaces the tolerance). Channel pruning (BENCHMARKS.md §7): RUNS=runs/channel
# MAX_DROP=0.5% CRITERIA="nap magnitude" EXTRA="--mode channel" scripts/acceptance.sh m1 lenet5
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${NAP_FIXTURES:-fixtures}
RUNS=${RUNS:-runs}
MAX_DROP=${MAX_DROP:-0.1%}
CRITERIA=${CRITERIA:-nap magnitude gmp}
SEED=${SEED:-0}
MODELS=${*:-lenet300 lenet5 m1}
mkdir -p "$RUNS"
cargo build --release --quiet
NAP=${CARGO_TARGET_DIR:-target}/release/nap

dense() { # model -> "checkpoint arch"
    case $1 in
    lenet300)
        [ -f "$RUNS/lenet300.safetensors" ] || "$NAP" train --arch lenet-300-100 --data-dir "$FIX/mnist" \
            --split train --epochs 12 --lr 2e-3 --seed 0 -o "$RUNS/lenet300.safetensors" >&2
        echo "$RUNS/lenet300.safetensors lenet-300-100"
        ;;
    lenet5)
        [ -f "$RUNS/lenet5.safetensors" ] || "$NAP" train --arch lenet5-caffe --data-dir "$FIX/mnist" \
            --split train --epochs 12 --lr 2e-3 --seed 0 -o "$RUNS/lenet5.safetensors" >&2
        echo "$RUNS/lenet5.safetensors lenet5-caffe"
        ;;
    m1)
        echo "$FIX/m1.pth mnist-cnn"
        ;;
    *)
        echo "unknown model $1" >&2
        return 1
        ;;
    esac
}

tag=$(echo "${MAX_DROP} ${EXTRA:-} s${SEED}" | tr -c 'a-zA-Z0-9.\n' '_' | tr -s '_')
for model in $MODELS; do
    read -r ckpt arch < <(dense "$model" | tail -1)
    for c in $CRITERIA; do
        out="$RUNS/$model-$c-$tag"
        resume=()
        [ -f "$out/state.json" ] && resume=(--resume)
        drop=(--max-drop "$MAX_DROP")
        case " ${EXTRA:-} " in *" --target-"*) drop=() ;; esac
        echo "== $model $c -> $out"
        # shellcheck disable=SC2086
        /usr/bin/time -v "$NAP" prune "$ckpt" --arch "$arch" --data-dir "$FIX/mnist" -o "$out" \
            --criterion "$c" "${drop[@]}" --seed "$SEED" ${EXTRA:-} "${resume[@]}" --json \
            >"$out.json" 2>"$out.log" || {
            tail -5 "$out.log"
            exit 1
        }
        grep -E "Maximum resident|Elapsed" "$out.log" || true
    done
done

python3 - "$RUNS" "$tag" $MODELS <<'PY'
import json, sys, os
runs, tag, models = sys.argv[1], sys.argv[2], sys.argv[3:]
def ci(c):
    if not c:
        return "-"
    lo, hi = c["interval95"]
    return f"{100*c['drop']:+.2f} [{100*lo:+.2f}, {100*hi:+.2f}]"
print("| model | schedule | criterion | compression (weights) | total | FLOP reduction | val drop [95 %] | confirmation drop [95 %] | test err dense → pruned | in nap-runtime | test drop [95 %] | steps (acc.) | run time | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    for f in sorted(os.listdir(runs)):
        if not (f.startswith(m + "-") and f.endswith("-" + tag + ".json")):
            continue
        r = json.load(open(os.path.join(runs, f)))
        st, d, p = r["state"], r["dense"], r["pruned"]
        steps = st["steps"]
        acc = sum(1 for s in steps if s["accepted"])
        s = st["settings"]
        comps = {c["split"]: c for c in r.get("comparisons", [])}
        val = ci(comps.get("validation"))
        fl = f"{d['macs']/p['macs']:.2f}x" if "macs" in p else "-"
        print(f"| {r['arch']} | {s.get('schedule', 'iterative')} | {s['criterion']} | {p['compression']:.1f}x | {p['total_compression']:.1f}x "
              f"| {fl} | {val} | {ci(comps.get('confirmation'))} | {100-100*d['test_accuracy']:.2f} → {100-100*p['test_accuracy']:.2f} % "
              f"| {100-100*p['runtime_test_accuracy']:.2f} % | {ci(comps.get('test'))} | {len(steps)} ({acc}) | {st['seconds']:.0f} s "
              f"| {r.get('peak_rss_mib') or 0:.0f} MiB |")
PY
