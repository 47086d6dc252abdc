#!/usr/bin/env python3
"""Time librosa's log-mel on one 2 s window (the Python baseline for the Rust log-mel).

    /work/venv-fixtures/bin/python tools/bench/logmel_librosa.py [--wav PATH] [--runs 200] [--htk]

It computes the same features as the reference model's manifest (tests/fixtures/engine/logmel/):
    np.log(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, win_length=400,
           n_mels=64, fmin=0.0, fmax=8000.0, htk=False, norm="slaney", power=2.0, center=True,
           pad_mode="constant", window="hann") + 1e-6)
The input is float32. It is the first 2 s of --wav, which defaults to
tests/fixtures/engine/logmel/signal.wav. Without that file, the window is seeded noise.

The mel filterbank is built inside each call, as librosa does by default (its cache is off unless
LIBROSA_CACHE_DIR is set). The script does 10 warm-up calls and then times --runs calls with
time.perf_counter. It prints one JSON line:
{"median_ms": ..., "mean_ms": ..., "min_ms": ..., "p10_ms": ..., "p90_ms": ..., "runs": ..., "frames": ..., "librosa": ..., "numpy": ...}

Requirements: tools/fixtures/requirements-engine.txt (librosa 0.11.0, soundfile, numpy).
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import librosa
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SR = 16000
WINDOW = 2 * SR


def load_window(path: Path) -> np.ndarray:
    if path.exists():
        import soundfile as sf

        y, sr = sf.read(str(path), dtype="float32", always_2d=True)
        y = y.mean(axis=1).astype(np.float32)
        if sr != SR:
            y = librosa.resample(y, orig_sr=sr, target_sr=SR, res_type="soxr_hq").astype(np.float32)
    else:
        y = (0.1 * np.random.default_rng(0).standard_normal(WINDOW)).astype(np.float32)
    y = y[:WINDOW]
    return np.pad(y, (0, WINDOW - y.size)).astype(np.float32)


def log_mel(y: np.ndarray, htk: bool) -> np.ndarray:
    S = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=400, hop_length=160, win_length=400, n_mels=64, fmin=0.0, fmax=8000.0,
        htk=htk, norm="slaney", power=2.0, center=True, pad_mode="constant", window="hann",
    )
    return np.log(S + 1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wav", type=Path, default=REPO / "tests" / "fixtures" / "engine" / "logmel" / "signal.wav")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--htk", action="store_true")
    args = ap.parse_args()

    y = load_window(args.wav)
    for _ in range(args.warmup):
        out = log_mel(y, args.htk)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = log_mel(y, args.htk)
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "runs": args.runs,
        "frames": int(out.shape[1]),
        "n_mels": int(out.shape[0]),
        "mel_scale": "htk" if args.htk else "slaney",
        "librosa": librosa.__version__,
        "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
