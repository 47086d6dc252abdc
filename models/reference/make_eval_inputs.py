#!/usr/bin/env python3
"""Held-out SynthAffect samples as model inputs, for `emogate-convert verify --inputs`.

    /work/venv-fixtures/bin/python models/reference/make_eval_inputs.py --n 1000 --out /tmp/synthaffect.npz

Writes an .npz with `face` [N, 1, 64, 64, 1] and `audio` [N, 1, 64, 201] (the model's input
names and shapes, one sample per leading index) plus `label` [N], drawn with train.py's
validation seed, so they are the same kind of samples as the held-out set the model was scored
on, never its training samples. `verify --random` draws random pixels, tones and noise instead:
inputs the model has never seen, on which its class scores are close together, which is the
harder test for a quantized model. Report both.

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
import train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples (default 1000)")
    ap.add_argument("--out", type=Path, required=True, help="the .npz to write")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    data = train.make_set(args.n, train.VAL_SEED, args.workers)
    # Written next to the target and renamed: no half file if interrupted.
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, face=data["face"][:, None], audio=data["audio"][:, None], label=data["label"])
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out}: {args.n} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
