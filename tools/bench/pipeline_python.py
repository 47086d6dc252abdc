#!/usr/bin/env python3
"""The straightforward Python pipeline `emogate-bench-pipeline` compares against.

    /work/venv-fixtures/bin/python tools/bench/pipeline_python.py \
        --model models/reference/emogate-ref.onnx --video tests/fixtures/sample/face.y4m \
        --audio tests/fixtures/sample/voice.wav --seconds 30 --hop-ms 250

It does the work of `emogate run` on the reference model, at real-time pacing:
every hop it takes the last 2 s of audio and the newest frame of the
(looped) recording, computes librosa's log-mel, resizes and normalizes the
face crop (Pillow, area filter), runs ONNX Runtime (CPU, 1 thread), smooths
the probabilities exponentially and writes one JSON line per event to
/dev/null. Capture is simulated by slicing the preloaded recording at the
wall-clock time, which is less work than emogate's replay threads do.

It prints one JSON line: process CPU seconds, CPU seconds inside
session.run (time.thread_time: ORT runs single-threaded on the calling
thread), wall seconds, events, and capture-to-written latency p50/p99 in ms
(from the time the newest sample of the window was "captured" to the line
written).

Requirements: tools/bench/requirements-pipeline.txt.
"""
import argparse
import json
import time

import librosa
import numpy as np
import onnxruntime as ort
import soundfile as sf
from PIL import Image

SR = 16000


def read_y4m(path):
    data = open(path, "rb").read()
    header, rest = data.split(b"\n", 1)
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    w, h = int(fields[b"W"]), int(fields[b"H"])
    num, den = (int(x) for x in fields[b"F"].split(b":"))
    frames = []
    plane = w * h
    chroma = 0 if fields.get(b"C", b"420").startswith(b"mono") else 2 * ((w + 1) // 2) * ((h + 1) // 2)
    while rest.startswith(b"FRAME"):
        start = rest.index(b"\n") + 1
        frames.append(np.frombuffer(rest[start:start + plane], dtype=np.uint8).reshape(h, w))
        rest = rest[start + plane + chroma:]
    return frames, num / den


def log_mel(y):
    S = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=400, hop_length=160, win_length=400, n_mels=64, fmin=0.0, fmax=8000.0,
        htk=False, norm="slaney", power=2.0, center=True, pad_mode="constant", window="hann",
    )
    return np.log(S + 1e-6).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hop-ms", type=float, default=250.0)
    args = ap.parse_args()

    y, sr = sf.read(args.audio, dtype="float32", always_2d=True)
    y = y.mean(axis=1).astype(np.float32)
    if sr != SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=SR).astype(np.float32)
    frames, fps = read_y4m(args.video)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    sink = open("/dev/null", "w")

    hop = args.hop_ms / 1e3
    window = 2 * SR
    # Warm-up outside the measurement: librosa's first call compiles and
    # caches, ORT's first run allocates.
    for _ in range(3):
        face0 = np.zeros((1, 64, 64, 1), np.float32)
        sess.run(names, {"face": face0, "audio": log_mel(y[:window])[None, :, :]})
    smoothed = None
    latencies = []
    run_cpu = 0.0
    events = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    k = 0
    while True:
        tick = 2.0 + k * hop
        if tick > args.seconds:
            break
        now = time.monotonic() - t0
        if now < tick:
            time.sleep(tick - now)
        captured = t0 + tick
        end = int(round(tick * SR))
        idx = np.arange(end - window, end) % y.size
        audio = y[idx]
        mel = log_mel(audio)[None, :, :]
        frame = frames[int(tick * fps) % len(frames)]
        face = np.asarray(Image.fromarray(frame).resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
        face = ((face / 255.0 - 0.5) / 0.5)[None, :, :, None].astype(np.float32)
        c = time.thread_time()
        probs, va = sess.run(names, {"face": face, "audio": mel})
        run_cpu += time.thread_time() - c
        p = probs[0]
        smoothed = p if smoothed is None else 0.7071 * smoothed + 0.2929 * p
        top = int(np.argmax(smoothed))
        event = {
            "type": "emotion", "seq": events, "stamp_s": tick, "expression": labels[top],
            "confidence": float(smoothed[top]),
            "probs": {l: float(v) for l, v in zip(labels, smoothed)},
            "valence": float(va[0][0]), "arousal": float(va[0][1]),
        }
        sink.write(json.dumps(event) + "\n")
        sink.flush()
        latencies.append((time.monotonic() - captured) * 1e3)
        events += 1
        k += 1
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    latencies.sort()
    print(json.dumps({
        "cpu_s": cpu, "model_cpu_s": run_cpu, "wall_s": wall, "events": events,
        "latency_p50_ms": latencies[len(latencies) // 2],
        "latency_p99_ms": latencies[int((len(latencies) - 1) * 0.99)],
        "onnxruntime": ort.__version__, "librosa": librosa.__version__,
    }))


if __name__ == "__main__":
    main()
