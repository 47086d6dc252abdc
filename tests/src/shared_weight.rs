//! A model whose LoRA merge changes the graph, written here in Rust: no
//! fixture in `fixtures/merge` has one (their gate_proj weights and biases
//! each have one reader), so none makes `MergePlan::changes_graph()` true.
//!
//! `gate_proj` and `up_proj` read the same weight `W` (as a deduplicating
//! exporter may write), and only `gate_proj` is adapted: the merge must give
//! `gate_proj` a copy of `W` and leave `up_proj` on the original. A third
//! layer reads its own weight `V`. With `external`, `W` and `V` live in a
//! side file `weights.bin`, behind a gap so that offsets matter.

use std::path::{Path, PathBuf};

use emogate_infer::Tensor;
use emogate_models::onnx::build::{entry, model, node, tensor_header, tensor_raw, value_info};
use emogate_models::onnx::proto::tensor_proto::DataLocation;
use emogate_models::onnx::proto::{GraphProto, TensorProto};
use prost::Message;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

const FLOAT: i32 = 1;
pub const BATCH: usize = 3;
pub const IN: usize = 8;
pub const OUT: usize = 6;
const RANK: usize = 2;
/// The adapted module.
pub const GATE_PROJ: &str = "model.layers.0.mlp.gate_proj";

/// Files of one case, and an input for it.
pub struct SharedWeightCase {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub input: Tensor,
}

/// Writes `model.onnx` (and `weights.bin` with `external`) into `dir`, and
/// the adapter into `dir/adapter`. Outputs: `gate`, `up`, `other`.
pub fn write(dir: &Path, external: bool) -> SharedWeightCase {
    let w = values(IN * OUT, 1);
    let v = values(IN * OUT, 2);
    let bytes =
        |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let dims = [IN as i64, OUT as i64];
    let initializers = if external {
        const GAP: usize = 40;
        let mut data = bytes(&w);
        data.extend_from_slice(&[0xAB; GAP]);
        data.extend_from_slice(&bytes(&v));
        std::fs::write(dir.join("weights.bin"), &data).expect("write weights.bin");
        let len = IN * OUT * 4;
        vec![
            external_tensor("W", &dims, 0, len),
            external_tensor("V", &dims, len + GAP, len),
        ]
    } else {
        vec![
            tensor_raw("W", FLOAT, &dims, bytes(&w)),
            tensor_raw("V", FLOAT, &dims, bytes(&v)),
        ]
    };
    let graph = GraphProto {
        name: Some("shared_weight".into()),
        // Node names as the legacy exporter writes them, which is how the
        // merge finds a module's layer.
        node: vec![
            node(
                "/model/layers.0/mlp/gate_proj/MatMul",
                "MatMul",
                &["x", "W"],
                &["gate"],
            ),
            node(
                "/model/layers.0/mlp/up_proj/MatMul",
                "MatMul",
                &["x", "W"],
                &["up"],
            ),
            node(
                "/model/layers.0/mlp/down_proj/MatMul",
                "MatMul",
                &["x", "V"],
                &["other"],
            ),
        ],
        initializer: initializers,
        input: vec![value_info(
            "x",
            FLOAT,
            &[Some(BATCH as i64), Some(IN as i64)],
        )],
        output: ["gate", "up", "other"]
            .iter()
            .map(|n| value_info(n, FLOAT, &[Some(BATCH as i64), Some(OUT as i64)]))
            .collect(),
        ..Default::default()
    };
    let model_path = dir.join("model.onnx");
    std::fs::write(&model_path, model(graph, 17).encode_to_vec()).expect("write model.onnx");

    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).expect("adapter folder");
    std::fs::write(
        adapter.join("adapter_config.json"),
        format!(
            r#"{{"peft_type": "LORA", "r": {RANK}, "lora_alpha": 4.0, "target_modules": ["gate_proj"], "bias": "none"}}"#
        ),
    )
    .expect("write adapter_config.json");
    let (a, b) = (bytes(&values(RANK * IN, 3)), bytes(&values(OUT * RANK, 4)));
    let prefix = format!("base_model.model.{GATE_PROJ}");
    let tensors = vec![
        (
            format!("{prefix}.lora_A.weight"),
            TensorView::new(Dtype::F32, vec![RANK, IN], &a).expect("lora_A"),
        ),
        (
            format!("{prefix}.lora_B.weight"),
            TensorView::new(Dtype::F32, vec![OUT, RANK], &b).expect("lora_B"),
        ),
    ];
    std::fs::write(
        adapter.join("adapter_model.safetensors"),
        safetensors::serialize(tensors, None).expect("serialize adapter"),
    )
    .expect("write adapter_model.safetensors");

    SharedWeightCase {
        model: model_path,
        adapter,
        input: Tensor::f32(vec![BATCH, IN], values(BATCH * IN, 5)),
    }
}

fn external_tensor(name: &str, dims: &[i64], offset: usize, length: usize) -> TensorProto {
    let mut t = tensor_header(name, FLOAT, dims);
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        entry("location", "weights.bin"),
        entry("offset", &offset.to_string()),
        entry("length", &length.to_string()),
    ];
    t
}

/// Deterministic values in [-1, 1) (splitmix64), so a failure reproduces.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
