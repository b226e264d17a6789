"""nap and ONNX Runtime on one model, alternating in many short rounds, for a VM whose speed
drifts: prints each engine's fastest, first-quartile and median round, and ORT / nap per round.

    PEERS_VENV/bin/python scripts/alternate.py NAP_BENCH MODEL.nap MODEL.onnx THREADS [ROUNDS]

NAP_BENCH is the `nap-bench` binary (`cargo build --release -p nap-runtime --features cli
--bin nap-bench`). THREADS is a thread count or several, comma-separated (`1,2`). A round is,
for each thread count in turn, `nap-bench --seconds 0.5` (its median), then ORT's median `run()`
over 0.5 s (at least 20 calls) after 20 untimed ones; ROUNDS defaults to 20. With several
thread counts, the table of every round follows the summaries.
"""
import json
import statistics as st
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

nap, model_nap, model_onnx = sys.argv[1:4]
counts = sys.argv[4].split(",")
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 20


def session(threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_onnx, so, providers=["CPUExecutionProvider"])


sessions = {t: session(t) for t in counts}
rng = np.random.default_rng(7)
feed = {
    i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
    for i in sessions[counts[0]].get_inputs()
}
n_ms, o_ms = {t: [] for t in counts}, {t: [] for t in counts}
for _ in range(rounds):
    for t in counts:
        out = subprocess.check_output(
            [nap, model_nap, "--threads", t, "--seconds", "0.5", "--warmup", "20", "--json"]
        )
        n_ms[t].append(json.loads(out)["model"]["latency"]["median_ms"])
        s = sessions[t]
        for _ in range(20):
            s.run(None, feed)
        ts, start = [], time.perf_counter()
        while time.perf_counter() - start < 0.5 or len(ts) < 20:
            t0 = time.perf_counter()
            s.run(None, feed)
            ts.append((time.perf_counter() - t0) * 1e3)
        o_ms[t].append(float(np.median(ts)))


def q(v, f):
    return sorted(v)[int(f * (len(v) - 1))]


for t in counts:
    if len(counts) > 1:
        print(f"{t} thread(s):")
    for name, v in (("nap", n_ms[t]), ("ORT", o_ms[t])):
        print(f"{name}: fastest {min(v):.3f} ms, q25 {q(v, .25):.3f}, median {st.median(v):.3f}")
    ratio = [o / n for n, o in zip(n_ms[t], o_ms[t])]
    print(
        f"ORT / nap per round: median {st.median(ratio):.3f} (q25 {q(ratio, .25):.3f}, "
        f"q75 {q(ratio, .75):.3f}); nap at or ahead in {sum(r >= 1 for r in ratio)} of {rounds}"
    )
if len(counts) > 1:
    print("round " + " ".join(f"nap{t:>3} ORT{t:>3}" for t in counts))
    for i in range(rounds):
        print(f"{i:5d} " + " ".join(f"{n_ms[t][i]:6.2f} {o_ms[t][i]:6.2f}" for t in counts))
