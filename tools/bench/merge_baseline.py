#!/usr/bin/env python3
"""Straightforward Python baseline for `emogate-convert merge` (benchmark only).

What a user would write with onnx + numpy: load the whole model with its
external data, add scale * (B @ A).T to each gate_proj MatMul weight, save
with external data. It resolves weights by the legacy exporter's node names
(`/model/layers.N/mlp/gate_proj/MatMul`), which is what the synthetic
benchmark model uses.

Requirements: tools/bench/requirements.txt (onnx, numpy, safetensors).
"""
import argparse
import json
import os

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.adapter, "adapter_config.json")))
    tensors = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    model = onnx.load(args.model, load_external_data=True)
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    weight_of = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name.endswith("/MatMul"):
            module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            weight_of[module] = node.input[1]

    prefix = "base_model.model."
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(prefix):-len(".lora_A.weight")]
        a = tensors[key].astype(np.float32)
        b = tensors[key.replace("lora_A", "lora_B")].astype(np.float32)
        scale = cfg["lora_alpha"] / a.shape[0]
        idx = inits[weight_of[module]]
        w = numpy_helper.to_array(model.graph.initializer[idx])
        w = w + scale * (b @ a).T
        model.graph.initializer[idx].CopyFrom(numpy_helper.from_array(w.astype(np.float32), weight_of[module]))

    onnx.save(
        model,
        args.out,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=os.path.basename(args.out) + ".data",
    )


if __name__ == "__main__":
    main()
