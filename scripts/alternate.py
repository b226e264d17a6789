"""nap and ONNX Runtime on one model, alternating in many short rounds, for a VM whose speed
drifts: prints each engine's fastest, first-quartile and median round, and ORT / nap per round.

    PEERS_VENV/bin/python scripts/alternate.py NAP_BENCH MODEL.nap MODEL.onnx THREADS [ROUNDS]

NAP_BENCH is the `nap-bench` binary (`cargo build --release -p nap-runtime --features cli
--bin nap-bench`). A round is `nap-bench --seconds 0.5` (its median), then ORT's median `run()`
over 0.5 s (at least 20 calls) after 20 untimed ones; ROUNDS defaults to 20.
"""
import json
import statistics as st
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

nap, model_nap, model_onnx, threads = sys.argv[1:5]
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 20
so = ort.SessionOptions()
so.intra_op_num_threads = int(threads)
so.inter_op_num_threads = 1
s = ort.InferenceSession(model_onnx, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(7)
feed = {
    i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
    for i in s.get_inputs()
}
n_ms, o_ms = [], []
for _ in range(rounds):
    out = subprocess.check_output(
        [nap, model_nap, "--threads", threads, "--seconds", "0.5", "--warmup", "20", "--json"]
    )
    n_ms.append(json.loads(out)["model"]["latency"]["median_ms"])
    for _ in range(20):
        s.run(None, feed)
    ts, start = [], time.perf_counter()
    while time.perf_counter() - start < 0.5 or len(ts) < 20:
        t0 = time.perf_counter()
        s.run(None, feed)
        ts.append((time.perf_counter() - t0) * 1e3)
    o_ms.append(float(np.median(ts)))


def q(v, f):
    return sorted(v)[int(f * (len(v) - 1))]


for name, v in (("nap", n_ms), ("ORT", o_ms)):
    print(f"{name}: fastest {min(v):.3f} ms, q25 {q(v, .25):.3f}, median {st.median(v):.3f}")
ratio = [o / n for n, o in zip(n_ms, o_ms)]
print(
    f"ORT / nap per round: median {st.median(ratio):.3f} (q25 {q(ratio, .25):.3f}, "
    f"q75 {q(ratio, .75):.3f}); nap at or ahead in {sum(r >= 1 for r in ratio)} of {rounds}"
)
