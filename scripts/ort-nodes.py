"""ONNX Runtime's time per node, to set beside `nap bench --json`'s per-node breakdown.

    PEERS_VENV/bin/python scripts/ort-nodes.py MODEL.onnx [THREADS] [RUNS]

Runs MODEL (all-1 batch dimensions, inputs uniform in [0, 1)) RUNS times (default 400) with
THREADS intra-op threads (default 1) and ORT's profiler on, then prints each node's median
kernel time in µs, in execution order, and their sum. The profiler adds a little per node, so
the sum runs above an unprofiled run's latency.
"""
import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

model = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 400
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.enable_profiling = True
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(7)
feed = {
    i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
    for i in s.get_inputs()
}
for _ in range(runs):
    s.run(None, feed)
path = s.end_profiling()
with open(path) as f:
    events = json.load(f)
os.remove(path)
times, op = collections.defaultdict(list), {}
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        name = e["name"][: -len("_kernel_time")]
        times[name].append(e["dur"])
        op[name] = e["args"].get("op_name", "")
total = 0.0
for name, v in times.items():
    med = sorted(v)[len(v) // 2]
    total += med
    print(f"{name:48s} {op[name]:20s} {med:8.1f}")
print(f"{'sum':48s} {'':20s} {total:8.1f}")
