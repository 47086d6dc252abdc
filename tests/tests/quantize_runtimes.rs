//! Every quantized model loads and runs in tract (and, with the `ort`
//! feature, ONNX Runtime) and stays close to its f32 original; the `--int8`
//! graphs hold only what TensorRT's ONNX parser accepts; fp16 survives
//! large activations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use emogate_models::manifest::Manifest;
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::proto::{GraphProto, ModelProto};
use emogate_models::onnx::{OnnxModel, SaveOptions, build};
use emogate_models::quantize::fp16::Fp16Options;
use emogate_models::quantize::int8::Int8Options;
use emogate_models::quantize::{Mode, quantize_to_file};
use emogate_tests::{fixtures, repo_root};
use emogate_tools::verify::{self, BackendKind, OutputMetrics};

fn models() -> Vec<PathBuf> {
    let mut m = vec![repo_root().join("models/reference/emogate-ref.onnx")];
    for d in [
        "llama.legacy",
        "llama.legacy_nofold",
        "llama.dynamo",
        "qwen2.legacy",
        "qwen2.dynamo",
        "llama_bias.legacy",
        "llama_bias.dynamo",
        "swiglu_gemm.legacy",
    ] {
        m.push(fixtures().join("merge").join(d).join("model.onnx"));
    }
    m
}

fn backends() -> Vec<BackendKind> {
    let mut b = vec![BackendKind::Tract];
    if cfg!(feature = "ort") {
        b.push(BackendKind::Ort);
    }
    b
}

/// Runs reference and candidate on `n` seeded inputs; metrics per output.
fn measure(
    reference: &Path,
    candidate: &Path,
    kind: BackendKind,
    n: usize,
    scale: f32,
) -> Vec<OutputMetrics> {
    let model = OnnxModel::load(reference).unwrap();
    let manifest = Manifest::from_model(&model).unwrap();
    let descs = verify::model_inputs(&model, &HashMap::new()).unwrap();
    let sets = verify::random_inputs(&descs, manifest.as_ref(), n, 3, scale).unwrap();
    let run = |p: &Path| {
        let mut b = verify::load_backend(kind, p, &descs, 1).unwrap_or_else(|e| panic!("{e:#}"));
        verify::run_all(b.as_mut(), &sets, &p.display().to_string())
            .unwrap_or_else(|e| panic!("{e:#}"))
            .0
    };
    let r = run(reference);
    let c = run(candidate);
    let names = verify::output_names(&model);
    let roles = verify::output_roles(&names, manifest.as_ref(), &r);
    verify::compare(&names, &roles, &r, &c).unwrap()
}

fn modes() -> Vec<Mode> {
    vec![
        Mode::Fp16(Fp16Options::default()),
        Mode::Int8(Int8Options::default()),
        Mode::Int8Dynamic(Int8Options::default()),
    ]
}

#[test]
fn every_quantized_model_runs_on_each_backend_and_stays_close() {
    let dir = tempfile::tempdir().unwrap();
    for (i, path) in models().into_iter().enumerate() {
        let model = OnnxModel::load(&path).unwrap();
        for mode in modes() {
            let out = dir.path().join(format!("{i}-{}.onnx", mode.name()));
            let report = match quantize_to_file(&model, &mode, &out, &SaveOptions::default()) {
                Ok(r) => r,
                // SwiGLU-Gemm has only Gemm, which the dynamic form does not
                // convert: reported, not silently written unchanged.
                Err(e)
                    if path.to_string_lossy().contains("swiglu_gemm")
                        && mode.name() == "int8-dynamic" =>
                {
                    assert!(e.to_string().contains("found nothing to convert"), "{e}");
                    continue;
                }
                Err(e) => panic!("{} {}: {e}", path.display(), mode.name()),
            };
            assert!(report.weight_bytes_after < report.weight_bytes_before);
            if model.uses_external_data() {
                assert!(
                    report.save.as_ref().unwrap().data.is_some(),
                    "{}: side file",
                    path.display()
                );
            }
            // The reference model under fp16 takes ~100 ms a run on tract (no f16 kernels on x86).
            let n = if mode.name() == "fp16" && i == 0 {
                4
            } else {
                12
            };
            for kind in backends() {
                let metrics = measure(&path, &out, kind, n, 1.0);
                for m in &metrics {
                    // Activations quantized per tensor to uint8 (dynamic) cost more than weights alone.
                    // The reference model (i == 0, base + the trained affect-gate
                    // adapter) has valence/arousal outputs near 0, where fp16's
                    // relative error is larger: 8.6e-3 measured on tract.
                    let limit = match mode.name() {
                        "fp16" if i == 0 => 2e-2,
                        "fp16" => 5e-3,
                        "int8" => 5e-2,
                        _ => 1.2e-1,
                    };
                    assert_eq!(
                        m.nonfinite_candidate,
                        0,
                        "{} {} {:?}: {m:?}",
                        path.display(),
                        mode.name(),
                        kind
                    );
                    let cos = if mode.name() == "int8-dynamic" {
                        0.95
                    } else {
                        0.99
                    };
                    assert!(
                        m.mean_rel_err < limit && m.cosine_min > cos,
                        "{} {} {:?}: {m:?}",
                        path.display(),
                        mode.name(),
                        kind
                    );
                }
            }
        }
    }
}

/// The limits [`quantized_models_meet_the_size_and_agreement_targets`]
/// holds one model to: weights as a fraction of f32 (at most), top-1
/// agreement (at least).
#[derive(Clone, Copy)]
struct Limits {
    int8_weights: f64,
    int8_top1: f64,
    fp16_weights: f64,
    fp16_top1: f64,
}

/// The reference model's random inputs are off its training distribution
/// (see below): int8 agrees on 98.75% of them (ONNX Runtime, base +
/// affect-gate), fp16 flips 1 of the 400 (99.75%).
const REFERENCE_LIMITS: Limits = Limits {
    int8_weights: 0.30,
    int8_top1: 0.98,
    fp16_weights: 0.51,
    fp16_top1: 0.995,
};

/// The merge fixtures: the targets.
const FIXTURE_LIMITS: Limits = Limits {
    int8_weights: 0.30,
    int8_top1: 0.995,
    fp16_weights: 0.51,
    fp16_top1: 0.999,
};

/// docs/quantization.md's "What CI checks" table states exactly the limits
/// checked here (and the README states none of its own).
#[test]
fn the_documented_limits_are_the_checked_ones() {
    let pct = |x: f64| {
        let v = (x * 1000.0).round() / 10.0;
        if v.fract() == 0.0 {
            format!("{v:.0}%")
        } else {
            format!("{v}%")
        }
    };
    let row = |model: &str, l: Limits| {
        format!(
            "| {model} | ≤ {} of f32 | ≥ {} | ≤ {} of f32 | ≥ {} |",
            pct(l.int8_weights),
            pct(l.int8_top1),
            pct(l.fp16_weights),
            pct(l.fp16_top1)
        )
    };
    let doc = std::fs::read_to_string(repo_root().join("docs/quantization.md")).unwrap();
    for expected in [
        row("the 8 merge fixtures", FIXTURE_LIMITS),
        row("the reference model (`emogate-ref`)", REFERENCE_LIMITS),
    ] {
        assert!(
            doc.lines().any(|l| l == expected),
            "docs/quantization.md (What CI checks) lacks the row\n{expected}"
        );
    }
}

/// The targets: `--int8` keeps top-1 agreement ≥ 99.5% with
/// weights at ≤ 30% of f32, `--fp16` keeps it ≥ 99.9%, over 400 seeded
/// inputs (one flipped prediction already misses the fp16 target).
///
/// The merge fixtures are trained classifiers (tools/fixtures/README.md) and
/// these inputs (random tokens, standard-normal vectors) are what they were
/// trained on. The reference model's manifest-driven random inputs (random
/// pixels, tones and noise) are nothing like its training faces and voices:
/// its class scores there sit close together. The first reference model
/// agreed on 99.3–99.7% of them and was held to 99%; the current one (the
/// base plus the trained affect-gate adapter) agrees on 98.75% (ONNX
/// Runtime, these 400 inputs) and is held to 98%. Held-out SynthAffect
/// samples (`models/reference/make_eval_inputs.py`, not committed: 70 KB a
/// sample) are the meaningful check: models/reference/README.md.
/// docs/quantization.md (What CI checks) states these limits per model
/// ([`REFERENCE_LIMITS`], [`FIXTURE_LIMITS`]);
/// `the_documented_limits_are_the_checked_ones` fails when they differ.
#[test]
fn quantized_models_meet_the_size_and_agreement_targets() {
    // ONNX Runtime when built with it (fast fp16 kernels); tract otherwise.
    let kind = *backends().last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, path) in models().into_iter().enumerate() {
        let model = OnnxModel::load(&path).unwrap();
        let limits = if i == 0 {
            REFERENCE_LIMITS
        } else {
            FIXTURE_LIMITS
        };
        for (mode, min_top1, max_ratio) in [
            (
                Mode::Int8(Int8Options::default()),
                limits.int8_top1,
                limits.int8_weights,
            ),
            (
                Mode::Fp16(Fp16Options::default()),
                limits.fp16_top1,
                limits.fp16_weights,
            ),
        ] {
            let what = format!("{} {}", path.display(), mode.name());
            let out = dir.path().join(format!("{i}-{}.onnx", mode.name()));
            let report = quantize_to_file(&model, &mode, &out, &SaveOptions::default())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let ratio = report.weight_bytes_after as f64 / report.weight_bytes_before as f64;
            assert!(ratio <= max_ratio, "{what}: weights at {ratio:.3} of f32");
            let metrics = measure(&path, &out, kind, 400, 1.0);
            let classes: Vec<_> = metrics.iter().filter_map(|m| m.top1).collect();
            assert!(!classes.is_empty(), "{what}: no class output");
            for top1 in classes {
                assert!(top1 >= min_top1, "{what} {kind:?}: top-1 {top1}");
            }
        }
    }
}

/// TensorRT's ONNX parser takes weight-only QDQ: int8 weights, zero point 0
/// (symmetric), one f32 scale per output channel with the `axis` attribute,
/// feeding the op that reads the weight. Nothing else quantized may appear.
fn assert_tensorrt_qdq(model: &ModelProto, what: &str) {
    // Ops of these models that TensorRT 10's ONNX parser supports.
    const TRT_OPS: &[&str] = &[
        "Add",
        "AveragePool",
        "Cast",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "Cos",
        "DequantizeLinear",
        "Div",
        "Equal",
        "Expand",
        "Gather",
        "Gemm",
        "Identity",
        "LessOrEqual",
        "MatMul",
        "Mul",
        "Neg",
        "Pow",
        "ReduceMean",
        "Reshape",
        "Sigmoid",
        "Sin",
        "Slice",
        "Softmax",
        "Sqrt",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Where",
        "Range",
        "Shape",
        "Squeeze",
        "Trilu",
        "ScatterND",
        "Greater",
        "Less",
        "Not",
        "And",
        "Max",
        "Min",
        "Reciprocal",
        "Erf",
        "Relu",
        "ReduceSum",
        "Split",
        "Flatten",
        "GlobalAveragePool",
        "MaxPool",
        "GatherND",
        "GatherElements",
        "Clip",
        "Exp",
        "Log",
        "Abs",
        "ArgMax",
        "Pad",
        "Resize",
        "Tile",
        "LayerNormalization",
        "ReduceMax",
    ];
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty())
        .map(|o| o.version())
        .unwrap();
    assert!(
        opset >= 13,
        "{what}: per-axis DequantizeLinear needs opset 13, got {opset}"
    );
    let g: &GraphProto = model.graph.as_ref().unwrap();
    let inits: HashMap<&str, _> = g.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut dq = 0;
    for n in &g.node {
        assert!(
            TRT_OPS.contains(&n.op_type()),
            "{what}: op {} ({})",
            n.op_type(),
            n.name()
        );
        assert!(
            n.domain().is_empty(),
            "{what}: custom-domain op {}",
            n.op_type()
        );
        if n.op_type() != "DequantizeLinear" {
            continue;
        }
        dq += 1;
        let w = inits[n.input[0].as_str()];
        assert_eq!(
            w.data_type(),
            DataType::Int8 as i32,
            "{what}: {} is not int8",
            w.name()
        );
        let scale = inits[n.input[1].as_str()];
        assert_eq!(scale.data_type(), DataType::Float as i32);
        let zp = inits[n.input.get(2).expect("explicit zero point").as_str()];
        assert_eq!(zp.data_type(), DataType::Int8 as i32);
        assert!(
            zp.raw_data.as_ref().unwrap().iter().all(|&b| b == 0),
            "{what}: nonzero zero point"
        );
        let axis = n
            .attribute
            .iter()
            .find(|a| a.name() == "axis")
            .and_then(|a| a.i)
            .expect("axis");
        assert_eq!(
            scale.dims,
            vec![w.dims[axis as usize]],
            "{what}: one scale per channel of axis {axis}"
        );
        assert_eq!(zp.dims, scale.dims);
        let readers: Vec<_> = g
            .node
            .iter()
            .filter(|r| r.input.contains(&n.output[0]))
            .collect();
        assert!(!readers.is_empty());
        for r in readers {
            let ok = match r.op_type() {
                // [in, out] MatMul weights per column; [out, in] behind a Transpose per row.
                "MatMul" => axis == 1 && r.input[1] == n.output[0],
                "Transpose" => axis == 0,
                "Gemm" => {
                    let trans_b = r
                        .attribute
                        .iter()
                        .find(|a| a.name() == "transB")
                        .and_then(|a| a.i)
                        .unwrap_or(0);
                    axis == if trans_b == 1 { 0 } else { 1 }
                }
                "Conv" | "Gather" => axis == 0,
                _ => false,
            };
            assert!(
                ok,
                "{what}: DequantizeLinear axis {axis} feeds {} {}",
                r.op_type(),
                r.name()
            );
        }
    }
    assert!(dq > 0, "{what}: no DequantizeLinear");
}

#[test]
fn int8_graphs_hold_only_what_tensorrt_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for (i, path) in models().into_iter().enumerate() {
        let model = OnnxModel::load(&path).unwrap();
        let out = dir.path().join(format!("{i}.onnx"));
        let opts = Int8Options {
            min_elements: 1,
            ..Int8Options::default()
        };
        quantize_to_file(&model, &Mode::Int8(opts), &out, &SaveOptions::default()).unwrap();
        let q = OnnxModel::load(&out).unwrap();
        assert_tensorrt_qdq(&q.proto, &path.display().to_string());
    }
    // The dynamic form is what TensorRT rejects, and the check says so.
    let model = OnnxModel::load(fixtures().join("merge/llama.legacy/model.onnx")).unwrap();
    let out = dir.path().join("dyn.onnx");
    quantize_to_file(
        &model,
        &Mode::Int8Dynamic(Int8Options::default()),
        &out,
        &SaveOptions::default(),
    )
    .unwrap();
    let q = OnnxModel::load(&out).unwrap();
    let caught = std::panic::catch_unwind(|| assert_tensorrt_qdq(&q.proto, "dynamic"));
    assert!(
        caught.is_err(),
        "the TensorRT check must reject MatMulInteger"
    );
}

/// The reference model with inputs 300× their normal size: hidden
/// activations reach thousands, whose squares (RMSNorm) overflow f16.
#[test]
fn fp16_has_no_inf_or_nan_on_large_activations() {
    let dir = tempfile::tempdir().unwrap();
    let path = repo_root().join("models/reference/emogate-ref.onnx");
    let model = OnnxModel::load(&path).unwrap();
    let out = dir.path().join("fp16.onnx");
    quantize_to_file(
        &model,
        &Mode::Fp16(Fp16Options::default()),
        &out,
        &SaveOptions::default(),
    )
    .unwrap();
    for kind in backends() {
        for m in measure(&path, &out, kind, 3, 300.0) {
            assert_eq!(m.nonfinite_reference, 0);
            assert_eq!(m.nonfinite_candidate, 0, "{kind:?}: {m:?}");
            assert!(m.mean_rel_err < 1e-2, "{kind:?}: {m:?}");
        }
    }
}

/// An RMSNorm written as `h / sqrt(mean(h²) + eps) * g` after a MatMul, fed
/// |h| ≈ 1000 (h² = 1e6 > 65504): ours computes the norm in f32 (Casts in,
/// f32 constants) and stays right on both runtimes; the naive conversion
/// feeds f16 into Pow. (On these CPU runtimes the naive graph does not
/// overflow either: tract fuses the pattern into an RmsNorm op that
/// accumulates in f32, and ONNX Runtime's CPU provider, which has no f16
/// Pow/ReduceMean kernels, inserts Casts to f32. GPU fp16 kernels compute
/// h² in f16, which is what the f32 region protects against.)
#[test]
fn fp16_keeps_rmsnorm_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let fl = DataType::Float as i32;
    let eye: Vec<f32> = (0..64)
        .map(|k| if k % 9 == 0 { 1.0 } else { 0.0 })
        .collect();
    let graph = GraphProto {
        name: Some("rmsnorm".into()),
        node: vec![
            build::node("proj/MatMul", "MatMul", &["x", "w"], &["h"]),
            build::node("norm/Pow", "Pow", &["h", "two"], &["sq"]),
            {
                let mut n = build::node("norm/ReduceMean", "ReduceMean", &["sq", "axes"], &["ms"]);
                n.attribute.push(build::attr_int("keepdims", 1));
                n
            },
            build::node("norm/Add", "Add", &["ms", "eps"], &["mse"]),
            build::node("norm/Sqrt", "Sqrt", &["mse"], &["rms"]),
            build::node("norm/Div", "Div", &["h", "rms"], &["hn"]),
            build::node("norm/Mul", "Mul", &["hn", "g"], &["y"]),
        ],
        initializer: vec![
            build::tensor_raw("w", fl, &[8, 8], f32_bytes(&eye)),
            build::tensor_raw("two", fl, &[], f32_bytes(&[2.0])),
            build::tensor_raw(
                "axes",
                DataType::Int64 as i32,
                &[1],
                (-1i64).to_le_bytes().to_vec(),
            ),
            build::tensor_raw("eps", fl, &[], f32_bytes(&[1e-5])),
            build::tensor_raw("g", fl, &[8], f32_bytes(&[1.0; 8])),
        ],
        input: vec![build::value_info("x", fl, &[Some(1), Some(8)])],
        output: vec![build::value_info("y", fl, &[Some(1), Some(8)])],
        ..Default::default()
    };
    let src = dir.path().join("rms.onnx");
    std::fs::write(
        &src,
        prost::Message::encode_to_vec(&build::model(graph, 18)),
    )
    .unwrap();
    let model = OnnxModel::load(&src).unwrap();
    let ours = dir.path().join("ours.onnx");
    let naive = dir.path().join("naive.onnx");
    let report = quantize_to_file(
        &model,
        &Mode::Fp16(Fp16Options::default()),
        &ours,
        &SaveOptions::default(),
    )
    .unwrap();
    // The six norm nodes, found by the pattern.
    assert_eq!(report.kept_f32.len(), 6, "{:?}", report.kept_f32);
    let naive_opts = Fp16Options {
        keep_sensitive: false,
        ..Fp16Options::default()
    };
    quantize_to_file(
        &model,
        &Mode::Fp16(naive_opts),
        &naive,
        &SaveOptions::default(),
    )
    .unwrap();
    let pow_reads = |p: &Path| {
        let m = OnnxModel::load(p).unwrap();
        let g = m.graph().clone();
        let pow = g
            .node
            .iter()
            .find(|n| n.op_type() == "Pow")
            .unwrap()
            .clone();
        let exponent = g
            .initializer
            .iter()
            .find(|t| t.name() == pow.input[1])
            .unwrap()
            .data_type();
        let producer = g
            .node
            .iter()
            .find(|n| n.output.contains(&pow.input[0]))
            .unwrap()
            .clone();
        (producer.op_type().to_string(), exponent)
    };
    assert_eq!(
        pow_reads(&ours),
        ("Cast".to_string(), DataType::Float as i32)
    );
    assert_eq!(
        pow_reads(&naive),
        ("MatMul".to_string(), DataType::Float16 as i32)
    );
    for kind in backends() {
        let good = &measure(&src, &ours, kind, 8, 1000.0)[0];
        assert!(
            good.mean_rel_err < 2e-3 && good.nonfinite_candidate == 0,
            "{kind:?} ours: {good:?}"
        );
    }
}
