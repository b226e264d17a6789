#!/usr/bin/env python3
"""Runs an ONNX model in ONNX Runtime (CPU): the independent oracle of nap's ONNX output.

    python scripts/ort-run.py MODEL.onnx INPUT.npy OUTPUT.npy [--threads T] [--time RUNS]

Writes the first output for INPUT (float32, the model's input layout with its batch first) to
OUTPUT. With --time, also runs the model RUNS more times on the first example and prints
one line of JSON: {"median_ms", "min_ms", "runs", "threads", "batch"} (ORT's own timing of
one run() call, after 5 warm-up calls). Graph optimisations stay at ORT's default (all on),
as a user would run it. Needs numpy and onnxruntime (the fixture venv of fetch-fixtures.sh).
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time", type=int, default=0, metavar="RUNS")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.load(a.input).astype(np.float32)
    y = sess.run(None, {name: x})[0]
    np.save(a.output, np.ascontiguousarray(y, dtype=np.float32))

    if a.time > 0:
        one = {name: x[:1]}
        for _ in range(5):
            sess.run(None, one)
        ts = []
        for _ in range(a.time):
            t0 = time.perf_counter()
            sess.run(None, one)
            ts.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({
            "median_ms": float(np.median(ts)),
            "min_ms": float(np.min(ts)),
            "runs": a.time,
            "threads": a.threads,
            "batch": 1,
        }))


if __name__ == "__main__":
    main()
