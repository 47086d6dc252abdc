#!/usr/bin/env python3
"""Expected results of the reference experiment, computed independently of emogate's Rust code.

    /work/venv-gatetrain/bin/python models/reference/experiment/expected.py --dataset /tmp/synthaffect-eval

Needs numpy, onnx, onnxruntime and safetensors (no torch, no PEFT, no librosa). Reads plan.json and
the held-out set written by `make_dataset.py` (regenerate it first; its files are checked against
dataset.sha256 here), and writes expected.json:

- `runs[]`: per run (and for the base) and per modality setting (`both`; `face_only`: audio input
  zeroed; `audio_only`: face input zeroed, as `emogate run --missing zero` feeds a missing input),
  the number of correct top-1 answers out of `n` and the 7x7 confusion matrix (rows: true label,
  columns: predicted, in the model's label order).
  Inputs are made from the PNG/WAV files with prep.py (the runtime's preprocessing, in numpy).
  An adapter is merged here in numpy: for each LoRA module, `W[in,out] += (scale * B @ A)^T` on the
  MatMul initializer the module's `pkg.torch.onnx.name_scopes` names (scale = alpha/r after
  rank_pattern/alpha_pattern), and each `modules_to_save` head's Gemm weight and bias are replaced.
  The merged graph runs on onnxruntime (CPU, 1 thread).
- `weight_shift`: full fine-tuning (seed 1..3) against the base, per module and per module type
  (q/k/v/o/gate/up/down_proj, norm, embedding, head, face_stem, audio_stem): parameter count,
  ||W' - W||_F / ||W||_F, and the share of the total ||W' - W||^2 (float64 sums over the f32 values).
  A Linear's module is found by name_scopes; every other initializer by its name (the exporter
  keeps parameter names for those, and folds `modality_embed[i]` into `select`/`select_1`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from safetensors.numpy import load_file

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE.parent))
import prep  # noqa: E402

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
MODALITIES = ("both", "face_only", "audio_only")
PEFT_PREFIX = "base_model.model."


# ------------------------------------------------------------------------------------ media I/O
def read_png_gray(path: Path) -> np.ndarray:
    """An 8-bit gray, non-interlaced PNG (what make_dataset.py writes), with any row filter."""
    b = path.read_bytes()
    if b[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(b):
        (length,) = struct.unpack(">I", b[pos:pos + 4])
        kind, data = b[pos + 4:pos + 8], b[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    w, h, depth, color, _, _, interlace = ihdr
    if (depth, color, interlace) != (8, 0, 0):
        raise ValueError(f"{path}: expected an 8-bit gray non-interlaced PNG, got depth {depth} color {color}")
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
    img = np.zeros((h, w), np.int32)
    for y in range(h):
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = img[y - 1] if y else np.zeros(w, np.int32)
        if f == 0:
            img[y] = row
        elif f == 2:
            img[y] = (row + prev) & 255
        else:
            raise ValueError(f"{path}: row filter {f} not supported by this reader")
    return img.astype(np.uint8)


def read_wav_pcm16(path: Path) -> np.ndarray:
    """A mono 16-bit PCM WAV's samples as int16 (16 kHz checked)."""
    b = path.read_bytes()
    if b[:4] != b"RIFF" or b[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(b):
        kind, (length,) = b[pos:pos + 4], struct.unpack("<I", b[pos + 4:pos + 8])
        if kind == b"fmt ":
            fmt = struct.unpack("<HHIIHH", b[pos + 8:pos + 24])
        elif kind == b"data":
            data = b[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
    if fmt is None or data is None or fmt[0] != 1 or fmt[1] != 1 or fmt[2] != 16000 or fmt[5] != 16:
        raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM, got fmt {fmt}")
    return np.frombuffer(data, "<i2").astype(np.int16)


def load_dataset(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    lines = (root / "labels.csv").read_text().splitlines()
    if lines[0] != "id,face,audio,label,valence,arousal":
        raise ValueError(f"{root / 'labels.csv'}: unexpected header {lines[0]!r}")
    faces, audio, labels, ids = [], [], [], []
    for line in lines[1:]:
        sid, face, wav, label, _, _ = line.split(",")
        faces.append(prep.face_input(read_png_gray(root / face)))
        audio.append(prep.log_mel(prep.from_pcm16(read_wav_pcm16(root / wav))))
        labels.append(LABELS.index(label))
        ids.append(sid)
    return np.stack(faces), np.stack(audio), np.array(labels), ids


def check_digests(root: Path) -> None:
    expected = (HERE / "dataset.sha256").read_text().split("\n")
    for line in filter(None, expected):
        digest, name = line.split("  ")
        got = hashlib.sha256((root / name).read_bytes()).hexdigest()
        if got != digest:
            raise SystemExit(f"{root / name}: sha256 {got} differs from dataset.sha256 ({digest}); regenerate the set")


# ------------------------------------------------------------------------------------ the graph
def scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            return json.loads(p.value.replace("'", '"'))
    return []


def module_map(model: onnx.ModelProto) -> dict[str, tuple[str, str, str | None]]:
    """module path -> (op type, weight initializer, bias initializer) for MatMul/Gemm nodes."""
    out = {}
    inits = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        sc = scopes(n)
        if len(sc) < 2:
            continue
        module = sc[-2]  # the innermost module scope (the last entry is the op)
        out[module] = (n.op_type, n.input[1], n.input[2] if len(n.input) > 2 else None)
    return out


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    return m.SerializeToString()


def adapter_scale(cfg: dict, module: str, rank: int) -> float:
    def pick(pattern: dict, default):
        for key, v in pattern.items():  # PEFT: a key matches the module path or its dotted suffix
            if re.fullmatch(rf"(.*\.)?{key}", module):
                return v
        return default

    r = pick(cfg.get("rank_pattern") or {}, cfg["r"])
    alpha = pick(cfg.get("alpha_pattern") or {}, cfg["lora_alpha"])
    if r != rank:
        raise ValueError(f"{module}: lora_A rank {rank} but the config gives {r}")
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise ValueError("rsLoRA/DoRA not expected in this experiment")
    return alpha / r


def merge_adapter(base: onnx.ModelProto, adapter: Path) -> tuple[bytes, dict]:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    mods = module_map(base)
    values = initializers(base)
    new: dict[str, np.ndarray] = {}
    lora_modules = sorted({k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k})
    for module in lora_modules:
        a = tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"].astype(np.float64)
        b = tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"].astype(np.float64)
        op, w, _ = mods[module]
        if op != "MatMul":
            raise ValueError(f"{module}: LoRA on a {op} node")
        delta = adapter_scale(cfg, module, a.shape[0]) * (b @ a)  # [out, in]
        new[w] = (values[w].astype(np.float64) + delta.T).astype(np.float32)
    for head in cfg.get("modules_to_save") or []:
        op, w, bias = mods[head]
        new[w] = tensors[f"{PEFT_PREFIX}{head}.weight"]  # Gemm transB=1: [out, in] as torch stores it
        if bias is not None:
            new[bias] = tensors[f"{PEFT_PREFIX}{head}.bias"]
    return with_initializers(base, new), {"lora_modules": lora_modules, "replaced_heads": cfg.get("modules_to_save") or []}


def session(model: bytes | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def evaluate(sess: ort.InferenceSession, faces: np.ndarray, audio: np.ndarray, labels: np.ndarray) -> dict:
    out = {}
    zf, za = np.zeros_like(faces[0:1]), np.zeros_like(audio[0:1])
    for mode in MODALITIES:
        conf = np.zeros((len(LABELS), len(LABELS)), np.int64)
        for i in range(len(labels)):
            f = zf if mode == "audio_only" else faces[i:i + 1]
            a = za if mode == "face_only" else audio[i:i + 1]
            p = sess.run(["probabilities"], {"face": f, "audio": a})[0][0]
            conf[labels[i], int(np.argmax(p))] += 1
        out[mode] = {"correct": int(np.trace(conf)), "n": int(len(labels)), "confusion": conf.tolist()}
    return out


# --------------------------------------------------------------------------------- weight shift
def module_type(module: str) -> str:
    last = module.split(".")[-1]
    if last in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        return last
    if "norm" in module:
        return "norm"
    if "embed" in module or module in ("select", "select_1"):
        return "embedding"
    if "head" in module:
        return "head"
    if module.startswith("face_stem"):
        return "face_stem"
    if module.startswith("audio_stem"):
        return "audio_stem"
    return "other"


def weight_shift(base: onnx.ModelProto, tuned: onnx.ModelProto) -> dict:
    bv, tv = initializers(base), initializers(tuned)
    bmods, tmods = module_map(base), module_map(tuned)
    names: dict[str, str] = {}  # base initializer -> parameter name (module.weight / .bias)
    for module, (_, w, b) in bmods.items():
        names[w] = f"{module}.weight"
        if b:
            names[b] = f"{module}.bias"
    tnames = {}
    for module, (_, w, b) in tmods.items():
        tnames[f"{module}.weight"] = w
        if b:
            tnames[f"{module}.bias"] = b
    rows = []
    for init, arr in bv.items():
        if not np.issubdtype(arr.dtype, np.floating) or arr.size < 2:
            continue  # scalars and integer constants (shapes, eps) are not parameters
        param = names.get(init, init)
        other = tnames.get(param, init)
        if other not in tv or tv[other].shape != arr.shape:
            raise ValueError(f"{param}: no initializer of shape {arr.shape} in the tuned model")
        w, w2 = arr.astype(np.float64), tv[other].astype(np.float64)
        module = param.rsplit(".", 1)[0] if param.endswith((".weight", ".bias")) else param
        rows.append({"parameter": param, "module": module, "type": module_type(module), "count": int(arr.size),
                     "w_norm_sq": float((w**2).sum()), "delta_norm_sq": float(((w2 - w) ** 2).sum())})
    total = sum(r["delta_norm_sq"] for r in rows)
    for r in rows:
        r["rel_change"] = float(np.sqrt(r["delta_norm_sq"] / r["w_norm_sq"])) if r["w_norm_sq"] > 0 else None
        r["share"] = r["delta_norm_sq"] / total
    types: dict[str, dict] = {}
    for r in rows:
        t = types.setdefault(r["type"], {"count": 0, "w_norm_sq": 0.0, "delta_norm_sq": 0.0})
        t["count"] += r["count"]
        t["w_norm_sq"] += r["w_norm_sq"]
        t["delta_norm_sq"] += r["delta_norm_sq"]
    for t in types.values():
        t["rel_change"] = float(np.sqrt(t["delta_norm_sq"] / t["w_norm_sq"])) if t["w_norm_sq"] > 0 else None
        t["share"] = t["delta_norm_sq"] / total
    return {"total_delta_norm_sq": total, "by_type": dict(sorted(types.items())), "by_parameter": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="the folder make_dataset.py wrote")
    ap.add_argument("--out", type=Path, default=HERE / "expected.json")
    args = ap.parse_args()
    check_digests(args.dataset)
    plan = json.loads((HERE / "plan.json").read_text())
    faces, audio, labels, _ = load_dataset(args.dataset)
    base_path = (HERE / plan["base"]).resolve()
    base = load(base_path)
    results = [{"name": "base", "seed": None, **evaluate(session(str(base_path)), faces, audio, labels)}]
    print(f"base: {results[0]['both']['correct']}/{len(labels)}", flush=True)
    shifts = {}
    for run in plan["runs"]:
        if "adapter" in run:
            blob, info = merge_adapter(base, HERE / run["adapter"])
            sess = session(blob)
        else:
            path = HERE / run["model"]
            sess = session(str(path))
            info = {"model": run["model"]}
            if run["name"] == "full":
                shifts[f"s{run['seed']}"] = weight_shift(base, load(path))
        r = {"name": run["name"], "seed": run["seed"], "trainable_params": run["trainable_params"], **info,
             **evaluate(sess, faces, audio, labels)}
        results.append(r)
        print(f"{run['name']} s{run['seed']}: " + ", ".join(f"{m} {r[m]['correct']}" for m in MODALITIES), flush=True)
    out = {
        "generated_by": "models/reference/experiment/expected.py",
        "versions": {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "dataset": {**plan["eval"], "n": int(len(labels))},
        "labels": LABELS,
        "modalities": {"both": "face and audio", "face_only": "audio input zeroed", "audio_only": "face input zeroed"},
        "runs": results,
        "weight_shift": {"tuned": "full", "base": plan["base"], "by_seed": shifts},
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
