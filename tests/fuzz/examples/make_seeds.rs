//! Writes the small synthetic seeds that the committed corpus
//! (`tests/fuzz/seeds/`) holds next to trimmed real fixtures: tiny ONNX
//! models in each exporter's style (the real fixture models are 80–370 KB,
//! too large to mutate a million times in the time there is), with and
//! without external data, and an embedded manifest.
//!
//! In `tests/fuzz` (the build must be the instrumented one, see `scripts/fuzz`):
//! `RUSTC_WRAPPER=$PWD/../../scripts/fuzz-rustc cargo run --release --target x86_64-unknown-linux-gnu --example make_seeds -- seeds`

use std::path::Path;

// The instrumented crates call SanitizerCoverage hooks that libFuzzer defines.
use libfuzzer_sys as _;

use emogate_models::onnx::build;
use emogate_models::onnx::proto::{StringStringEntryProto, tensor_proto::DataLocation};
use prost::Message;

fn floats(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
        .collect()
}

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fuzz/seeds".into());
    let out = Path::new(&out);
    let manifest = std::fs::read_to_string(out.join("manifest/fer64.json"))?;

    // Legacy exporter: MatMul named by module path, weight [in, out] as onnx::MatMul_N.
    let mut legacy = build::model(
        emogate_models::onnx::proto::GraphProto {
            name: Some("legacy".into()),
            node: vec![
                build::node(
                    "/m/model/layers.0/mlp/gate_proj/MatMul",
                    "MatMul",
                    &["x", "onnx::MatMul_7"],
                    &["h"],
                ),
                build::node(
                    "/m/score/Gemm",
                    "Gemm",
                    &["h", "score.weight", "score.bias"],
                    &["logits"],
                ),
            ],
            initializer: vec![
                build::tensor_raw("onnx::MatMul_7", 1, &[4, 3], floats(12)),
                build::tensor_raw("score.weight", 10, &[2, 3], vec![0; 12]),
                build::tensor_raw("score.bias", 1, &[2], floats(2)),
            ],
            input: vec![build::value_info("x", 1, &[None, Some(4)])],
            output: vec![build::value_info("logits", 1, &[None, Some(2)])],
            ..Default::default()
        },
        17,
    );
    legacy.graph.as_mut().unwrap().node[1]
        .attribute
        .push(build::attr_int("transB", 1));
    let dir = out.join("onnx_model");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("legacy_linear.onnx"), legacy.encode_to_vec())?;
    let mut with_manifest = legacy.clone();
    with_manifest.metadata_props.push(build::entry(
        emogate_models::manifest::MANIFEST_KEY,
        &manifest,
    ));
    std::fs::write(
        dir.join("legacy_manifest.onnx"),
        with_manifest.encode_to_vec(),
    )?;

    // Dynamo exporter: node_linear_N with name_scopes metadata, val_N weights in a side file.
    let mut weight = build::tensor_header("val_159", 1, &[4, 3]);
    weight.set_data_location(DataLocation::External);
    for (k, v) in [
        ("location", "model.onnx.data"),
        ("offset", "0"),
        ("length", "48"),
    ] {
        weight.external_data.push(StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        });
    }
    let mut linear = build::node("node_linear_4", "MatMul", &["x", "val_159"], &["y"]);
    linear.metadata_props.push(build::entry(
        "pkg.torch.onnx.name_scopes",
        "['', 'm', 'm.model', 'm.model.layers.0', 'm.model.layers.0.mlp', 'm.model.layers.0.mlp.gate_proj', 'linear_4']",
    ));
    linear.metadata_props.push(build::entry(
        "pkg.torch.onnx.fx_node",
        "p_m_model_layers_0_mlp_gate_proj_weight",
    ));
    let dynamo = build::model(
        emogate_models::onnx::proto::GraphProto {
            name: Some("dynamo".into()),
            node: vec![linear],
            initializer: vec![weight],
            input: vec![build::value_info("x", 1, &[Some(1), Some(4)])],
            output: vec![build::value_info("y", 1, &[Some(1), Some(3)])],
            ..Default::default()
        },
        18,
    )
    .encode_to_vec();
    let dir = out.join("onnx_external");
    std::fs::create_dir_all(&dir)?;
    // The target's input: u16 length of the model, the model, the side file.
    let mut joined = (dynamo.len() as u16).to_le_bytes().to_vec();
    joined.extend_from_slice(&dynamo);
    joined.extend_from_slice(&floats(12));
    std::fs::write(dir.join("dynamo_external.bin"), joined)?;
    Ok(())
}
