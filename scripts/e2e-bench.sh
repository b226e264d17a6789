#!/usr/bin/env bash
# End-to-end speed of NAP-pruned models against their dense originals (BENCHMARKS.md §6):
# for each pruned run folder, the dense original is converted from its checkpoint, both models
# are evaluated on the MNIST test set in nap-runtime, and `nap bench --vs` times them in one
# process (batch 1, one thread, runs interleaved), with the default policy and with every CSR
# weight kept sparse. Compression (prunable weights / non-zero) is the pruner's, from RUN_DIR/report.json.
#
#   scripts/e2e-bench.sh NAME:RUN_DIR:CHECKPOINT:ARCH ...
#
# Environment: NAP_FIXTURES (default fixtures), SECONDS_PER_MODEL (default 3), TASKSET (e.g.
# "taskset -c 1" to pin the timing to one core).
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${NAP_FIXTURES:-fixtures}
cargo build --release --quiet
NAP=${CARGO_TARGET_DIR:-target}/release/nap
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
for spec in "$@"; do
    IFS=: read -r name run ckpt arch <<<"$spec"
    dense="$tmp/$name-dense.nap"
    "$NAP" convert "$ckpt" --arch "$arch" -o "$dense" --dense >/dev/null
    acc() { "$NAP" eval "$1" --data-dir "$FIX/mnist" --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["accuracy"])'; }
    a_p=$(acc "$run/pruned.nap")
    a_d=$(acc "$dense")
    for mode in default keep-csr; do
        extra=()
        [ "$mode" = keep-csr ] && extra=(--keep-csr)
        ${TASKSET:-} "$NAP" bench "$run/pruned.nap" --vs "$dense" --seconds "${SECONDS_PER_MODEL:-3}" \
            "${extra[@]}" --json >"$tmp/$name-$mode.json"
        rows+=("$name $mode $a_p $a_d $tmp/$name-$mode.json $run/report.json")
    done
done
python3 - "${rows[@]}" <<'PY'
import json, sys
print("| model | policy | compression | FLOP reduction | dense ms | pruned ms | speedup | test acc dense → pruned (runtime) |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for row in sys.argv[1:]:
    name, mode, ap, ad, path, report = row.split(" ")
    r = json.load(open(path))
    m, b = r["model"], r["baseline"]
    cr = json.load(open(report))["pruned"]["compression"]
    print(f"| {name} | {mode} | {cr:.1f}× | {r['flop_reduction']:.1f}× | {b['latency']['median_ms']:.4f} | "
          f"{m['latency']['median_ms']:.4f} | {r['speedup']:.2f}× | {100*float(ad):.2f} % → {100*float(ap):.2f} % |")
PY
