#!/usr/bin/env python3
"""Writes tests/fixtures/prep/: SynthAffect media and prep.py's model inputs for them.

    python3 models/reference/make_prep_fixture.py      # numpy only (numpy==2.4.6)

The Rust test `tests/tests/prep_matches_python.rs` reads the same PNG and WAV files the way
`emogate run` does, runs the engine's featurizer with the base model's manifest and requires
prep.py's features (`features.npz`: `face` [3, 64, 64, 1], `audio` [2, 64, 201]) to agree to 1e-5:
the training transform is the runtime transform.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
import prep  # noqa: E402
import synth  # noqa: E402
from make_dataset import png_gray, wav_pcm16  # noqa: E402

OUT = HERE.parents[1] / "tests" / "fixtures" / "prep"
SEED = 9301
FACES = ["happy", "angry", "surprise"]
VOICES = ["sad", "fear"]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    faces, audio = [], []
    for i, label in enumerate(FACES):
        img = synth.random_face(label, rng)
        (OUT / f"face{i}.png").write_bytes(png_gray(img))
        faces.append(prep.face_input(img))
    for i, label in enumerate(VOICES):
        pcm = prep.pcm16(synth.random_voice(label, rng))
        (OUT / f"voice{i}.wav").write_bytes(wav_pcm16(pcm))
        audio.append(prep.log_mel(prep.from_pcm16(pcm)))
    np.savez_compressed(OUT / "features.npz", face=np.stack(faces), audio=np.stack(audio))
    print(f"wrote {OUT}: {len(FACES)} faces, {len(VOICES)} voices (numpy {np.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
