#!/usr/bin/env python3
"""Held-out SynthAffect samples as model inputs, for `emogate-convert verify --inputs`.

    python3 models/reference/make_eval_inputs.py --n 1000 --out /tmp/synthaffect.npz   # numpy only

Writes an .npz with `face` [N, 1, 64, 64, 1] and `audio` [N, 1, 64, 201] (the model's input
names and shapes, one sample per leading index) plus `label` [N]: for N <= 700 the first N
samples of the held-out evaluation set (`make_dataset.py`, seed 9201, never used in training;
a larger N shuffles a longer balanced label list), made into model inputs with prep.py (the
runtime's preprocessing).
`verify --random` draws random pixels, tones and noise instead: inputs the model has never seen,
on which its class scores are close together, which is the harder test for a quantized model.
Report both.

About 70 KB per sample: generate on demand, never commit the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
import prep  # noqa: E402
from make_dataset import EVAL_SEED, PER_CLASS, labels_for, sample  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples (default 1000)")
    ap.add_argument("--out", type=Path, required=True, help="the .npz to write")
    args = ap.parse_args()
    # The evaluation set's label order (700 samples); a larger N reshuffles a longer list.
    labels = labels_for(EVAL_SEED, max(PER_CLASS, -(-args.n // 7)))[: args.n]
    face = np.empty((args.n, 1, 64, 64, 1), np.float32)
    audio = np.empty((args.n, 1, 64, 201), np.float32)
    for i, c in enumerate(labels):
        img, pcm = sample(EVAL_SEED, i, int(c))
        face[i, 0] = prep.face_input(img)
        audio[i, 0] = prep.log_mel(prep.from_pcm16(pcm))
    # Written next to the target and renamed: no half file if interrupted.
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, face=face, audio=audio, label=labels.astype(np.int64))
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out}: {args.n} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
