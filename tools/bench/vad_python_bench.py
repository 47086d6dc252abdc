#!/usr/bin/env python3
"""Times Silero VAD per hop in Python, for `emogate-bench-vad`'s ratio.

silero-vad's own `OnnxWrapper` (`load_silero_vad(onnx=True)`: ONNX Runtime, one intra-op and
one inter-op thread, CPU provider) streams a WAV played in a loop: at each hop the new samples
join the leftover of the last hop and every whole 512-sample chunk is run, as the engine's
`VoiceDetector::observe` does. Prints JSON {"p10_ms", "p50_ms", "p90_ms", "hops",
"chunks_per_hop"}. Needs the packages of models/vad/requirements.txt; run it with
OMP_NUM_THREADS=1 (emogate-bench-vad sets it) so torch's helper threads do not spin.
"""
import argparse
import json
import time
import wave

import numpy as np
import torch
from silero_vad import load_silero_vad

RATE = 16000
CHUNK = 512
WARMUP = 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wav", required=True)
    ap.add_argument("--hops", type=int, default=1000)
    ap.add_argument("--hop-ms", type=int, default=250)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with wave.open(args.wav) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE):
            raise SystemExit(f"{args.wav}: expected 16 kHz mono 16-bit PCM")
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    hop = args.hop_ms * RATE // 1000
    total = (args.hops + WARMUP) * hop
    stream = np.resize(clip, total).astype(np.float32)
    model = load_silero_vad(onnx=True)
    model.reset_states()
    pending = np.zeros(0, dtype=np.float32)
    times, chunks = [], 0
    for i in range(args.hops + WARMUP):
        new = stream[i * hop : (i + 1) * hop]
        t = time.perf_counter()
        pending = np.concatenate([pending, new])
        whole = len(pending) // CHUNK * CHUNK
        for start in range(0, whole, CHUNK):
            model(torch.from_numpy(pending[start : start + CHUNK]), RATE)
        pending = pending[whole:]
        elapsed = (time.perf_counter() - t) * 1e3
        if i >= WARMUP:
            times.append(elapsed)
            chunks += whole // CHUNK
    times.sort()
    q = lambda p: times[round((len(times) - 1) * p)]
    print(
        json.dumps(
            {
                "p10_ms": q(0.1),
                "p50_ms": q(0.5),
                "p90_ms": q(0.9),
                "hops": len(times),
                "chunks_per_hop": chunks / len(times),
            }
        )
    )


if __name__ == "__main__":
    main()
