#!/usr/bin/env python3
"""Times ONNX Runtime's Python API on a model, for `emogate-bench-model`'s ratio.

Feeds random inputs of each graph input's static shape (a symbolic
leading axis gets --batch, other symbolic axes 1), runs warm-up
iterations, then prints JSON: {"version", "p50_ms", "p99_ms", "threads"}.
With --profile, ONNX Runtime's own profiler is on instead, and the JSON
holds "ops": the mean microseconds per run each operator type took (by
the kernel-time events of its profile), and "profiled_p50_ms": the run
time with the profiler on (it adds a fixed cost per node).
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    if args.profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (args.batch if k == 0 else 1)
                 for k, d in enumerate(i.shape)]
        if "int64" in i.type:
            feeds[i.name] = rng.integers(0, 10, size=shape, dtype=np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    for _ in range(5):
        sess.run(None, feeds)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    if args.profile:
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        ops = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                op = e["args"].get("op_name", "?")
                ops[op] = ops.get(op, 0.0) + e["dur"] / max(runs, 1)
        print(json.dumps({
            "version": ort.__version__,
            "profiled_p50_ms": times[len(times) // 2],
            "ops": ops,
        }))
        return
    print(json.dumps({
        "version": ort.__version__,
        "p50_ms": times[len(times) // 2],
        "p99_ms": times[int((len(times) - 1) * 0.99)],
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
