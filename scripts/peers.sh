#!/usr/bin/env bash
# nap-runtime against ONNX Runtime on this machine, in one run: M1 (MNIST CNN) at batch 1 and 64
# and M2 (MobileNetV2) at batch 1, each at 1 and 2 threads, plus any pruned models given. Both
# engines time the same weights: `nap convert` writes the .nap and the .onnx from one checkpoint.
# nap: `nap bench --json` median over --seconds; ORT (from PyPI, graph optimisations on, as a
# user runs it): median of the `run()` calls in as long a window (at least RUNS calls) after
# warm-up, intra-op threads set. Cases run one
# after the other, nap then ORT, on the same input. Prints a table with ratios (ORT ms / nap ms:
# above 1, nap is faster) and each engine's two-thread speedup, and a check that the two agree.
#
#   scripts/peers.sh [NAME:PRUNED.nap:DENSE ...]
#
# A pruned model is timed in nap against ORT running its dense original: DENSE is an .onnx
# file, or m1 / m2 for the dense ONNX this script writes from the fixtures.
# Env: NAP_FIXTURES (default fixtures; m1.pth, m2.pth from scripts/fetch-fixtures.sh),
# PEERS_VENV (default target/peers-venv; made here with onnxruntime and numpy from PyPI),
# SECONDS_PER_CASE (default 1), RUNS (ORT's fewest calls, default 200), ROUNDS (default 3: each case is timed
# in this many alternating nap / ORT rounds and the median round is reported, since a shared
# VM's speed drifts), THREADS (default "1 2"), TASKSET (e.g. "taskset -c 0,1").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FIX="${NAP_FIXTURES:-fixtures}"
VENV="${PEERS_VENV:-${CARGO_TARGET_DIR:-target}/peers-venv}"
SECS="${SECONDS_PER_CASE:-1}"
ROUNDS="${ROUNDS:-3}"
RUNS="${RUNS:-200}"
THREADS="${THREADS:-1 2}"
for f in m1.pth m2.pth; do
    [[ -f "$FIX/$f" ]] || { echo "$FIX/$f missing: run scripts/fetch-fixtures.sh $FIX" >&2; exit 1; }
done
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime numpy
fi
PY="$VENV/bin/python"
cargo build --release --quiet
NAP="${CARGO_TARGET_DIR:-target}/release/nap"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# name nap-file onnx-file batch
cases=()
for spec in "m1:$FIX/m1.pth:mnist-cnn" "m2:$FIX/m2.pth:mobilenet-v2"; do
    IFS=: read -r name ckpt arch <<<"$spec"
    "$NAP" convert "$ckpt" --arch "$arch" --dense -o "$TMP/$name.nap" >/dev/null
    "$NAP" convert "$ckpt" --arch "$arch" -o "$TMP/$name.onnx" >/dev/null
done
cases+=("M1 dense|$TMP/m1.nap|$TMP/m1.onnx|1|same" "M1 dense|$TMP/m1.nap|$TMP/m1.onnx|64|same")
cases+=("M2 dense|$TMP/m2.nap|$TMP/m2.onnx|1|same")
for spec in "$@"; do
    IFS=: read -r name pruned onnx <<<"$spec"
    [[ "$onnx" == m1 || "$onnx" == m2 ]] && onnx="$TMP/$onnx.onnx"
    cases+=("$name|$pruned|$onnx|1|pruned" "$name|$pruned|$onnx|64|pruned")
done

# ORT timing: median ms of the run() calls on a batch over SECS seconds (at least RUNS calls),
# the window nap bench times, and the output for the agreement check.
cat >"$TMP/ort.py" <<'PY'
import json, sys, time
import numpy as np
import onnxruntime as ort
model, x_path, out_path, threads, runs, secs = sys.argv[1:7]
so = ort.SessionOptions()
so.intra_op_num_threads = int(threads)
so.inter_op_num_threads = 1
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
x = np.load(x_path)
feed = {name: x}
for _ in range(10):
    y = s.run(None, feed)[0]
np.save(out_path, y)
ts = []
start = time.perf_counter()
while len(ts) < int(runs) or time.perf_counter() - start < float(secs):
    t0 = time.perf_counter()
    s.run(None, feed)
    ts.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"median_ms": float(np.median(ts)), "version": ort.__version__}))
PY

rows="$TMP/rows.txt"
: >"$rows"
for c in "${cases[@]}"; do
    IFS='|' read -r name nap onnx batch kind <<<"$c"
    stem="$TMP/$(basename "$nap" .nap)-b$batch"
    "$NAP" inspect "$nap" --json >"$stem.json"
    # One seeded example, repeated to the batch: nap bench repeats its one-example input.
    "$PY" - "$stem.json" "$stem" "$batch" <<'PY'
import json, sys
import numpy as np
info, stem, batch = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(7).random([1] + info["input_shape"], dtype=np.float32)
x.tofile(stem + ".x.f32")
np.save(stem + ".x.npy", np.repeat(x, batch, axis=0))
PY
    "$NAP" run "$nap" --input "$stem.x.npy" --save "$stem.nap.npy" --json >/dev/null
    for t in $THREADS; do
        nap_ms="" ort=""
        for _ in $(seq "$ROUNDS"); do
            nap_ms+="$(${TASKSET:-} "$NAP" bench "$nap" --batch "$batch" --threads "$t" --seconds "$SECS" \
                --input "$stem.x.f32" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["model"]["latency"]["median_ms"])'),"
            ort+="$(${TASKSET:-} "$PY" "$TMP/ort.py" "$onnx" "$stem.x.npy" "$stem.ort.npy" "$t" "$RUNS" "$SECS")|"
        done
        err="(pruned vs dense)"
        [[ "$kind" == same ]] && err="$("$PY" -c '
import sys, numpy as np
a, b = np.load(sys.argv[1]).ravel(), np.load(sys.argv[2]).ravel()
print(f"{np.abs(a - b).max() / np.abs(b).max():.1e}")' "$stem.nap.npy" "$stem.ort.npy")"
        echo "$name#$batch#$t#$nap_ms#$ort#$err" >>"$rows"
    done
done

"$PY" - "$rows" "$(uname -m)" "$(nproc)" "$SECS" "$RUNS" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("#") for l in open(sys.argv[1])]
arch, cpus, secs, runs = sys.argv[2:6]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), arch)
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else arch)
t = {}
per_round = []
ver = ""
med = lambda v: sorted(v)[len(v) // 2]
for name, batch, th, nap, ort, err in rows:
    o = [json.loads(x) for x in ort.rstrip("|").split("|")]
    ver = o[0]["version"]
    naps = [float(x) for x in nap.rstrip(",").split(",")]
    t[(name, batch, th)] = (med(naps), med([x["median_ms"] for x in o]), err)
    per_round.append((name, batch, th, naps, [x["median_ms"] for x in o]))
rounds = len(rows[0][3].rstrip(",").split(",")) if rows else 0
print(f"{cpu} ({isa}), {cpus} CPUs; ONNX Runtime {ver}; each case {rounds} alternating rounds, the median round shown; "
      f"a round: each engine's median over {secs} s of runs (ORT at least {runs} run() calls)")
print()
print("| model | batch | threads | nap ms | ORT ms | ORT / nap | nap 2-thread speedup | ORT 2-thread speedup | max rel. diff |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (name, batch, th), (nap, ort, err) in t.items():
    one = t.get((name, batch, "1"))
    sp = lambda i: f"{one[i] / (nap, ort)[i]:.2f}×" if one and th != "1" else ""
    print(f"| {name} | {batch} | {th} | {nap:.3f} | {ort:.3f} | {ort / nap:.2f} | {sp(0)} | {sp(1)} | {err} |")
print()
print("Every round (ms, in the order run; nap then ORT each round):")
print()
for name, batch, th, naps, orts in per_round:
    fmt = lambda v: " ".join(f"{x:.3f}" for x in v)
    print(f"- {name}, batch {batch}, {th} thread(s): nap {fmt(naps)}; ORT {fmt(orts)}")
PY
