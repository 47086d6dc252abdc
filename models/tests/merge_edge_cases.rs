//! Edge cases of the LoRA merge, on small graphs built here in Rust.
//!
//! Each test writes a graph and a PEFT adapter folder to a temp dir, merges
//! them with the library, reloads the output and compares the weights with
//! an independent, deliberately naive computation done in this file:
//! `W' = W + scale · B·A` in PyTorch's `[out, in]`, then laid out the way
//! the op that reads the weight stores it.

use std::path::{Path, PathBuf};

use emogate_models::Error;
use emogate_models::merge::{MergeOptions, MergePlan, MergeReport, merge_to_file};
use emogate_models::onnx::build::{
    attr_graph, attr_int, entry, model, node, tensor_header, tensor_raw, value_info,
};
use emogate_models::onnx::proto::tensor_proto::DataLocation;
use emogate_models::onnx::proto::{GraphProto, NodeProto, TensorProto};
use emogate_models::onnx::{OnnxModel, SaveOptions, TensorUpdate, is_external, save_model};
use emogate_models::peft::Adapter;
use half::{bf16, f16};
use prost::Message;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, serialize};

const FLOAT: i32 = 1;
const BOOL: i32 = 9;
const FLOAT16: i32 = 10;
const BFLOAT16: i32 = 16;
const PREFIX: &str = "base_model.model.";

// ---------------------------------------------------------------- helpers

/// Deterministic values in [-1, 1) (splitmix64), so failures reproduce.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
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

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

/// The reference: `W + scale · B·A`, everything row-major in `[out, in]`,
/// accumulated in f64 with plain loops.
fn reference_merge(
    w: &[f32],
    a: &[f32],
    b: &[f32],
    rank: usize,
    out: usize,
    inp: usize,
    scale: f64,
) -> Vec<f32> {
    let mut merged = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let mut delta = 0f64;
            for k in 0..rank {
                delta += b[o * rank + k] as f64 * a[k * inp + i] as f64;
            }
            merged[o * inp + i] = (w[o * inp + i] as f64 + scale * delta) as f32;
        }
    }
    merged
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    let diff = max_abs_diff(actual, expected);
    assert!(
        diff <= tol,
        "{what}: max |actual - expected| = {diff} > {tol}"
    );
}

/// A graph with symbolic-shape float inputs and outputs.
fn graph(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    inputs: &[&str],
    outputs: &[&str],
) -> GraphProto {
    GraphProto {
        name: Some("test".into()),
        node: nodes,
        initializer,
        input: inputs
            .iter()
            .map(|n| value_info(n, FLOAT, &[None, None]))
            .collect(),
        output: outputs
            .iter()
            .map(|n| value_info(n, FLOAT, &[None, None]))
            .collect(),
        ..Default::default()
    }
}

fn write_model(path: &Path, graph: GraphProto) -> PathBuf {
    std::fs::write(path, model(graph, 17).encode_to_vec()).expect("write model");
    path.to_path_buf()
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    tensor_raw(name, FLOAT, dims, f32_bytes(values))
}

/// A minimal `adapter_config.json`; `extra` is spliced in verbatim (leading
/// comma included) so the test controls the key order of patterns.
fn lora_config(r: usize, alpha: f64, extra: &str) -> String {
    format!(
        r#"{{"peft_type": "LORA", "r": {r}, "lora_alpha": {alpha}, "target_modules": ["gate_proj"], "bias": "none"{extra}}}"#
    )
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// lora_A `[rank, in]` and lora_B `[out, rank]` of `module`, as f32.
fn lora_tensors(
    module: &str,
    a: &[f32],
    b: &[f32],
    rank: usize,
    out: usize,
    inp: usize,
) -> Tensors {
    vec![
        (
            format!("{PREFIX}{module}.lora_A.weight"),
            Dtype::F32,
            vec![rank, inp],
            f32_bytes(a),
        ),
        (
            format!("{PREFIX}{module}.lora_B.weight"),
            Dtype::F32,
            vec![out, rank],
            f32_bytes(b),
        ),
    ]
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (with the
/// safetensors crate itself, so the file is what PEFT would write).
fn write_adapter(dir: &Path, config: &str, tensors: &Tensors) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, dtype, shape, bytes)| {
            (
                k.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let bytes = serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    dir.to_path_buf()
}

fn merge_with(model: &Path, adapter: &Path, out: &Path, options: &MergeOptions) -> MergeReport {
    let base = OnnxModel::load(model).expect("base loads");
    let adapter = Adapter::load(adapter).expect("adapter loads");
    merge_to_file(&base, &adapter, out, options, &mut |_, _| {}).expect("merge succeeds")
}

fn merge(model: &Path, adapter: &Path, out: &Path) -> MergeReport {
    merge_with(model, adapter, out, &MergeOptions::default())
}

/// The error `merge_to_file` returns (loading must succeed).
fn merge_error(model: &Path, adapter: &Path, out: &Path) -> Error {
    let base = OnnxModel::load(model).expect("base loads");
    let adapter = Adapter::load(adapter).expect("adapter loads");
    match merge_to_file(
        &base,
        &adapter,
        out,
        &MergeOptions::default(),
        &mut |_, _| {},
    ) {
        Ok(_) => panic!("merge of {} unexpectedly succeeded", adapter.dir.display()),
        Err(e) => e,
    }
}

fn adapter_error(dir: &Path) -> String {
    match Adapter::load(dir) {
        Ok(_) => panic!("adapter {} unexpectedly loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn initializer<'a>(model: &'a OnnxModel, name: &str) -> &'a TensorProto {
    model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("{}: no initializer `{name}`", model.path().display()))
}

fn values(model: &OnnxModel, name: &str) -> Vec<f32> {
    model
        .float_values(initializer(model, name))
        .expect("float values")
        .1
}

fn node_named<'a>(model: &'a OnnxModel, name: &str) -> &'a NodeProto {
    model
        .graph()
        .node
        .iter()
        .find(|n| n.name() == name)
        .expect("node present")
}

/// Files in `dir`, sorted (hidden temp files included).
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A tensor whose bytes live in `location` at `offset`.
fn external_tensor(
    name: &str,
    dims: &[i64],
    location: &str,
    offset: usize,
    length: usize,
) -> TensorProto {
    let mut t = tensor_header(name, FLOAT, dims);
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        entry("location", location),
        entry("offset", &offset.to_string()),
        entry("length", &length.to_string()),
    ];
    t
}

/// The legacy exporter's scope of `module`: `model.layers.0.mlp.gate_proj`
/// → `/model/layers.0/mlp/gate_proj` (an index stays with its container).
fn scope(module: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in module.split('.') {
        match parts.last_mut() {
            Some(last) if c.chars().all(|ch| ch.is_ascii_digit()) => *last = format!("{last}.{c}"),
            _ => parts.push(c.to_string()),
        }
    }
    format!("/{}", parts.join("/"))
}

/// One MatMul `x @ W` named like the legacy exporter names `module`.
fn matmul(module: &str, x: &str, weight: &str, out: &str) -> NodeProto {
    node(
        &format!("{}/MatMul", scope(module)),
        "MatMul",
        &[x, weight],
        &[out],
    )
}

/// A MatMul gate_proj (`W` stored `[in, out]`) and a plain adapter for it.
struct Simple {
    dir: tempfile::TempDir,
    model: PathBuf,
    adapter: PathBuf,
    w: Vec<f32>, // stored [in, out]
    a: Vec<f32>,
    b: Vec<f32>,
}

const MODULE: &str = "model.layers.0.mlp.gate_proj";
const IN: usize = 6;
const OUT: usize = 5;
const RANK: usize = 2;

impl Simple {
    /// `weight` lets a test choose the storage form of `W`.
    fn new(weight: impl FnOnce(&[f32]) -> TensorProto) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let w = random(IN * OUT, 1);
        let (a, b) = (random(RANK * IN, 2), random(OUT * RANK, 3));
        let g = graph(
            vec![matmul(MODULE, "x", "W", "y")],
            vec![weight(&w)],
            &["x"],
            &["y"],
        );
        let model = write_model(&dir.path().join("model.onnx"), g);
        let adapter = write_adapter(
            &dir.path().join("adapter"),
            &lora_config(RANK, 4.0, ""),
            &lora_tensors(MODULE, &a, &b, RANK, OUT, IN),
        );
        Simple {
            dir,
            model,
            adapter,
            w,
            a,
            b,
        }
    }

    /// Expected merged `W`, stored `[in, out]`, for base values `w` (stored).
    fn expected(&self, w: &[f32]) -> Vec<f32> {
        let merged = reference_merge(&transpose(w, IN, OUT), &self.a, &self.b, RANK, OUT, IN, 2.0);
        transpose(&merged, OUT, IN)
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("merged.onnx")
    }
}

// ------------------------------------------- a. Gemm orientation by transB

/// A square Gemm weight: only `transB` says whether it is `[out, in]` or
/// `[in, out]`, so a merge that ignored it would pass any shape check.
fn gemm_case(trans_b: i64) -> (Vec<f32>, Vec<f32>, Vec<f32>, MergeReport, tempfile::TempDir) {
    const N: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let w = random(N * N, 10);
    let (a, b) = (random(2 * N, 11), random(N * 2, 12));
    let mut gemm = node(
        "/mlp/gate_proj/Gemm",
        "Gemm",
        &["x", "mlp.gate_proj.weight"],
        &["y"],
    );
    gemm.attribute = vec![attr_int("transB", trans_b)];
    let g = graph(
        vec![gemm],
        vec![f32_tensor("mlp.gate_proj.weight", &[4, 4], &w)],
        &["x"],
        &["y"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(2, 2.0, ""),
        &lora_tensors("mlp.gate_proj", &a, &b, 2, N, N),
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);
    let merged = values(&OnnxModel::load(&out).unwrap(), "mlp.gate_proj.weight");
    (
        w,
        merged,
        reference_merge(&[0.0; N * N], &a, &b, 2, N, N, 1.0),
        report,
        dir,
    )
}

#[test]
fn gemm_trans_b_1_weight_is_out_in() {
    let (w, merged, delta, report, _dir) = gemm_case(1);
    // transB=1: the stored weight is PyTorch's [out, in]; ΔW is added as is.
    let right: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| w + d).collect();
    let wrong: Vec<f32> = w
        .iter()
        .zip(transpose(&delta, 4, 4))
        .map(|(w, d)| w + d)
        .collect();
    assert_close(&merged, &right, 1e-5, "Gemm transB=1");
    assert!(
        max_abs_diff(&merged, &wrong) > 1e-2,
        "the transposed update must not also match"
    );
    assert_eq!(
        serde_json::to_value(report.modules[0].layout).unwrap(),
        "out_in"
    );
}

#[test]
fn gemm_trans_b_0_weight_is_in_out() {
    let (w, merged, delta, report, _dir) = gemm_case(0);
    // transB=0: the stored weight is [in, out], so ΔWᵀ is added.
    let right: Vec<f32> = w
        .iter()
        .zip(transpose(&delta, 4, 4))
        .map(|(w, d)| w + d)
        .collect();
    let wrong: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| w + d).collect();
    assert_close(&merged, &right, 1e-5, "Gemm transB=0");
    assert!(
        max_abs_diff(&merged, &wrong) > 1e-2,
        "the untransposed update must not also match"
    );
    assert_eq!(
        serde_json::to_value(report.modules[0].layout).unwrap(),
        "in_out"
    );
}

// ----------------------------------------------------- b. shared weights

#[test]
fn weight_shared_with_another_module_is_copied_for_the_adapted_node() {
    // gate_proj and up_proj read the same initializer (as a deduplicating
    // exporter may produce); only gate_proj is adapted.
    let dir = tempfile::tempdir().unwrap();
    let w = random(IN * OUT, 20);
    let (a, b) = (random(RANK * IN, 21), random(OUT * RANK, 22));
    let g = graph(
        vec![
            matmul(MODULE, "x", "W", "gate"),
            matmul("model.layers.0.mlp.up_proj", "x", "W", "up"),
        ],
        vec![f32_tensor("W", &[IN as i64, OUT as i64], &w)],
        &["x"],
        &["gate", "up"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(MODULE, &a, &b, RANK, OUT, IN),
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);

    let m = &report.modules[0];
    assert_eq!(
        m.copied_from.as_deref(),
        Some("W"),
        "report must say the weight was copied"
    );
    assert_ne!(
        m.weight, "W",
        "the merged weight must be a fresh initializer"
    );
    let merged = OnnxModel::load(&out).unwrap();
    let gate = node_named(&merged, "/model/layers.0/mlp/gate_proj/MatMul");
    let up = node_named(&merged, "/model/layers.0/mlp/up_proj/MatMul");
    assert_eq!(gate.input[1], m.weight, "gate_proj reads the copy");
    assert_eq!(up.input[1], "W", "up_proj still reads the original");
    assert_eq!(values(&merged, "W"), w, "the original keeps its values");
    let expected = transpose(
        &reference_merge(&transpose(&w, IN, OUT), &a, &b, RANK, OUT, IN, 2.0),
        OUT,
        IN,
    );
    assert_close(&values(&merged, &m.weight), &expected, 1e-5, "merged copy");
}

#[test]
fn weight_read_inside_an_if_subgraph_is_not_changed() {
    // The If's then-branch captures the outer initializer `W`; the outer
    // MatMul is adapted. The subgraph must keep seeing the base values.
    let dir = tempfile::tempdir().unwrap();
    let w = random(IN * OUT, 30);
    let (a, b) = (random(RANK * IN, 31), random(OUT * RANK, 32));
    let then_branch = graph(
        vec![node("/then/MatMul", "MatMul", &["x", "W"], &["t"])],
        vec![],
        &[],
        &["t"],
    );
    let else_branch = graph(
        vec![node("/else/Identity", "Identity", &["x"], &["e"])],
        vec![],
        &[],
        &["e"],
    );
    let mut if_node = node("/branch/If", "If", &["cond"], &["branch_out"]);
    if_node.attribute = vec![
        attr_graph("then_branch", then_branch),
        attr_graph("else_branch", else_branch),
    ];
    let mut g = graph(
        vec![matmul(MODULE, "x", "W", "gate"), if_node],
        vec![f32_tensor("W", &[IN as i64, OUT as i64], &w)],
        &["x"],
        &["gate", "branch_out"],
    );
    g.input.push(value_info("cond", BOOL, &[]));
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(MODULE, &a, &b, RANK, OUT, IN),
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);

    let m = &report.modules[0];
    assert_eq!(m.copied_from.as_deref(), Some("W"));
    let merged = OnnxModel::load(&out).unwrap();
    assert_eq!(
        node_named(&merged, "/model/layers.0/mlp/gate_proj/MatMul").input[1],
        m.weight
    );
    let if_node = node_named(&merged, "/branch/If");
    let then_branch = if_node.attribute[0].g.as_ref().unwrap();
    assert_eq!(
        then_branch.node[0].input[1], "W",
        "the subgraph still reads `W`"
    );
    assert_eq!(values(&merged, "W"), w, "`W` keeps the base values");
    let expected = transpose(
        &reference_merge(&transpose(&w, IN, OUT), &a, &b, RANK, OUT, IN, 2.0),
        OUT,
        IN,
    );
    assert_close(&values(&merged, &m.weight), &expected, 1e-5, "merged copy");
}

#[test]
fn bias_shared_between_layers_is_copied_for_the_adapted_add() {
    // Two MatMul+Add layers share one bias initializer (an exporter may
    // deduplicate equal, e.g. zero, biases). The un-adapted layer comes
    // first in node order; only the adapted layer's Add may get the copy.
    let dir = tempfile::tempdir().unwrap();
    let (w0, w1, bias) = (random(IN * OUT, 40), random(IN * OUT, 41), random(OUT, 42));
    let (a, b, bias_b) = (
        random(RANK * IN, 43),
        random(OUT * RANK, 44),
        random(OUT, 45),
    );
    let layer1 = "model.layers.1.mlp.gate_proj";
    let g = graph(
        vec![
            matmul(MODULE, "x", "W0", "mm0"),
            node(
                "/model/layers.0/mlp/gate_proj/Add",
                "Add",
                &["mm0", "shared_bias"],
                &["y0"],
            ),
            matmul(layer1, "x", "W1", "mm1"),
            node(
                "/model/layers.1/mlp/gate_proj/Add",
                "Add",
                &["mm1", "shared_bias"],
                &["y1"],
            ),
        ],
        vec![
            f32_tensor("W0", &[IN as i64, OUT as i64], &w0),
            f32_tensor("W1", &[IN as i64, OUT as i64], &w1),
            f32_tensor("shared_bias", &[OUT as i64], &bias),
        ],
        &["x"],
        &["y0", "y1"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let mut tensors = lora_tensors(layer1, &a, &b, RANK, OUT, IN);
    tensors.push((
        format!("{PREFIX}{layer1}.lora_B.bias"),
        Dtype::F32,
        vec![OUT],
        f32_bytes(&bias_b),
    ));
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, r#", "lora_bias": true"#),
        &tensors,
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);

    let new_bias = report.modules[0].bias.clone().expect("bias reported");
    assert_ne!(new_bias, "shared_bias", "the shared bias must be copied");
    let merged = OnnxModel::load(&out).unwrap();
    let add0 = node_named(&merged, "/model/layers.0/mlp/gate_proj/Add");
    let add1 = node_named(&merged, "/model/layers.1/mlp/gate_proj/Add");
    assert!(
        add0.input.contains(&"shared_bias".to_string()),
        "layer 0 must keep the original bias: {:?}",
        add0.input
    );
    assert!(
        add1.input.contains(&new_bias),
        "layer 1 must read the merged copy: {:?}",
        add1.input
    );
    assert_eq!(values(&merged, "shared_bias"), bias);
    let expected: Vec<f32> = bias.iter().zip(&bias_b).map(|(b, d)| b + 2.0 * d).collect();
    assert_close(
        &values(&merged, &new_bias),
        &expected,
        1e-6,
        "merged bias copy",
    );
}

// ------------------------------------------- c. dtypes and storage forms

#[test]
fn f16_weight_is_written_back_as_f16_raw_data() {
    let case = Simple::new(|w| {
        let raw = w
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        tensor_raw("W", FLOAT16, &[IN as i64, OUT as i64], raw)
    });
    merge(&case.model, &case.adapter, &case.out());
    let merged = OnnxModel::load(case.out()).unwrap();
    let t = initializer(&merged, "W");
    assert_eq!(t.data_type(), FLOAT16);
    assert_eq!(
        t.raw_data.as_ref().map(|r| r.len()),
        Some(IN * OUT * 2),
        "f16 stays 2 bytes per value in raw_data"
    );
    let base: Vec<f32> = case.w.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
    let expected: Vec<f32> = case
        .expected(&base)
        .iter()
        .map(|v| f16::from_f32(*v).to_f32())
        .collect();
    // One f16 ulp near 2 is ~2e-3: the library rounds once, from f32.
    assert_close(&values(&merged, "W"), &expected, 2e-3, "f16 merge");
    assert!(
        max_abs_diff(&values(&merged, "W"), &base) > 1e-2,
        "the merge changed the weight"
    );
}

#[test]
fn bf16_weight_is_written_back_as_bf16_raw_data() {
    let case = Simple::new(|w| {
        let raw = w
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        tensor_raw("W", BFLOAT16, &[IN as i64, OUT as i64], raw)
    });
    merge(&case.model, &case.adapter, &case.out());
    let merged = OnnxModel::load(case.out()).unwrap();
    let t = initializer(&merged, "W");
    assert_eq!(t.data_type(), BFLOAT16);
    assert_eq!(t.raw_data.as_ref().map(|r| r.len()), Some(IN * OUT * 2));
    let base: Vec<f32> = case.w.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
    let expected: Vec<f32> = case
        .expected(&base)
        .iter()
        .map(|v| bf16::from_f32(*v).to_f32())
        .collect();
    // One bf16 ulp near 2 is ~1.6e-2.
    assert_close(&values(&merged, "W"), &expected, 1.6e-2, "bf16 merge");
    // Every stored value must be exactly a bf16 (not f32 bytes reinterpreted).
    for v in values(&merged, "W") {
        assert_eq!(bf16::from_f32(v).to_f32(), v);
    }
    assert!(
        max_abs_diff(&values(&merged, "W"), &base) > 5e-2,
        "the merge changed the weight"
    );
}

#[test]
fn f32_weight_in_float_data_stays_in_float_data() {
    let case = Simple::new(|w| TensorProto {
        float_data: w.to_vec(),
        ..tensor_header("W", FLOAT, &[IN as i64, OUT as i64])
    });
    merge(&case.model, &case.adapter, &case.out());
    let merged = OnnxModel::load(case.out()).unwrap();
    let t = initializer(&merged, "W");
    assert!(t.raw_data.is_none(), "must not switch to raw_data");
    assert_eq!(t.float_data.len(), IN * OUT);
    assert_close(
        &t.float_data,
        &case.expected(&case.w),
        1e-5,
        "float_data merge",
    );
}

#[test]
fn f16_weight_in_int32_data_stays_in_int32_data() {
    // ONNX's typed form for f16 keeps each value's bit pattern in int32_data.
    let case = Simple::new(|w| TensorProto {
        int32_data: w
            .iter()
            .map(|v| f16::from_f32(*v).to_bits() as i32)
            .collect(),
        ..tensor_header("W", FLOAT16, &[IN as i64, OUT as i64])
    });
    merge(&case.model, &case.adapter, &case.out());
    let merged = OnnxModel::load(case.out()).unwrap();
    let t = initializer(&merged, "W");
    assert!(t.raw_data.is_none());
    assert_eq!(t.int32_data.len(), IN * OUT);
    let base: Vec<f32> = case.w.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
    let got: Vec<f32> = t
        .int32_data
        .iter()
        .map(|b| f16::from_bits(*b as u16).to_f32())
        .collect();
    assert_close(&got, &case.expected(&base), 2e-3, "int32_data f16 merge");
}

// ----------------------------------------------------- d. external data

/// A model whose two weights (gate_proj, adapted; up_proj, not) live in a
/// hand-written side file `weights.bin`, with a gap between them.
struct External {
    dir: tempfile::TempDir,
    model: PathBuf,
    adapter: PathBuf,
    w: Vec<f32>,
    up: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl External {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let (w, up) = (random(IN * OUT, 50), random(IN * OUT, 51));
        let (a, b) = (random(RANK * IN, 52), random(OUT * RANK, 53));
        let len = IN * OUT * 4;
        let mut data = f32_bytes(&w);
        data.extend_from_slice(&[0xAB; 24]); // a gap: offsets are honoured
        data.extend_from_slice(&f32_bytes(&up));
        std::fs::write(base.join("weights.bin"), &data).unwrap();
        let dims = [IN as i64, OUT as i64];
        let g = graph(
            vec![
                matmul(MODULE, "x", "W", "gate"),
                matmul("model.layers.0.mlp.up_proj", "x", "UP", "up"),
            ],
            vec![
                external_tensor("W", &dims, "weights.bin", 0, len),
                external_tensor("UP", &dims, "weights.bin", len + 24, len),
                f32_tensor("small", &[2], &[1.0, 2.0]),
            ],
            &["x"],
            &["gate", "up"],
        );
        let model = write_model(&base.join("model.onnx"), g);
        let adapter = write_adapter(
            &dir.path().join("adapter"),
            &lora_config(RANK, 4.0, ""),
            &lora_tensors(MODULE, &a, &b, RANK, OUT, IN),
        );
        External {
            dir,
            model,
            adapter,
            w,
            up,
            a,
            b,
        }
    }

    fn out_dir(&self) -> PathBuf {
        let out = self.dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        out
    }

    fn expected(&self) -> Vec<f32> {
        transpose(
            &reference_merge(
                &transpose(&self.w, IN, OUT),
                &self.a,
                &self.b,
                RANK,
                OUT,
                IN,
                2.0,
            ),
            OUT,
            IN,
        )
    }
}

/// No output tensor may carry both inline bytes and an external reference.
fn assert_never_raw_and_external(model: &OnnxModel) {
    for t in &model.graph().initializer {
        if is_external(t) {
            assert!(
                t.raw_data.is_none(),
                "`{}` is external and also has raw_data",
                t.name()
            );
            assert!(
                t.float_data.is_empty(),
                "`{}` is external and also has float_data",
                t.name()
            );
        }
    }
}

#[test]
fn external_data_model_merges_into_out_data() {
    let case = External::new();
    let base_before = std::fs::read(case.model.with_file_name("weights.bin")).unwrap();
    let out = case.out_dir().join("merged.onnx");
    let report = merge(&case.model, &case.adapter, &out);

    assert_eq!(
        report.save.data.as_deref(),
        Some(out.with_file_name("merged.onnx.data").as_path())
    );
    assert_eq!(list(&case.out_dir()), ["merged.onnx", "merged.onnx.data"]);
    let merged = OnnxModel::load(&out).unwrap();
    assert_never_raw_and_external(&merged);
    for name in ["W", "UP"] {
        let ext = merged
            .external_data(initializer(&merged, name))
            .unwrap()
            .expect("still external");
        assert_eq!(
            ext.location, "merged.onnx.data",
            "`{name}` must point at the output's own side file"
        );
    }
    assert_close(
        &values(&merged, "W"),
        &case.expected(),
        1e-5,
        "external gate_proj",
    );
    assert_eq!(values(&merged, "UP"), case.up, "untouched external tensor");
    assert_eq!(values(&merged, "small"), [1.0, 2.0], "inline tensor");
    assert_eq!(
        std::fs::read(case.model.with_file_name("weights.bin")).unwrap(),
        base_before,
        "input side file unchanged"
    );
}

#[test]
fn small_inline_limit_moves_large_tensors_to_a_side_file() {
    let case = Simple::new(|w| f32_tensor("W", &[IN as i64, OUT as i64], w));
    let options = MergeOptions {
        save: SaveOptions {
            inline_limit: 64,
            external_threshold: 32,
            ..SaveOptions::default()
        },
        ..MergeOptions::default()
    };
    let report = merge_with(&case.model, &case.adapter, &case.out(), &options);
    assert!(report.save.data.is_some(), "a side file must be written");
    assert!(case.dir.path().join("merged.onnx.data").is_file());
    let merged = OnnxModel::load(case.out()).unwrap();
    assert_never_raw_and_external(&merged);
    assert!(
        is_external(initializer(&merged, "W")),
        "W ({} bytes) must move out",
        IN * OUT * 4
    );
    assert_close(
        &values(&merged, "W"),
        &case.expected(&case.w),
        1e-5,
        "moved W",
    );
}

#[test]
fn output_named_like_the_inputs_data_file_is_refused() {
    // `--out base/weights.bin` would rename the new protobuf over the
    // input's side file and break the base model.
    let case = External::new();
    let data = case.model.with_file_name("weights.bin");
    let before = std::fs::read(&data).unwrap();
    let err = merge_error(&case.model, &case.adapter, &data).to_string();
    assert!(
        err.contains("weights.bin") && err.contains("output path"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "the input's side file must be unchanged"
    );
    assert_eq!(
        list(case.model.parent().unwrap()),
        ["model.onnx", "weights.bin"]
    );
}

// --------------------------------------------------- e. module resolution

#[test]
fn module_matching_two_layers_equally_is_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let dims = [IN as i64, OUT as i64];
    let g = graph(
        vec![
            matmul("vision.layers.0.mlp.gate_proj", "x", "Wv", "v"),
            matmul("text.layers.0.mlp.gate_proj", "x", "Wt", "t"),
        ],
        vec![
            f32_tensor("Wv", &dims, &random(IN * OUT, 60)),
            f32_tensor("Wt", &dims, &random(IN * OUT, 61)),
        ],
        &["x"],
        &["v", "t"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(
            "layers.0.mlp.gate_proj",
            &random(RANK * IN, 62),
            &random(OUT * RANK, 63),
            RANK,
            OUT,
            IN,
        ),
    );
    let out = dir.path().join("merged.onnx");
    let err = merge_error(&model, &adapter, &out);
    let msg = err.to_string();
    match &err {
        Error::Unresolved {
            ambiguous,
            unmatched,
            ..
        } => {
            assert!(unmatched.is_empty());
            assert_eq!(ambiguous.len(), 1);
            assert_eq!(ambiguous[0].0, "layers.0.mlp.gate_proj");
            assert_eq!(ambiguous[0].1.len(), 2, "{msg}");
        }
        other => panic!("expected Unresolved, got {other:?}"),
    }
    assert!(
        msg.contains("`layers.0.mlp.gate_proj` is ambiguous"),
        "{msg}"
    );
    assert!(
        msg.contains("vision.layers.0.mlp.gate_proj") && msg.contains("weight `Wv`"),
        "{msg}"
    );
    assert!(
        msg.contains("text.layers.0.mlp.gate_proj") && msg.contains("weight `Wt`"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn higher_layer_index_is_unmatched_not_mapped_to_layer_0() {
    let case = Simple::new(|w| f32_tensor("W", &[IN as i64, OUT as i64], w));
    // Same shapes as layer 0, so only the path can tell them apart.
    let adapter = write_adapter(
        &case.dir.path().join("adapter5"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(
            "model.layers.5.mlp.gate_proj",
            &case.a,
            &case.b,
            RANK,
            OUT,
            IN,
        ),
    );
    let err = merge_error(&case.model, &adapter, &case.out());
    match &err {
        Error::Unresolved {
            unmatched,
            ambiguous,
            ..
        } => {
            assert_eq!(unmatched, &["model.layers.5.mlp.gate_proj"]);
            assert!(ambiguous.is_empty());
        }
        other => panic!("expected Unresolved, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("model.onnx"), "names the model: {msg}");
    assert!(
        msg.contains("not found in the graph: model.layers.5.mlp.gate_proj"),
        "{msg}"
    );
    assert!(!case.out().exists());
}

// --------------------------------------- f. rank_pattern / alpha_pattern

/// An adapter for `MODULE` with factors of `rank` and the given config.
fn pattern_adapter(dir: &Path, rank: usize, config: &str) -> PathBuf {
    let tensors = lora_tensors(
        MODULE,
        &random(rank * IN, 70),
        &random(OUT * rank, 71),
        rank,
        OUT,
        IN,
    );
    write_adapter(dir, config, &tensors)
}

#[test]
fn rank_pattern_first_matching_key_in_file_order_wins() {
    let dir = tempfile::tempdir().unwrap();
    // Both keys match. File order puts the specific key first; sorted order
    // ("gate_proj" < "layers…") would pick the other one.
    let config = lora_config(
        4,
        8.0,
        r#", "rank_pattern": {"layers.0.mlp.gate_proj": 2, "gate_proj": 3}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("a"), 2, &config))
        .expect("rank 2 from the first key");
    let m = &adapter.modules[MODULE];
    assert_eq!((m.rank, m.scale), (2, 4.0));

    // Reversed file order: now "gate_proj" (rank 3) comes first and wins.
    let config = lora_config(
        4,
        8.0,
        r#", "rank_pattern": {"gate_proj": 3, "layers.0.mlp.gate_proj": 2}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("b"), 3, &config))
        .expect("rank 3 from the first key");
    assert_eq!(adapter.modules[MODULE].rank, 3);
}

#[test]
fn alpha_pattern_first_matching_key_in_file_order_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = lora_config(
        2,
        8.0,
        r#", "alpha_pattern": {"model.layers.0.mlp.gate_proj": 2, "gate_proj": 6}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("a"), 2, &config)).unwrap();
    let m = &adapter.modules[MODULE];
    assert_eq!((m.alpha, m.scale), (2.0, 1.0));

    let config = lora_config(
        2,
        8.0,
        r#", "alpha_pattern": {"gate_proj": 6, "model.layers.0.mlp.gate_proj": 2}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("b"), 2, &config)).unwrap();
    assert_eq!(adapter.modules[MODULE].alpha, 6.0);
}

#[test]
fn pattern_keys_are_regexes_over_whole_dotted_suffixes() {
    let dir = tempfile::tempdir().unwrap();
    // `.` is a regex wildcard, as in PEFT's re.match: "gate.proj" matches "gate_proj".
    let config = lora_config(
        2,
        8.0,
        r#", "alpha_pattern": {"layers.0.mlp.gate.proj": 32}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("a"), 2, &config)).unwrap();
    assert_eq!(adapter.modules[MODULE].alpha, 32.0);

    // A key must match a whole dotted suffix: "ayers.0…" is not one, and a
    // key for layer 10 does not match layer 0.
    let config = lora_config(
        2,
        8.0,
        r#", "alpha_pattern": {"ayers.0.mlp.gate_proj": 99, "layers.10.mlp.gate_proj": 77}"#,
    );
    let adapter = Adapter::load(pattern_adapter(&dir.path().join("b"), 2, &config)).unwrap();
    assert_eq!(
        adapter.modules[MODULE].alpha, 8.0,
        "falls back to lora_alpha"
    );
}

#[test]
fn safetensors_rank_disagreeing_with_r_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = pattern_adapter(dir.path(), 2, &lora_config(4, 8.0, ""));
    let msg = adapter_error(&adapter);
    assert!(
        msg.contains("adapter_model.safetensors"),
        "names the file: {msg}"
    );
    assert!(
        msg.contains(&format!("{PREFIX}{MODULE}.lora_A.weight")),
        "names the key: {msg}"
    );
    assert!(
        msg.contains("has rank 2") && msg.contains("gives 4"),
        "says what was expected: {msg}"
    );
}

#[test]
fn safetensors_rank_disagreeing_with_rank_pattern_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = lora_config(2, 8.0, r#", "rank_pattern": {"layers.0.mlp.gate_proj": 8}"#);
    let msg = adapter_error(&pattern_adapter(dir.path(), 2, &config));
    assert!(
        msg.contains(&format!("{PREFIX}{MODULE}.lora_A.weight")),
        "{msg}"
    );
    assert!(
        msg.contains("has rank 2") && msg.contains("gives 8"),
        "{msg}"
    );
}

// ------------------------------------- g. rsLoRA, DoRA, lora_bias, saved

#[test]
fn rslora_scale_is_alpha_over_sqrt_rank() {
    let dir = tempfile::tempdir().unwrap();
    let w = random(IN * OUT, 80);
    let (rank, alpha) = (4, 8.0);
    let (a, b) = (random(rank * IN, 81), random(OUT * rank, 82));
    let g = graph(
        vec![matmul(MODULE, "x", "W", "y")],
        vec![f32_tensor("W", &[IN as i64, OUT as i64], &w)],
        &["x"],
        &["y"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(rank, alpha, r#", "use_rslora": true"#),
        &lora_tensors(MODULE, &a, &b, rank, OUT, IN),
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);
    assert_eq!(report.modules[0].scale, Some(4.0), "8 / sqrt(4), not 8 / 4");
    let expected = transpose(
        &reference_merge(&transpose(&w, IN, OUT), &a, &b, rank, OUT, IN, 4.0),
        OUT,
        IN,
    );
    assert_close(
        &values(&OnnxModel::load(&out).unwrap(), "W"),
        &expected,
        1e-5,
        "rsLoRA merge",
    );
}

/// DoRA by the paper's formula, on `[out, in]`: `V = W + s·B·A`, then each
/// output row of `V` is scaled to length `m[o]`.
#[allow(clippy::too_many_arguments)] // mirrors the arithmetic's own inputs
fn reference_dora(
    w: &[f32],
    a: &[f32],
    b: &[f32],
    m: &[f32],
    rank: usize,
    out: usize,
    inp: usize,
    s: f64,
) -> Vec<f32> {
    let v = reference_merge(w, a, b, rank, out, inp, s);
    let mut result = vec![0f32; v.len()];
    for o in 0..out {
        let row = &v[o * inp..(o + 1) * inp];
        let norm = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        for i in 0..inp {
            result[o * inp + i] = (m[o] as f64 / norm * row[i] as f64) as f32;
        }
    }
    result
}

/// Merges a DoRA adapter into a non-square weight read as `[in, out]`
/// (MatMul) or `[out, in]` (Gemm transB=1) and checks it against the reference.
fn check_dora(gemm: bool) {
    let dir = tempfile::tempdir().unwrap();
    let w_oi = random(OUT * IN, 90); // PyTorch [out, in]
    let (a, b) = (random(RANK * IN, 91), random(OUT * RANK, 92));
    // Magnitudes ~25% off the rows' norms, as after training.
    let m: Vec<f32> = (0..OUT)
        .map(|o| {
            let norm = w_oi[o * IN..(o + 1) * IN]
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt();
            norm * (1.0 + 0.25 * random(OUT, 93)[o])
        })
        .collect();
    let (stored, node) = if gemm {
        let mut n = node(
            "/model/layers.0/mlp/gate_proj/Gemm",
            "Gemm",
            &["x", "W"],
            &["y"],
        );
        n.attribute = vec![attr_int("transB", 1)];
        (f32_tensor("W", &[OUT as i64, IN as i64], &w_oi), n)
    } else {
        let stored = transpose(&w_oi, OUT, IN);
        (
            f32_tensor("W", &[IN as i64, OUT as i64], &stored),
            matmul(MODULE, "x", "W", "y"),
        )
    };
    let model = write_model(
        &dir.path().join("model.onnx"),
        graph(vec![node], vec![stored], &["x"], &["y"]),
    );
    let mut tensors = lora_tensors(MODULE, &a, &b, RANK, OUT, IN);
    tensors.push((
        format!("{PREFIX}{MODULE}.lora_magnitude_vector"),
        Dtype::F32,
        vec![OUT],
        f32_bytes(&m),
    ));
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, r#", "use_dora": true"#),
        &tensors,
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);
    assert_eq!(report.modules[0].kind, "dora");

    let merged = values(&OnnxModel::load(&out).unwrap(), "W");
    let merged_oi = if gemm {
        merged
    } else {
        transpose(&merged, IN, OUT)
    };
    let expected = reference_dora(&w_oi, &a, &b, &m, RANK, OUT, IN, 2.0);
    assert_close(&merged_oi, &expected, 1e-5, "DoRA merge");
    // Each output row has the learned magnitude (and not each input column).
    for o in 0..OUT {
        let norm = merged_oi[o * IN..(o + 1) * IN]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt();
        assert!(
            (norm - m[o]).abs() < 1e-4,
            "row {o}: norm {norm} != magnitude {}",
            m[o]
        );
    }
}

#[test]
fn dora_on_in_out_matmul_weight_matches_reference() {
    check_dora(false);
}

#[test]
fn dora_on_out_in_gemm_weight_matches_reference() {
    check_dora(true);
}

/// gate_proj as MatMul (`W` `[in, out]`) followed by `Add(bias)`.
fn matmul_add_graph(module: &str, w: &[f32], bias: &[f32]) -> GraphProto {
    graph(
        vec![
            matmul(module, "x", "W", "mm"),
            node(
                &format!("{}/Add", scope(module)),
                "Add",
                &["B", "mm"],
                &["y"],
            ),
        ],
        vec![
            f32_tensor("W", &[IN as i64, OUT as i64], w),
            f32_tensor("B", &[OUT as i64], bias),
        ],
        &["x"],
        &["y"],
    )
}

#[test]
fn lora_bias_adds_scaled_lora_b_bias_to_the_base_bias() {
    let dir = tempfile::tempdir().unwrap();
    let (w, bias) = (random(IN * OUT, 100), random(OUT, 101));
    let (a, b, bias_b) = (
        random(RANK * IN, 102),
        random(OUT * RANK, 103),
        random(OUT, 104),
    );
    let model = write_model(
        &dir.path().join("model.onnx"),
        matmul_add_graph(MODULE, &w, &bias),
    );
    let mut tensors = lora_tensors(MODULE, &a, &b, RANK, OUT, IN);
    tensors.push((
        format!("{PREFIX}{MODULE}.lora_B.bias"),
        Dtype::F32,
        vec![OUT],
        f32_bytes(&bias_b),
    ));
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 6.0, r#", "lora_bias": true"#),
        &tensors,
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);
    assert_eq!(report.modules[0].bias.as_deref(), Some("B"));

    let merged = OnnxModel::load(&out).unwrap();
    let expected_bias: Vec<f32> = bias.iter().zip(&bias_b).map(|(b, d)| b + 3.0 * d).collect();
    assert_close(
        &values(&merged, "B"),
        &expected_bias,
        1e-6,
        "bias + scale · lora_B.bias",
    );
    let expected = transpose(
        &reference_merge(&transpose(&w, IN, OUT), &a, &b, RANK, OUT, IN, 3.0),
        OUT,
        IN,
    );
    assert_close(&values(&merged, "W"), &expected, 1e-5, "weight");
}

#[test]
fn modules_to_save_replaces_weight_and_bias() {
    let dir = tempfile::tempdir().unwrap();
    let (w, bias) = (random(IN * OUT, 110), random(OUT, 111));
    let (new_w, new_bias) = (random(OUT * IN, 112), random(OUT, 113)); // new_w is [out, in]
    let model = write_model(
        &dir.path().join("model.onnx"),
        matmul_add_graph("score", &w, &bias),
    );
    let tensors: Tensors = vec![
        (
            format!("{PREFIX}score.weight"),
            Dtype::F32,
            vec![OUT, IN],
            f32_bytes(&new_w),
        ),
        (
            format!("{PREFIX}score.bias"),
            Dtype::F32,
            vec![OUT],
            f32_bytes(&new_bias),
        ),
    ];
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, r#", "modules_to_save": ["score"]"#),
        &tensors,
    );
    let out = dir.path().join("merged.onnx");
    let report = merge(&model, &adapter, &out);
    assert_eq!(report.modules[0].kind, "replace");

    let merged = OnnxModel::load(&out).unwrap();
    // The saved weight is PyTorch's [out, in]; MatMul stores [in, out].
    assert_eq!(values(&merged, "W"), transpose(&new_w, OUT, IN));
    assert_eq!(values(&merged, "B"), new_bias);
}

// ------------------------------------------ h. failures leave no output

#[test]
fn save_model_update_for_unknown_tensor_leaves_no_file() {
    // External base: the side file is already being written when the bad
    // update arrives, so this checks the clean-up, not an early refusal.
    let case = External::new();
    let base = OnnxModel::load(&case.model).unwrap();
    let out_dir = case.out_dir();
    let updates = vec![
        Ok(TensorUpdate {
            name: "W".into(),
            bytes: f32_bytes(&case.expected()).into(),
        }),
        Ok(TensorUpdate {
            name: "no_such_tensor".into(),
            bytes: vec![0; 8].into(),
        }),
    ];
    let err = save_model(
        &base,
        base.proto.clone(),
        updates,
        &out_dir.join("merged.onnx"),
        &SaveOptions::default(),
    )
    .expect_err("unknown tensor");
    let msg = err.to_string();
    assert!(
        msg.contains("model.onnx")
            && msg.contains("initializer `no_such_tensor`")
            && msg.contains("is not in the graph"),
        "{msg}"
    );
    assert_eq!(
        list(&out_dir),
        Vec::<String>::new(),
        "no output, no temp files"
    );
}

#[test]
fn side_file_truncated_after_load_leaves_no_file() {
    // The data file passes load's checks, then shrinks: the merge discovers
    // it only when it reads the weight, after the output side file exists.
    let case = External::new();
    let base = OnnxModel::load(&case.model).unwrap();
    let adapter = Adapter::load(&case.adapter).unwrap();
    std::fs::write(case.model.with_file_name("weights.bin"), b"").unwrap();
    let out_dir = case.out_dir();
    let err = merge_to_file(
        &base,
        &adapter,
        &out_dir.join("merged.onnx"),
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .expect_err("short side file");
    assert!(
        err.to_string().contains("weights.bin"),
        "names the data file: {err}"
    );
    assert_eq!(list(&out_dir), Vec::<String>::new());
}

#[test]
fn side_file_removed_after_load_leaves_no_file() {
    let case = External::new();
    let base = OnnxModel::load(&case.model).unwrap();
    let adapter = Adapter::load(&case.adapter).unwrap();
    std::fs::remove_file(case.model.with_file_name("weights.bin")).unwrap();
    let out_dir = case.out_dir();
    let err = merge_to_file(
        &base,
        &adapter,
        &out_dir.join("merged.onnx"),
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .expect_err("missing side file");
    let msg = err.to_string();
    assert!(
        msg.contains("external_data.location") && msg.contains("weights.bin"),
        "{msg}"
    );
    assert_eq!(list(&out_dir), Vec::<String>::new());
}

#[test]
fn merge_plan_wrong_shape_names_module_weight_and_dims() {
    // Not a write failure but the earliest one: MergePlan::new must refuse
    // an adapter whose `in` disagrees with the graph before anything is written.
    let case = Simple::new(|w| f32_tensor("W", &[IN as i64, OUT as i64], w));
    let adapter_dir = write_adapter(
        &case.dir.path().join("wrong"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(
            MODULE,
            &random(RANK * (IN + 1), 5),
            &case.b,
            RANK,
            OUT,
            IN + 1,
        ),
    );
    let base = OnnxModel::load(&case.model).unwrap();
    let adapter = Adapter::load(&adapter_dir).unwrap();
    let msg = match MergePlan::new(&base, &adapter) {
        Ok(_) => panic!("wrong in-size accepted"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&format!("adapter module `{MODULE}`")), "{msg}");
    assert!(
        msg.contains(&format!("in={}", IN + 1)) && msg.contains(&format!("in={IN}")),
        "{msg}"
    );
    assert!(msg.contains("weight `W`"), "{msg}");
    assert!(!case.out().exists());
}

#[test]
fn gemm_alpha_and_beta_scale_the_stored_weight_and_bias() {
    // Gemm computes alpha·x·Wᵀ + beta·b: the module's effective weight is
    // alpha·W_stored, so the merged stored weight must be (alpha·W + ΔW)/alpha,
    // and the bias (beta·b + s·b_B)/beta.
    const N: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = (0.5f32, 2.0f32);
    let w = random(N * N, 30);
    let bias = random(N, 31);
    let (a, b) = (random(2 * N, 32), random(N * 2, 33));
    let lora_b_bias = random(N, 34);
    let mut gemm = node(
        "/mlp/gate_proj/Gemm",
        "Gemm",
        &["x", "mlp.gate_proj.weight", "mlp.gate_proj.bias"],
        &["y"],
    );
    let float_attr = |name: &str, v: f32| emogate_models::onnx::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    };
    gemm.attribute = vec![
        attr_int("transB", 1),
        float_attr("alpha", alpha),
        float_attr("beta", beta),
    ];
    let g = graph(
        vec![gemm],
        vec![
            f32_tensor("mlp.gate_proj.weight", &[4, 4], &w),
            f32_tensor("mlp.gate_proj.bias", &[4], &bias),
        ],
        &["x"],
        &["y"],
    );
    let model = write_model(&dir.path().join("model.onnx"), g);
    let mut tensors = lora_tensors("mlp.gate_proj", &a, &b, 2, N, N);
    tensors.push((
        format!("{PREFIX}mlp.gate_proj.lora_B.bias"),
        Dtype::F32,
        vec![N],
        f32_bytes(&lora_b_bias),
    ));
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(2, 2.0, r#", "lora_bias": true"#),
        &tensors,
    );
    let out = dir.path().join("merged.onnx");
    merge(&model, &adapter, &out);
    let merged = OnnxModel::load(&out).unwrap();
    let effective: Vec<f32> = w.iter().map(|v| v * alpha).collect();
    let expected: Vec<f32> = reference_merge(&effective, &a, &b, 2, N, N, 1.0)
        .iter()
        .map(|v| v / alpha)
        .collect();
    assert_close(
        &values(&merged, "mlp.gate_proj.weight"),
        &expected,
        1e-5,
        "Gemm alpha",
    );
    let expected_bias: Vec<f32> = bias
        .iter()
        .zip(&lora_b_bias)
        .map(|(b, d)| (beta * b + 1.0 * d) / beta)
        .collect();
    assert_close(
        &values(&merged, "mlp.gate_proj.bias"),
        &expected_bias,
        1e-5,
        "Gemm beta",
    );
}

#[test]
fn external_initializer_inside_a_subgraph_follows_the_output() {
    // An If body owns an initializer stored in the side file. Merging into
    // another folder must carry it into the new side file, or the output
    // would point at data that is not there.
    let dir = tempfile::tempdir().unwrap();
    let w = random(IN * OUT, 40);
    let inner = random(IN, 41);
    let (a, b) = (random(RANK * IN, 42), random(OUT * RANK, 43));
    let mut data = f32_bytes(&w);
    let inner_offset = data.len();
    data.extend(f32_bytes(&inner));
    std::fs::write(dir.path().join("model.onnx.data"), &data).unwrap();
    let then_branch = graph(
        vec![node("/then/Add", "Add", &["x", "inner"], &["t"])],
        vec![external_tensor(
            "inner",
            &[IN as i64],
            "model.onnx.data",
            inner_offset,
            IN * 4,
        )],
        &[],
        &["t"],
    );
    let else_branch = graph(
        vec![node("/else/Identity", "Identity", &["x"], &["e"])],
        vec![],
        &[],
        &["e"],
    );
    let mut if_node = node("/branch/If", "If", &["cond"], &["branch_out"]);
    if_node.attribute = vec![
        attr_graph("then_branch", then_branch),
        attr_graph("else_branch", else_branch),
    ];
    let mut g = graph(
        vec![matmul(MODULE, "x", "W", "gate"), if_node],
        vec![external_tensor(
            "W",
            &[IN as i64, OUT as i64],
            "model.onnx.data",
            0,
            IN * OUT * 4,
        )],
        &["x"],
        &["gate", "branch_out"],
    );
    g.input.push(value_info("cond", BOOL, &[]));
    let model = write_model(&dir.path().join("model.onnx"), g);
    let adapter = write_adapter(
        &dir.path().join("adapter"),
        &lora_config(RANK, 4.0, ""),
        &lora_tensors(MODULE, &a, &b, RANK, OUT, IN),
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("merged.onnx");
    merge(&model, &adapter, &out);

    let merged = OnnxModel::load(&out).expect("every external reference resolves");
    let nested = merged
        .all_initializers()
        .into_iter()
        .find(|t| t.name() == "inner")
        .cloned()
        .expect("nested initializer kept");
    let ext = merged
        .external_data(&nested)
        .unwrap()
        .expect("still external");
    assert_eq!(ext.location, "merged.onnx.data");
    assert_eq!(merged.float_values(&nested).unwrap().1, inner);
}
