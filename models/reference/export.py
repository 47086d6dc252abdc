#!/usr/bin/env python3
"""Export the reference architecture to ONNX with its manifest (the base and every ONNX run).

    /work/venv-gatetrain/bin/python models/reference/export.py     # re-exports base/emogate-base.onnx

Writes models/reference/base/emogate-base.onnx + .data from base/emogate-base.safetensors (the
base of the reference experiment, experiment/grid.py). It deletes both first. experiment/grid.py
exports the base and the full-fine-tuning and heads-only runs with `export_onnx`; the shipped
models/reference/emogate-ref.onnx is the base with the affect-gate adapter merged by
`emogate-convert merge` (see README.md).
- `torch.onnx.export(..., dynamo=True, opset_version=18)`, with the default optimizer and
  external data.
- The manifest is stored as JSON in `metadata_props["emogate.manifest"]`.
- The `pkg.torch.onnx.stack_trace` node metadata is removed, because it holds absolute source
  paths. The other exporter metadata, including `pkg.torch.onnx.name_scopes`, is kept.
- onnxruntime must reproduce torch to within 1e-5 on seeded random inputs; otherwise the script
  fails.

The pinned environment is in models/reference/experiment/requirements.txt.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ next to the model
sys.path.insert(0, str(HERE))
from model import EmogateRef, RefConfig, base, count_macs  # noqa: E402

warnings.filterwarnings("ignore")

SEED = 7001
OPSET = 18
ONNX_PATH = HERE / "base" / "emogate-base.onnx"
MANIFEST_KEY = "emogate.manifest"
INPUT_NAMES = ["face", "audio"]
OUTPUT_NAMES = ["probabilities", "valence_arousal"]
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
STRIP_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)

# librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=64, fmin=0, fmax=8000,
# htk=False, norm="slaney", power=2.0, center=True, pad_mode="constant", window="hann"), then ln(S + 1e-6).
LOG_MEL = {
    "type": "log_mel",
    "n_fft": 400,
    "hop_length": 160,
    "n_mels": 64,
    "fmin": 0.0,
    "fmax": 8000.0,
    "mel_scale": "slaney",
    "log": "ln",
    "log_offset": 1e-6,
    "center": True,
    "pad_mode": "constant",
    "window": "hann",
    "power": 2.0,
    "norm": "slaney",
}

MANIFEST = {
    "schema": "emogate.manifest/1",
    "name": "emogate-ref",
    "labels": LABELS,
    "inputs": [
        {"name": "face", "modality": "video", "layout": "NHWC", "color": "gray", "height": 64, "width": 64,
         "mean": [0.5], "std": [0.5], "frames": 1},
        {"name": "audio", "modality": "audio", "sample_rate": 16000, "window_s": 2.0, "layout": "NCT",
         "features": LOG_MEL},
    ],
    "outputs": [{"name": "probabilities", "kind": "probabilities"},
                {"name": "valence_arousal", "kind": "valence_arousal"}],
}


def manifest_json() -> str:
    return json.dumps(MANIFEST, separators=(",", ":"))


def example_inputs(seed: int = 7100) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs in the value ranges the model sees: face in [-1, 1], log-mel in about [-14, 2]."""
    g = torch.Generator().manual_seed(seed)
    face = torch.rand(1, 64, 64, 1, generator=g) * 2 - 1
    audio = torch.randn(1, 64, 201, generator=g) * 3 - 6
    return face, audio


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(path: Path, face: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort_session(path)
    probs, va = sess.run(OUTPUT_NAMES, {"face": face, "audio": audio})
    return probs, va


def torch_run(model: torch.nn.Module, face, audio) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        p, va = model(torch.as_tensor(face), torch.as_tensor(audio))
    return p.numpy(), va.numpy()


def meta(obj) -> dict:
    return {p.key: p.value for p in obj.metadata_props}


def export_onnx(model: EmogateRef, path: Path) -> None:
    """Dynamo export, then embed the manifest and strip the stack-trace metadata (rewrites only the .onnx)."""
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()
    face, audio = example_inputs()
    torch.onnx.export(
        model,
        (face, audio),
        str(path),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset_version=OPSET,
        dynamo=True,
        external_data=True,
        verbose=False,
    )
    m = onnx.load(str(path), load_external_data=False)  # initializers keep their external_data refs
    for n in m.graph.node:
        keep = [p for p in n.metadata_props if p.key not in STRIP_NODE_METADATA]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    del m.metadata_props[:]
    m.metadata_props.add(key=MANIFEST_KEY, value=manifest_json())
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def linear_map(path: Path, model: EmogateRef) -> list[dict]:
    """For every nn.Linear: the ONNX node and initializer that hold it, found via the MatMul/Gemm node's
    `pkg.torch.onnx.name_scopes` (a Python-list repr of module-path prefixes, ending with the op name).
    Checks the initializer values against torch (orientation [in,out] for MatMul, [out,in] for Gemm transB=1)."""
    m = onnx.load(str(path), load_external_data=False)  # as stored: external_data refs intact
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    values = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    out = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        nodes = []
        for n in g.node:
            md = meta(n)
            sc = md.get("pkg.torch.onnx.name_scopes")
            if sc is None or n.op_type not in ("MatMul", "Gemm"):
                continue
            if mod_name in json.loads(sc.replace("'", '"')):
                nodes.append(n)
        assert len(nodes) == 1, (mod_name, [n.name for n in nodes])
        n = nodes[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        wname = n.input[1]
        t = inits[wname]
        arr = values[wname]
        W = mod.weight.detach().numpy()
        if n.op_type == "Gemm" and attrs.get("transB", 0) == 1:
            orient, ref = "[out,in]", W
        else:
            orient, ref = "[in,out]", W.T
        assert arr.shape == ref.shape and np.array_equal(arr, ref), (mod_name, wname)
        md = meta(n)
        out.append(
            {
                "module": mod_name,
                "node": n.name,
                "op_type": n.op_type,
                "node_attrs": {k: v for k, v in attrs.items() if isinstance(v, (int, float))},
                "node_inputs": list(n.input),
                "node_name_scopes": md.get("pkg.torch.onnx.name_scopes"),
                "node_class_hierarchy": md.get("pkg.torch.onnx.class_hierarchy"),
                "node_namespace": md.get("namespace"),
                "initializer": wname,
                "shape": list(t.dims),
                "orientation": orient,
                "initializer_external": t.data_location == onnx.TensorProto.EXTERNAL,
                "initializer_external_data": {e.key: e.value for e in t.external_data},
                "initializer_metadata": meta(t),
                "initializer_num_consumers": consumers.get(wname, 0),
                "bias": n.input[2] if len(n.input) > 2 else None,
                "values_match_torch_weight": True,
            }
        )
    return out


def describe(path: Path, model: EmogateRef) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    data = path.with_name(path.name + ".data")

    def io(v):
        tt = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type), "shape": [d.dim_value for d in tt.shape.dim]}

    n_params = sum(p.numel() for p in model.parameters())
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    macs = count_macs(model.cfg)
    return {
        "onnx": path.name,
        "onnx_data": data.name,
        "onnx_bytes": path.stat().st_size,
        "onnx_data_bytes": data.stat().st_size,
        "parameters": n_params,
        "parameters_f32_bytes": 4 * n_params,
        "config": model.cfg.to_dict(),
        "seed": SEED,
        "macs": macs,
        "flops_approx": 2 * macs["total"],
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}",
        "inputs": [io(v) for v in g.input],
        "outputs": [io(v) for v in g.output],
        "op_types": dict(sorted(ops.items())),
        "num_nodes": len(g.node),
        "num_initializers": len(g.initializer),
        "num_external_initializers": sum(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer),
        "metadata_props_keys": [p.key for p in m.metadata_props],
        "node_metadata_keys": sorted({p.key for n in g.node for p in n.metadata_props}),
    }


def export_reference(path: Path = ONNX_PATH, seed: int = SEED) -> tuple[EmogateRef, dict]:
    torch.manual_seed(seed)
    model = base()
    export_onnx(model, path)
    info = describe(path, model)
    # onnxruntime vs torch on three seeded inputs
    diffs = []
    for s in range(3):
        face, audio = example_inputs(7100 + s)
        tp, tva = torch_run(model, face, audio)
        op, ova = ort_run(path, face.numpy(), audio.numpy())
        diffs.append(max(float(np.abs(tp - op).max()), float(np.abs(tva - ova).max())))
    info["ort_max_abs_diff_vs_torch"] = max(diffs)
    assert info["ort_max_abs_diff_vs_torch"] < 1e-5, info["ort_max_abs_diff_vs_torch"]
    info["linears"] = linear_map(path, model)
    m = onnx.load(str(path), load_external_data=False)
    assert json.loads(meta(m)[MANIFEST_KEY]) == MANIFEST
    return model, info


def main() -> int:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model, info = export_reference()
    gate = [e for e in info["linears"] if e["module"].endswith("gate_proj")]
    print(f"wrote {ONNX_PATH.relative_to(HERE.parents[1])} ({info['onnx_bytes']} B) + .data ({info['onnx_data_bytes']} B)")
    print(f"parameters: {info['parameters']} ({info['parameters_f32_bytes'] / 1e6:.2f} MB f32), "
          f"~{info['flops_approx'] / 1e6:.1f} MFLOPs per inference")
    print(f"opset {info['opset']}, ops: {info['op_types']}")
    print(f"inputs: {info['inputs']}\noutputs: {info['outputs']}")
    print(f"onnxruntime vs torch max|diff| = {info['ort_max_abs_diff_vs_torch']:.2e}")
    for e in gate:
        print(f"  {e['module']}: {e['op_type']} {e['node']} <- {e['initializer']} {e['shape']} {e['orientation']}; name_scopes {e['node_name_scopes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
