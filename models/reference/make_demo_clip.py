#!/usr/bin/env python3
"""The demo clip: a SynthAffect face and voice whose emotion changes every 3 s (SYNTHETIC).

    python3 models/reference/make_demo_clip.py          # numpy only (numpy==2.4.6)

Writes tests/fixtures/demo/affect.y4m (96x96 gray, `Cmono`, 5 fps) and affect.wav (16 kHz mono
16-bit) with the segments in SEGMENTS: neutral -> happy -> angry -> sad, 3 s each, 12 s in all.
Each segment shows one drawn face (its own seeded draw, with fresh sensor noise every frame) and
speaks one 3 s utterance with that label's prosody. `emogate run --model
models/reference/emogate-ref.onnx --video .../affect.y4m --audio .../affect.wav` follows the
changes; the README's expected output and `engine/tests/cli_run.rs` check it.
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
from make_dataset import wav_pcm16  # noqa: E402

OUT = HERE.parents[1] / "tests" / "fixtures" / "demo"
SEED = 9401
SEGMENTS = ["neutral", "happy", "angry", "sad"]
SEGMENT_S = 3
FPS = 5


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    frames, voice = [], []
    for k, label in enumerate(SEGMENTS):
        face = synth.random_face(label, np.random.default_rng([SEED, k, 0])).astype(np.float64)
        noise = np.random.default_rng([SEED, k, 1])
        for _ in range(SEGMENT_S * FPS):
            frames.append(np.clip(np.round(face + noise.normal(0.0, 2.0, face.shape)), 0, 255).astype(np.uint8))
        voice.append(synth.random_voice(label, np.random.default_rng([SEED, k, 2]), seconds=float(SEGMENT_S)))
    h, w = frames[0].shape
    y4m = f"YUV4MPEG2 W{w} H{h} F{FPS}:1 Ip A1:1 Cmono\n".encode() + b"".join(b"FRAME\n" + f.tobytes() for f in frames)
    (OUT / "affect.y4m").write_bytes(y4m)
    (OUT / "affect.wav").write_bytes(wav_pcm16(prep.pcm16(np.concatenate(voice))))
    print(f"wrote {OUT}: {len(frames)} frames, {len(SEGMENTS) * SEGMENT_S} s: {' -> '.join(SEGMENTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
