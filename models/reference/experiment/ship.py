#!/usr/bin/env python3
"""Ship the experiment's trained adapters and refresh the engine's reference fixture.

    /work/venv-gatetrain/bin/python models/reference/experiment/ship.py
    cargo build -p emogate-tools --bin emogate-convert   # then, from the repository root:
    target/debug/emogate-convert merge --model models/reference/base/emogate-base.onnx \
        --adapter models/reference/adapters/affect-gate --out models/reference/emogate-ref.onnx

1. Copies two affect-tuned adapters of the base (seed 1) to models/reference/adapters/:
   `affect-gate` (runs/lora-gate/s1: LoRA on gate_proj, r 6) and `affect-all` (runs/lora-all/s1:
   LoRA on all seven linear types, r 6), both with new emotion/VA heads (`modules_to_save`).
2. Rewrites tests/fixtures/engine/reference_expected.json for them: the model is now the base
   (`models/reference/base/emogate-base.onnx`), and for each adapter PyTorch/PEFT's unmerged,
   reloaded and `merge_and_unload()` outputs on the fixture's recorded face/audio input, plus the
   same checks make_engine_fixtures.py records (a numpy merge from the files, and PEFT's merged
   weights written into the ONNX initializers and run on onnxruntime). The recorded input tensors
   are kept. INDEX.json's size/digest entries are updated for the files this changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from peft import PeftModel
from safetensors.numpy import load_file as np_load_file

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
REF = HERE.parent
REPO = REF.parents[1]
sys.dont_write_bytecode = True
sys.path.insert(0, str(REF))
sys.path.insert(0, str(HERE))
import export as ref_export  # noqa: E402
from grid import BASE_ONNX, load_base  # noqa: E402

ADAPTERS = REF / "adapters"
SHIPPED = {"affect-gate": HERE / "runs" / "lora-gate" / "s1", "affect-all": HERE / "runs" / "lora-all" / "s1"}
FIXTURE = REPO / "tests" / "fixtures" / "engine" / "reference_expected.json"
INDEX = REPO / "tests" / "fixtures" / "engine" / "INDEX.json"


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def f32(values) -> list[float]:
    """float32 values as the shortest decimal that round-trips in float32 (as make_engine_fixtures.py)."""
    return [float(str(v)) for v in np.asarray(values, np.float32).reshape(-1)]


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


def outputs_dict(p, va) -> dict:
    return {"probabilities": f32(p), "valence_arousal": f32(va)}


def max_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def ship_adapters() -> None:
    for old in ("calm", "excited", *SHIPPED):
        if (ADAPTERS / old).exists():
            shutil.rmtree(ADAPTERS / old)
    for name, src in SHIPPED.items():
        dst = ADAPTERS / name
        dst.mkdir(parents=True)
        cfg = json.loads((src / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "emogate-base"
        (dst / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(src / "adapter_model.safetensors", dst / "adapter_model.safetensors")


def adapter_record(name: str, face, audio, gate_map: list[dict], linears: list[dict]) -> dict:
    adir = ADAPTERS / name
    pm = PeftModel.from_pretrained(load_base(), str(adir)).eval()
    unmerged = ref_export.torch_run(pm, face, audio)
    merged_model = PeftModel.from_pretrained(load_base(), str(adir)).merge_and_unload().eval()
    merged = ref_export.torch_run(merged_model, face, audio)
    base = ref_export.torch_run(load_base(), face, audio)
    sd = np_load_file(str(adir / "adapter_model.safetensors"))
    acfg = json.loads((adir / "adapter_config.json").read_text())
    scale = acfg["lora_alpha"] / acfg["r"]
    base_model = load_base()
    file_merge = 0.0
    lora_modules = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k})
    for mod in lora_modules:
        a, b = sd[f"base_model.model.{mod}.lora_A.weight"], sd[f"base_model.model.{mod}.lora_B.weight"]
        w = base_model.get_submodule(mod).weight.detach().numpy() + scale * (b @ a)
        file_merge = max(file_merge, float(np.abs(w - merged_model.get_submodule(mod).weight.detach().numpy()).max()))
    # PEFT's merged weights (LoRA modules and heads) written into the base ONNX, on onnxruntime
    m = onnx.load(str(BASE_ONNX))
    inits = {t.name: t for t in m.graph.initializer}
    for e in linears:
        mod = merged_model.get_submodule(e["module"])
        for param, init in (("weight", e["initializer"]), ("bias", e["bias"])):
            if init is None:
                continue
            arr = getattr(mod, param).detach().numpy()
            if param == "weight" and e["orientation"] == "[in,out]":
                arr = arr.T
            inits[init].CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), init))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    onnx_merged = tuple(sess.run(ref_export.OUTPUT_NAMES, {"face": face, "audio": audio}))
    rec = {
        "dir": rel(adir),
        "trained_by": f"models/reference/experiment/grid.py ({rel(SHIPPED[name])})",
        "config": {k: acfg[k] for k in ("r", "lora_alpha", "target_modules", "modules_to_save", "rank_pattern", "alpha_pattern")},
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(sd.items())},
        "unmerged": outputs_dict(*unmerged),
        "merged": outputs_dict(*merged),
        "max_abs_unmerged_vs_merged": max_diff(unmerged, merged),
        "max_abs_merged_vs_base": max_diff(merged, base),
        "max_abs_file_merge_vs_peft_weights": file_merge,
        "python_onnx_merge_ort_max_abs_diff": max_diff(onnx_merged, merged),
    }
    assert rec["max_abs_unmerged_vs_merged"] < 1e-5, rec
    assert rec["max_abs_merged_vs_base"] > 1e-3, rec
    assert rec["max_abs_file_merge_vs_peft_weights"] < 1e-6, rec
    assert rec["python_onnx_merge_ort_max_abs_diff"] < 1e-5, rec
    print(f"adapter {name}: probs {np.round(merged[0], 4).tolist()}, onnx merge vs torch {rec['python_onnx_merge_ort_max_abs_diff']:.1e}")
    return rec


def refresh_fixture(exp: dict | None = None) -> None:
    """Fills in everything but the recorded inputs (`face`, `audio` and their shapes, which `exp`
    or the existing fixture holds) and writes the fixture."""
    exp = exp if exp is not None else json.loads(FIXTURE.read_text())
    face = np.asarray(exp["face"], np.float32).reshape(exp["face_shape"])
    audio = np.asarray(exp["audio"], np.float32).reshape(exp["audio_shape"])
    model = load_base()
    linears = ref_export.linear_map(BASE_ONNX, model)
    info = ref_export.describe(BASE_ONNX, model)
    base_t = ref_export.torch_run(model, face, audio)
    base_o = ref_export.ort_run(BASE_ONNX, face, audio)
    d_ort = max_diff(base_t, base_o)
    assert d_ort < 1e-5, d_ort
    gate_map = [e for e in linears if e["module"].endswith(".mlp.gate_proj")]
    exp.update({
        "model": rel(BASE_ONNX),
        "model_note": "the base of the reference experiment (models/reference/experiment/grid.py): pretrained without "
                      "emotion labels, random emotion/VA heads; the adapters add trained heads",
        "base": dict(outputs_dict(*base_t), onnxruntime=outputs_dict(*base_o), max_abs_onnxruntime_vs_torch=d_ort),
        "adapters": {name: adapter_record(name, face, audio, gate_map, linears) for name in SHIPPED},
        "gate_proj": gate_map,
        "onnx": {k: v for k, v in info.items() if k != "linears"},
        "other_linears": [{k: e[k] for k in ("module", "node", "op_type", "initializer", "shape", "orientation", "node_name_scopes")}
                          for e in linears if e not in gate_map],
    })
    exp.pop("model_seed", None)
    dump_json(FIXTURE, exp)
    print(f"wrote {rel(FIXTURE)}")


def refresh_index() -> None:
    index = json.loads(INDEX.read_text())
    files = index["files"]
    for key in [k for k in files if k.startswith("models/reference/adapters/") or k.startswith("models/reference/emogate-ref")]:
        del files[key]
    paths = [FIXTURE, *sorted(p for p in ADAPTERS.rglob("*") if p.is_file())]
    paths += [p for p in (REF / "emogate-ref.onnx", REF / "emogate-ref.onnx.data") if p.exists()]
    for p in paths:
        files[rel(p)] = {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    index["files"] = dict(sorted(files.items()))
    dump_json(INDEX, index)


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if "--index-only" not in sys.argv:
        ship_adapters()
        refresh_fixture()
    refresh_index()
    return 0


if __name__ == "__main__":
    sys.exit(main())
