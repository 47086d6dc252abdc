//! `--int8-dynamic` on a weight read both by a `Gather` (an embedding
//! table) and by a `MatMul` (a tied LM head), on small graphs built here.
//!
//! ONNX Runtime's `quantize_dynamic` quantizes such an initializer once, for
//! its first reader in node order, and every MatMul/Gather reading it reads
//! that one quantized form; a reader it does not quantize (the `Transpose`
//! of a transposed tied head) reads a `DequantizeLinear` of that form, and
//! the f32 original is dropped.
//! Each case checks that the output graph is valid (every node input exists,
//! in topological order), that the report says what happened to the shared
//! weight, and that tract's outputs stay within the tolerance the other
//! int8-dynamic tests use (`tests/tests/quantize_runtimes.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use emogate_models::onnx::build::{attr_ints, model, node, tensor_raw, value_info};
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use emogate_models::onnx::{OnnxModel, SaveOptions};
use emogate_models::quantize::int8::Int8Options;
use emogate_models::quantize::{Mode, QuantizeReport, quantize_to_file};
use emogate_tools::verify::{self, BackendKind};
use prost::Message;

const FLOAT: i32 = DataType::Float as i32;
const INT64: i32 = DataType::Int64 as i32;
const VOCAB: i64 = 64;
const HIDDEN: i64 = 32;
const SEQ: i64 = 6;
/// The shared table, named as HF names a tied embedding.
const EMBED: &str = "model.embed_tokens.weight";
/// int8-dynamic's limits in `tests/tests/quantize_runtimes.rs`.
const MAX_MEAN_REL_ERR: f64 = 1.2e-1;
const MIN_COSINE: f64 = 0.95;

/// How the LM head reads the embedding table.
#[derive(Debug, Clone, Copy)]
enum Tie {
    /// `Gather(E)` first, later `MatMul(u, E)` on the table as stored.
    GatherThenMatMul,
    /// `Gather(E)`, and `Transpose(E) → MatMul` (a legacy export without
    /// constant folding): the MatMul is not a plain `MatMul(x, W)`.
    Transposed,
    /// `MatMul(x, E)` comes before `Gather(E)` in node order.
    MatMulThenGather,
}

/// Deterministic values in [-1, 1) (splitmix64).
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

fn f32_tensor(name: &str, dims: &[i64], seed: u64) -> TensorProto {
    let n = dims.iter().product::<i64>() as usize;
    let bytes = random(n, seed)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    tensor_raw(name, FLOAT, dims, bytes)
}

/// Writes the `tie` model to `dir/model.onnx`.
fn write_tied(dir: &Path, tie: Tie) -> PathBuf {
    let ids = value_info("input_ids", INT64, &[Some(1), Some(SEQ)]);
    let embed = f32_tensor(EMBED, &[VOCAB, HIDDEN], 1);
    let gather = node(
        "/model/embed_tokens/Gather",
        "Gather",
        &[EMBED, "input_ids"],
        &["h"],
    );
    let (nodes, initializer, input, out_dims): (Vec<NodeProto>, _, _, _) = match tie {
        Tie::GatherThenMatMul => (
            vec![
                gather,
                node(
                    "/model/up/MatMul",
                    "MatMul",
                    &["h", "onnx::MatMul_1"],
                    &["u"],
                ),
                node("/lm_head/MatMul", "MatMul", &["u", EMBED], &["logits"]),
            ],
            vec![embed, f32_tensor("onnx::MatMul_1", &[HIDDEN, VOCAB], 2)],
            vec![ids],
            [1, SEQ, HIDDEN],
        ),
        Tie::Transposed => {
            let mut transpose = node("/lm_head/Transpose", "Transpose", &[EMBED], &["embed_t"]);
            transpose.attribute.push(attr_ints("perm", &[1, 0]));
            (
                vec![
                    gather,
                    node(
                        "/model/up/MatMul",
                        "MatMul",
                        &["h", "onnx::MatMul_1"],
                        &["u"],
                    ),
                    transpose,
                    node("/lm_head/MatMul", "MatMul", &["u", "embed_t"], &["logits"]),
                ],
                vec![embed, f32_tensor("onnx::MatMul_1", &[HIDDEN, HIDDEN], 2)],
                vec![ids],
                [1, SEQ, VOCAB],
            )
        }
        Tie::MatMulThenGather => (
            vec![
                node("/lm_head/MatMul", "MatMul", &["x", EMBED], &["y"]),
                gather,
                node("/model/add/Add", "Add", &["y", "h"], &["logits"]),
            ],
            vec![embed],
            vec![
                ids,
                value_info("x", FLOAT, &[Some(1), Some(SEQ), Some(VOCAB)]),
            ],
            [1, SEQ, HIDDEN],
        ),
    };
    let out_dims: Vec<Option<i64>> = out_dims.iter().map(|&d| Some(d)).collect();
    let graph = GraphProto {
        name: Some(format!("tied_{tie:?}")),
        node: nodes,
        initializer,
        input,
        output: vec![value_info("logits", FLOAT, &out_dims)],
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model(graph, 17).encode_to_vec()).expect("write model.onnx");
    path
}

/// Fails unless every node input is a graph input, an initializer or an
/// earlier node's output, and every graph output is produced.
fn assert_valid(proto: &ModelProto, what: &str) {
    let graph = proto.graph.as_ref().expect("graph");
    let mut known: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name()));
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            assert!(
                known.contains(i.as_str()),
                "{what}: node `{}` ({}) reads `{i}`, which nothing provides",
                n.name(),
                n.op_type()
            );
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    for o in &graph.output {
        assert!(known.contains(o.name()), "{what}: output `{}`", o.name());
    }
}

/// Quantizes `tie`'s model; returns the f32 model, the output and the report.
fn quantize_tied(
    dir: &Path,
    tie: Tie,
    per_channel: bool,
) -> (PathBuf, PathBuf, ModelProto, QuantizeReport) {
    let path = write_tied(dir, tie);
    let model = OnnxModel::load(&path).expect("load");
    let options = Int8Options {
        per_channel,
        ..Int8Options::default()
    };
    let out = dir.join("dyn.onnx");
    let report = quantize_to_file(
        &model,
        &Mode::Int8Dynamic(options),
        &out,
        &SaveOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{tie:?}: {e}"));
    let proto = OnnxModel::load(&out).expect("reload").proto;
    assert_valid(&proto, &format!("{tie:?}"));
    (path, out, proto, report)
}

/// Runs both models with tract on seeded inputs and checks the int8-dynamic
/// tolerance.
fn assert_parity(reference: &Path, candidate: &Path, what: &str) {
    let model = OnnxModel::load(reference).unwrap();
    let descs = verify::model_inputs(&model, &HashMap::new()).unwrap();
    let sets = verify::random_inputs(&descs, None, 12, 3, 1.0).unwrap();
    let run = |p: &Path| {
        let mut b = verify::load_backend(BackendKind::Tract, p, &descs, 1)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        verify::run_all(b.as_mut(), &sets, &p.display().to_string())
            .unwrap_or_else(|e| panic!("{what}: {e:#}"))
            .0
    };
    let (r, c) = (run(reference), run(candidate));
    let names = verify::output_names(&model);
    let roles = verify::output_roles(&names, None, &r);
    for m in verify::compare(&names, &roles, &r, &c).unwrap() {
        assert_eq!(m.nonfinite_candidate, 0, "{what}: {m:?}");
        assert!(
            m.mean_rel_err < MAX_MEAN_REL_ERR && m.cosine_min > MIN_COSINE,
            "{what}: {m:?}"
        );
    }
}

fn initializer<'m>(proto: &'m ModelProto, name: &str) -> Option<&'m TensorProto> {
    let graph = proto.graph.as_ref().unwrap();
    graph.initializer.iter().find(|t| t.name() == name)
}

/// The nodes reading `name`, as `op` strings.
fn readers(proto: &ModelProto, name: &str) -> Vec<String> {
    let graph = proto.graph.as_ref().unwrap();
    graph
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == name))
        .map(|n| n.op_type().to_string())
        .collect()
}

#[test]
fn tied_embedding_read_by_gather_then_matmul_is_quantized_once_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_model, out, proto, report) = quantize_tied(dir.path(), Tie::GatherThenMatMul, false);
    // The Gather comes first: the table is uint8 asymmetric, and the
    // MatMulInteger reads that same form; no f32 copy is left.
    assert!(initializer(&proto, EMBED).is_none(), "f32 table kept");
    let q = initializer(&proto, &format!("{EMBED}_quantized")).expect("quantized table");
    assert_eq!(q.data_type(), DataType::Uint8 as i32);
    let mut r = readers(&proto, q.name());
    r.sort();
    assert_eq!(r, ["Gather", "MatMulInteger"]);
    let t = report.tensors.iter().find(|t| t.name == EMBED).unwrap();
    assert_eq!(t.op, "Gather");
    assert!(t.to.contains("shared by 1 Gather and 1 MatMul"), "{}", t.to);
    assert_parity(&f32_model, &out, "GatherThenMatMul");
}

#[test]
fn tied_embedding_read_by_matmul_then_gather_is_quantized_once_for_both() {
    for per_channel in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (f32_model, out, proto, report) =
            quantize_tied(dir.path(), Tie::MatMulThenGather, per_channel);
        assert!(initializer(&proto, EMBED).is_none(), "f32 table kept");
        let q = initializer(&proto, &format!("{EMBED}_quantized")).expect("quantized table");
        assert_eq!(q.data_type(), DataType::Int8 as i32);
        // One scale for the tensor even with --per-channel: the Gather's
        // DequantizeLinear reads it too (see dynamic.rs).
        let scale = initializer(&proto, &format!("{EMBED}_scale")).unwrap();
        assert!(scale.dims.is_empty(), "{:?}", scale.dims);
        let mut r = readers(&proto, q.name());
        r.sort();
        assert_eq!(r, ["Gather", "MatMulInteger"]);
        let t = report.tensors.iter().find(|t| t.name == EMBED).unwrap();
        assert_eq!(t.op, "MatMul");
        assert!(t.to.contains("shared by 1 Gather and 1 MatMul"), "{}", t.to);
        assert!(t.to.contains("per-tensor"), "{}", t.to);
        assert_parity(
            &f32_model,
            &out,
            &format!("MatMulThenGather per_channel={per_channel}"),
        );
    }
}

#[test]
fn tied_embedding_read_through_a_transpose_is_dequantized_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_model, out, proto, report) = quantize_tied(dir.path(), Tie::Transposed, false);
    // The Gather reads the uint8 table; the Transpose, which int8-dynamic
    // leaves alone, reads a DequantizeLinear of that same table under the
    // original name, as quantize_dynamic writes it: no f32 copy is left.
    assert!(initializer(&proto, EMBED).is_none(), "f32 table kept");
    assert_eq!(readers(&proto, EMBED), ["Transpose"]);
    let q = format!("{EMBED}_quantized");
    assert_eq!(
        initializer(&proto, &q).unwrap().data_type(),
        DataType::Uint8 as i32
    );
    let mut r = readers(&proto, &q);
    r.sort();
    assert_eq!(r, ["DequantizeLinear", "Gather"]);
    let t = report.tensors.iter().find(|t| t.name == EMBED).unwrap();
    assert_eq!(t.op, "Gather");
    assert!(
        t.to.contains("also read by Transpose `/lm_head/Transpose`"),
        "{}",
        t.to
    );
    assert_parity(&f32_model, &out, "Transposed");
}
