//! emogate's quantization numerics against independent references:
//! ONNX Runtime's `quantize_dynamic` and `quant_utils.quantize_data`, and
//! onnxconverter-common's fp16 converter, run once by
//! `tools/fixtures/make_quantize_fixtures.py` on `merge/llama.legacy` and
//! committed under `tests/fixtures/quantize/`.

use std::collections::HashMap;

use emogate_models::onnx::proto::TensorProto;
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::{FloatType, OnnxModel};
use emogate_models::quantize::fp16::Fp16Options;
use emogate_models::quantize::int8::{Int8Options, ScaleMethod};
use emogate_models::quantize::{Mode, quantize};
use emogate_tests::fixtures;
use emogate_tools::npz::{NpyData, read_npz};

fn source() -> OnnxModel {
    OnnxModel::load(fixtures().join("merge/llama.legacy/model.onnx")).unwrap()
}

fn anchor(name: &str) -> OnnxModel {
    OnnxModel::load(fixtures().join("quantize").join(name)).unwrap()
}

fn inits(proto: &emogate_models::onnx::proto::ModelProto) -> HashMap<String, TensorProto> {
    proto
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect()
}

fn int8_values(t: &TensorProto) -> Vec<i8> {
    assert_eq!(t.data_type(), DataType::Int8 as i32, "{}", t.name());
    let raw = t.raw_data.as_ref().expect("raw int8 data");
    raw.iter().map(|&b| b as i8).collect()
}

/// int8 or uint8 values as i16, with their type.
fn q_values(t: &TensorProto) -> (i32, Vec<i16>) {
    if t.raw_data.is_none() {
        // Typed storage: 8-bit values live in int32_data.
        return (
            t.data_type(),
            t.int32_data.iter().map(|&v| v as i16).collect(),
        );
    }
    let raw = t.raw_data.as_ref().expect("raw data");
    let v = if t.data_type() == DataType::Int8 as i32 {
        raw.iter().map(|&b| b as i8 as i16).collect()
    } else {
        assert_eq!(t.data_type(), DataType::Uint8 as i32, "{}", t.name());
        raw.iter().map(|&b| b as i16).collect()
    };
    (t.data_type(), v)
}

fn f32_values(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type(), DataType::Float as i32, "{}", t.name());
    match &t.raw_data {
        Some(raw) => FloatType::F32.decode(raw),
        None => t.float_data.clone(),
    }
}

/// Every weight, with ONNX Runtime's absmax scales.
fn all_int8() -> Int8Options {
    Int8Options {
        min_elements: 1,
        scale: ScaleMethod::AbsMax,
        ..Int8Options::default()
    }
}

#[test]
fn int8_qdq_weights_match_onnxruntime_quant_utils() {
    let model = source();
    let (proto, report) = quantize(&model, &Mode::Int8(all_int8())).unwrap();
    let ours = inits(&proto);
    let reference = read_npz(&fixtures().join("quantize/qdq_reference.npz")).unwrap();
    let mut compared = 0;
    for a in reference.iter().filter(|a| a.name.ends_with(".q")) {
        let name = a.name.strip_suffix(".q").unwrap();
        let NpyData::I64(want_q) = &a.data else {
            panic!("{} is not integer", a.name)
        };
        let scale = reference
            .iter()
            .find(|s| s.name == format!("{name}.scale"))
            .unwrap();
        let NpyData::F32(want_s) = &scale.data else {
            panic!("scale is not float")
        };
        let q = int8_values(&ours[&format!("{name}_quantized")]);
        let s = f32_values(&ours[&format!("{name}_scale")]);
        let zp = int8_values(&ours[&format!("{name}_zero_point")]);
        assert!(zp.iter().all(|&z| z == 0), "{name}: zero point must be 0");
        assert_eq!(
            s.len(),
            want_s.len(),
            "{name}: one scale per output channel"
        );
        for (c, (a, b)) in s.iter().zip(want_s).enumerate() {
            assert!(
                (a - b).abs() <= 1e-7 * b.abs(),
                "{name} channel {c}: scale {a} vs ORT {b}"
            );
        }
        assert_eq!(q.len(), want_q.len());
        let differ = q
            .iter()
            .zip(want_q)
            .filter(|(a, b)| **a as i64 != **b)
            .count();
        assert_eq!(differ, 0, "{name}: {differ} int8 values differ from ORT's");
        compared += 1;
    }
    // Every MatMul weight and the embedding table of the fixture.
    assert!(compared >= 15, "compared only {compared} tensors");
    assert_eq!(report.tensors.len(), compared);
}

#[test]
fn int8_dynamic_is_quantize_dynamic_node_for_node() {
    let model = source();
    let (proto, report) = quantize(&model, &Mode::Int8Dynamic(all_int8())).unwrap();
    let ort = anchor("llama.legacy.ort_dynamic.onnx");
    let ours = inits(&proto);
    let theirs = inits(&ort.proto);
    let mut compared = 0;
    for (name, t) in &theirs {
        let quantized =
            t.data_type() == DataType::Int8 as i32 || t.data_type() == DataType::Uint8 as i32;
        if !quantized || !name.ends_with("_quantized") {
            continue;
        }
        let mine = ours
            .get(name)
            .unwrap_or_else(|| panic!("ORT quantized {name}, we did not"));
        assert_eq!(mine.dims, t.dims, "{name}");
        assert_eq!(
            q_values(mine),
            q_values(t),
            "{name}: quantized values and type"
        );
        let zp = name.replace("_quantized", "_zero_point");
        assert_eq!(q_values(&ours[&zp]), q_values(&theirs[&zp]), "{zp}");
        let scale = name.replace("_quantized", "_scale");
        let (a, b) = (f32_values(&ours[&scale]), f32_values(&theirs[&scale]));
        assert_eq!(a.len(), b.len(), "{scale}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-7 * y.abs(), "{scale}: {x} vs ORT {y}");
        }
        compared += 1;
    }
    // 15 MatMul weights (int8) and the embedding table (uint8).
    assert!(compared >= 16, "compared only {compared} weights");
    assert_eq!(report.tensors.len(), compared);
    let count = |p: &emogate_models::onnx::proto::ModelProto, op: &str| {
        p.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type() == op)
            .count()
    };
    for op in [
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "MatMul",
        "DequantizeLinear",
        "Gather",
    ] {
        assert_eq!(count(&proto, op), count(&ort.proto, op), "{op} nodes");
    }
    assert!(report.warnings.iter().any(|w| w.contains("TensorRT")));
}

#[test]
fn fp16_weights_match_onnxconverter_common() {
    let model = source();
    let (proto, report) = quantize(&model, &Mode::Fp16(Fp16Options::default())).unwrap();
    let conv = anchor("llama.legacy.ort_fp16.onnx");
    let ours = inits(&proto);
    let mut compared = 0;
    for (name, t) in inits(&conv.proto) {
        let Some(mine) = ours.get(&name) else {
            continue;
        };
        if t.data_type() != DataType::Float16 as i32 || mine.data_type() != DataType::Float16 as i32
        {
            continue;
        }
        let a = mine.raw_data.as_ref().unwrap();
        let b = t.raw_data.as_ref().unwrap();
        assert_eq!(a.len(), b.len(), "{name}");
        // Bit for bit, except the values onnxconverter raises to its min_positive_val.
        let original: Vec<f32> = {
            let src = model
                .all_initializers()
                .into_iter()
                .find(|i| i.name() == name)
                .unwrap();
            model.float_values(src).unwrap().1
        };
        for (k, (x, y)) in a.chunks(2).zip(b.chunks(2)).enumerate() {
            if original[k].abs() >= 2f32.powi(-24) {
                assert_eq!(x, y, "{name}[{k}] = {}", original[k]);
            }
        }
        compared += 1;
    }
    assert!(compared >= 10, "compared only {compared} tensors");
    // The -FLT_MAX attention-mask constant is clamped to -65504 and counted, as
    // onnxconverter-common warns it truncates it.
    assert!(report.values_clamped >= 1, "nothing clamped");
    // RMSNorm patterns and Softmax stay f32 (onnxconverter converts them).
    assert!(report.kept_f32.iter().any(|k| k.op == "Pow"));
    assert!(report.kept_f32.iter().any(|k| k.op == "Softmax"));
}

/// The anchors and ours, run in ONNX Runtime on the same inputs: the
/// dynamic graphs compute the same thing; our fp16 model stays close to f32.
/// (onnxconverter-common 1.16's fp16 model of this legacy Llama export does
/// not load in ONNX Runtime 1.31: it retypes the output of the RMSNorm's
/// `Cast(to=float)` to f16 without changing `to`. Ours rewrites such Casts.)
#[cfg(feature = "ort")]
#[test]
fn anchors_and_ours_agree_in_onnx_runtime() {
    use emogate_tools::verify::{self, BackendKind};
    let dir = tempfile::tempdir().unwrap();
    let model = source();
    let src = fixtures().join("merge/llama.legacy/model.onnx");
    let opts = emogate_models::onnx::SaveOptions::default();
    let dynamic = dir.path().join("dynamic.onnx");
    emogate_models::quantize::quantize_to_file(
        &model,
        &Mode::Int8Dynamic(all_int8()),
        &dynamic,
        &opts,
    )
    .unwrap();
    let fp16 = dir.path().join("fp16.onnx");
    emogate_models::quantize::quantize_to_file(
        &model,
        &Mode::Fp16(Fp16Options::default()),
        &fp16,
        &opts,
    )
    .unwrap();
    let descs = verify::model_inputs(&model, &HashMap::new()).unwrap();
    let sets = verify::random_inputs(&descs, None, 40, 11, 1.0).unwrap();
    let run = |p: &std::path::Path| {
        let mut b = verify::load_backend(BackendKind::Ort, p, &descs, 1).unwrap();
        verify::run_all(b.as_mut(), &sets, "m").unwrap().0
    };
    let names = verify::output_names(&model);
    let f32_out = run(&src);
    let roles = verify::output_roles(&names, None, &f32_out);
    let ours_dyn = run(&dynamic);
    let ort_dyn = run(&fixtures().join("quantize/llama.legacy.ort_dynamic.onnx"));
    let same = verify::compare(&names, &roles, &ort_dyn, &ours_dyn).unwrap();
    assert!(
        same[0].max_abs_err < 1e-5,
        "ours vs quantize_dynamic: {:?}",
        same[0]
    );
    let ours16 = verify::compare(&names, &roles, &f32_out, &run(&fp16)).unwrap();
    assert!(ours16[0].mean_rel_err < 5e-3, "{:?}", ours16[0]);
    assert_eq!(ours16[0].nonfinite_candidate, 0);
}
