#!/usr/bin/env python3
"""Train emogate-ref on SynthAffect (synth.py) and save its weights.

    /work/venv-fixtures/bin/python models/reference/train.py [--samples 7000] [--epochs 10]

Writes models/reference/emogate-ref.safetensors (the trained state dict) and prints the
held-out accuracy per modality setting: both, face only (audio zeroed) and audio only (face
zeroed), which is what the engine feeds with `--missing zero`.
export.py then exports these weights. Seeds are fixed, but float sums in PyTorch's CPU kernels
depend on the machine and thread count, so the committed weights, not a rerun, are the
reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
import synth  # noqa: E402
from model import RefConfig, build  # noqa: E402

WEIGHTS = HERE / "emogate-ref.safetensors"
INIT_SEED = 7001
DATA_SEED = 7301
VAL_SEED = 7302
# The manifest's log-mel (export.py LOG_MEL), with librosa.
LOGMEL = dict(sr=16000, n_fft=400, hop_length=160, win_length=400, n_mels=64, fmin=0.0, fmax=8000.0,
              htk=False, norm="slaney", power=2.0, center=True, pad_mode="constant", window="hann")


def face_tensor(gray: np.ndarray) -> np.ndarray:
    """96x96 uint8 -> [64, 64, 1] float32, bilinear (half-pixel centers), (p/255 - 0.5)/0.5."""
    t = torch.from_numpy(gray.astype(np.float32))[None, None]
    r = F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)[0, 0]
    return ((r.numpy() / 255.0 - 0.5) / 0.5).astype(np.float32)[:, :, None]


_MEL_BASIS = librosa.filters.mel(sr=16000, n_fft=400, n_mels=64, fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
_WINDOW = librosa.filters.get_window("hann", 400, fftbins=True)


def log_mel(y: np.ndarray) -> np.ndarray:
    """librosa.feature.melspectrogram(**LOGMEL) then ln(S + 1e-6), without librosa's per-call
    overhead (checked against librosa in main())."""
    y = np.pad(y.astype(np.float32), 200)  # center=True, pad_mode="constant"
    frames = np.lib.stride_tricks.sliding_window_view(y, 400)[::160]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # [T, 201]
    return np.log(_MEL_BASIS @ power.T + 1e-6).astype(np.float32)


def check_log_mel() -> float:
    y = synth.random_voice("neutral", np.random.default_rng(1))
    ref = np.log(librosa.feature.melspectrogram(y=y, **LOGMEL) + 1e-6)
    diff = float(np.abs(ref - log_mel(y)).max())
    assert ref.shape == (64, 201) and diff < 1e-3, f"log-mel differs from librosa by {diff}"
    return diff


def _make_chunk(args: tuple[int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Samples for `labels`, from their own seeded stream (chunk results do not depend on the
    number of worker processes)."""
    seed, chunk, labels = args
    rng = np.random.default_rng([seed, chunk])
    faces = np.empty((len(labels), 64, 64, 1), np.float32)
    audio = np.empty((len(labels), 64, 201), np.float32)
    for i, c in enumerate(labels):
        name = synth.LABELS[c]
        faces[i] = face_tensor(synth.random_face(name, rng))
        audio[i] = log_mel(synth.random_voice(name, rng))
    return faces, audio


def make_set(n: int, seed: int, workers: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(synth.LABELS)
    rng.shuffle(labels)
    chunks = [(seed, i, labels[i * 250:(i + 1) * 250]) for i in range((n + 249) // 250)]
    t0 = time.time()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_make_chunk, chunks)
    print(f"  {n} samples in {time.time() - t0:.0f} s", flush=True)
    va = np.array([synth.VALENCE_AROUSAL[synth.LABELS[c]] for c in labels], np.float32)
    return {"face": np.concatenate([p[0] for p in parts]), "audio": np.concatenate([p[1] for p in parts]),
            "label": labels.astype(np.int64), "va": va}


def drop_modalities(face: torch.Tensor, audio: torch.Tensor, g: torch.Generator, p: float = 0.15):
    """Zero the face for a share p of the batch and the audio for another p (never both)."""
    r = torch.rand(face.shape[0], generator=g)
    face = face * (r >= p).float()[:, None, None, None]
    audio = audio * ((r < p) | (r >= 2 * p)).float()[:, None, None]
    return face, audio


@torch.no_grad()
def evaluate(model, data) -> dict[str, float]:
    model.eval()
    face, audio = torch.from_numpy(data["face"]), torch.from_numpy(data["audio"])
    labels = torch.from_numpy(data["label"])
    out = {}
    for name, f, a in [("both", face, audio), ("face_only", face, audio * 0), ("audio_only", face * 0, audio)]:
        p, va = model(f, a)
        out[name] = (p.argmax(-1) == labels).float().mean().item()
        if name == "both":
            out["va_rmse"] = (va - torch.from_numpy(data["va"])).pow(2).mean().sqrt().item()
            top2 = p.topk(2, dim=-1).values
            out["median_margin"] = (top2[:, 0] - top2[:, 1]).median().item()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=7000)
    ap.add_argument("--val", type=int, default=1050)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.manual_seed(INIT_SEED)
    print(f"log-mel matches librosa to {check_log_mel():.1e}")
    print(f"making {args.samples} training and {args.val} held-out samples")
    train = make_set(args.samples, DATA_SEED, args.workers)
    val = make_set(args.val, VAL_SEED, args.workers)

    model = build(INIT_SEED, RefConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * (args.samples // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(DATA_SEED)
    face, audio = torch.from_numpy(train["face"]), torch.from_numpy(train["audio"])
    labels, va = torch.from_numpy(train["label"]), torch.from_numpy(train["va"])
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.samples, generator=g)
        t0, total = time.time(), 0.0
        for b in range(args.samples // args.batch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            f, a = drop_modalities(face[idx], audio[idx], g)
            probs, va_hat = model(f, a)
            loss = F.nll_loss(torch.log(probs + 1e-9), labels[idx]) + F.mse_loss(va_hat, va[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            total += loss.item()
        m = evaluate(model, val)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / (args.samples // args.batch):.3f}, held-out "
              f"top-1 both {m['both']:.3f} face-only {m['face_only']:.3f} audio-only {m['audio_only']:.3f}, "
              f"VA RMSE {m['va_rmse']:.3f}, median top-2 margin {m['median_margin']:.3f} ({time.time() - t0:.0f} s)",
              flush=True)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS),
              metadata={"data_seed": str(DATA_SEED), "samples": str(args.samples), "epochs": str(args.epochs)})
    print(f"wrote {WEIGHTS.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
