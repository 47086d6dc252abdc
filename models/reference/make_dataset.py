#!/usr/bin/env python3
"""The reference experiment's held-out evaluation set, as media files (SYNTHETIC: SynthAffect).

    python3 models/reference/make_dataset.py --out /tmp/synthaffect-eval [--per-class 100] [--seed 9201] [--jobs N]

numpy only (no torch, no librosa); pinned: numpy==2.4.6 (models/reference/requirements-dataset.txt).
CI regenerates the set with it and compares against models/reference/experiment/dataset.sha256
(`--check`), so a drift in numpy or synth.py is caught.

Writes, for `emogate-convert eval --dataset DIR`:
- `NNNN.png`: the face, a 96x96 8-bit gray PNG (what `emogate run --video FILE.png` reads);
- `NNNN.wav`: the voice, 2.0 s of 16 kHz mono 16-bit PCM;
- `labels.csv`: `id,face,audio,label,valence,arousal`, paths relative to DIR, label as the model's
  class name (angry, disgust, fear, happy, sad, surprise, neutral), valence/arousal the label's
  circumplex target (synth.VALENCE_AROUSAL).
Labels are balanced (`--per-class` each) in a seeded shuffled order. The seed (9201) differs from
every training seed (train.py 7301/7302, experiment/grid.py 9101/9102).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
import prep  # noqa: E402
import synth  # noqa: E402

EVAL_SEED = 9201
PER_CLASS = 100
DIGESTS = HERE / "experiment" / "dataset.sha256"


def png_gray(img: np.ndarray) -> bytes:
    """A minimal 8-bit grayscale PNG (IHDR, one IDAT with filter 0 rows, IEND)."""
    h, w = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + img[y].astype(np.uint8).tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, gray, deflate, no filter method, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def wav_pcm16(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM RIFF/WAVE file."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def sample(seed: int, index: int, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index`'s face (uint8 96x96) and voice (int16), from its own seeded stream."""
    rng = np.random.default_rng([seed, index])
    name = synth.LABELS[label]
    return synth.random_face(name, rng), prep.pcm16(synth.random_voice(name, rng))


def labels_for(seed: int, per_class: int) -> np.ndarray:
    labels = np.arange(per_class * len(synth.LABELS)) % len(synth.LABELS)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def encoded(job: tuple[int, int, int]) -> tuple[bytes, bytes]:
    """Sample `index`'s PNG and WAV bytes (each sample has its own seeded stream, so any
    number of processes produce the same files)."""
    seed, index, label = job
    face, voice = sample(seed, index, label)
    return png_gray(face), wav_pcm16(voice)


def write(out: Path, seed: int, per_class: int, jobs: int = 1) -> list[tuple[str, str]]:
    """Writes the set; returns (file name, sha256) for every file, sorted by name."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ["id,face,audio,label,valence,arousal"]
    files: dict[str, bytes] = {}
    labels = labels_for(seed, per_class)
    work = [(seed, i, int(c)) for i, c in enumerate(labels)]
    if jobs > 1:
        import multiprocessing

        with multiprocessing.Pool(jobs) as pool:
            media = pool.map(encoded, work, chunksize=16)
    else:
        media = [encoded(w) for w in work]
    for i, c in enumerate(labels):
        sid = f"{i:04d}"
        files[f"{sid}.png"], files[f"{sid}.wav"] = media[i]
        name = synth.LABELS[c]
        v, a = synth.VALENCE_AROUSAL[name]
        rows.append(f"{sid},{sid}.png,{sid}.wav,{name},{v},{a}")
    files["labels.csv"] = ("\n".join(rows) + "\n").encode()
    for name, data in files.items():  # temp file + rename: no half-written file
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
    return sorted((name, hashlib.sha256(data).hexdigest()) for name, data in files.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    ap.add_argument("--write-digests", action="store_true", help=f"(re)write {DIGESTS.name} (default set only)")
    ap.add_argument("--check", action="store_true", help=f"fail unless every file matches {DIGESTS.name}")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the files do not depend on it)")
    args = ap.parse_args()
    digests = write(args.out, args.seed, args.per_class, max(1, args.jobs))
    text = "".join(f"{h}  {name}\n" for name, h in digests)
    print(f"wrote {len(digests)} files to {args.out} (numpy {np.__version__})")
    default = (args.seed, args.per_class) == (EVAL_SEED, PER_CLASS)
    if args.write_digests:
        if not default:
            sys.exit("--write-digests is for the default set (--seed 9201 --per-class 100)")
        DIGESTS.parent.mkdir(parents=True, exist_ok=True)
        DIGESTS.write_text(text)
        print(f"wrote {DIGESTS}")
    if args.check:
        expected = DIGESTS.read_text()
        if not default or expected != text:
            bad = sorted(set(expected.splitlines()) ^ set(text.splitlines()))
            print(f"dataset differs from {DIGESTS}: {len(bad)} lines differ, first: {bad[:4]}", file=sys.stderr)
            return 1
        print(f"all {len(digests)} files match {DIGESTS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
