//! `emogate-convert quantize` and `verify`, driven as a user would: the
//! real binary on copies of the committed models in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Output;

use emogate_models::onnx::proto::ModelProto;
use emogate_models::onnx::proto::tensor_proto::DataType;
use prost::Message;

const BIN: &str = env!("CARGO_BIN_EXE_emogate-convert");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[path = "../../tests/support/runner.rs"]
mod runner;

fn run(args: &[&str]) -> Output {
    runner::command(BIN)
        .args(args)
        .output()
        .expect("run emogate-convert")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temp copy of the reference model (graph + external data).
fn reference_copy(dir: &Path) -> PathBuf {
    let src = root().join("models/reference");
    for f in ["emogate-ref.onnx", "emogate-ref.onnx.data"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir.join("emogate-ref.onnx")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn int8_on_external_data_writes_a_smaller_model_and_leaves_the_input_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference_copy(dir.path());
    let before: Vec<Vec<u8>> = ["emogate-ref.onnx", "emogate-ref.onnx.data"]
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    let out = dir.path().join("out/int8.onnx");
    let report = dir.path().join("report.json");
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--int8",
        "--report",
        s(&report),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("tensors converted: 23"), "{stdout}");
    assert!(stdout.contains("size: "), "{stdout}");
    assert!(
        stdout.contains("int8 (QDQ, per-channel, symmetric)"),
        "{stdout}"
    );
    assert!(out.exists() && dir.path().join("out/int8.onnx.data").exists());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let (wb, wa) = (
        r["weight_bytes_before"].as_u64().unwrap(),
        r["weight_bytes_after"].as_u64().unwrap(),
    );
    assert!(
        wa * 100 <= wb * 30,
        "int8 weights {wa} B are more than 30% of {wb} B"
    );
    assert!(r["file_bytes_after"].as_u64().unwrap() < r["file_bytes_before"].as_u64().unwrap());
    let after: Vec<Vec<u8>> = ["emogate-ref.onnx", "emogate-ref.onnx.data"]
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert!(before == after, "the input changed");

    // verify: passes with sensible thresholds, fails (status 2) with impossible ones.
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--random",
        "24",
        "--min-top1",
        "0.9",
        "--max-rel-err",
        "0.05",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("probabilities") && stdout.contains("PASS"),
        "{stdout}"
    );
    assert!(stdout.contains("from the manifest"), "{stdout}");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--random",
        "4",
        "--max-rel-err",
        "1e-9",
    ]);
    let (stdout, _) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("FAIL tract output `probabilities`: mean relative error"),
        "{stdout}"
    );

    // An already quantized model is refused, and nothing is written.
    let again = dir.path().join("again.onnx");
    let o = run(&["quantize", "--model", s(&out), "--out", s(&again), "--fp16"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("already") && stderr.contains("int8.onnx"),
        "{stderr}"
    );
    assert!(!again.exists() && !dir.path().join("again.onnx.data").exists());
}

#[test]
fn fp16_report_counts_clamped_values_and_keeps_norms_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/merge/llama.legacy/model.onnx");
    let out = dir.path().join("fp16.onnx");
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--fp16",
        "--keep-f32",
        "score",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // The -FLT_MAX attention-mask constant becomes -65504.
    assert!(stdout.contains("values clamped: 1;"), "{stdout}");
    assert!(stdout.contains("normalization pattern"), "{stdout}");
    assert!(
        stdout.contains("Softmax (precision-sensitive op)"),
        "{stdout}"
    );
    assert!(stdout.contains("--keep-f32 score"), "{stdout}");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--random",
        "16",
        "--min-top1",
        "0.99",
        "--max-rel-err",
        "5e-3",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
}

#[test]
fn verify_reads_npz_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/merge/swiglu_gemm.legacy/model.onnx");
    let out = dir.path().join("fp16.onnx");
    assert!(
        run(&["quantize", "--model", s(&model), "--out", s(&out), "--fp16"])
            .status
            .success()
    );
    let npz = root().join("tests/fixtures/quantize/swiglu_inputs.npz");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--inputs",
        s(&npz),
        "--min-top1",
        "0.99",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("swiglu_inputs.npz"), "{stdout}");
    let r = dir.path().join("r.json");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--inputs",
        s(&npz),
        "--report",
        s(&r),
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r).unwrap()).unwrap();
    assert_eq!(v["samples"], 64);
    // An .npz whose arrays do not fit the model is refused by name.
    let other = root().join("tests/fixtures/quantize/qdq_reference.npz");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--inputs",
        s(&other),
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("no array named `x`"), "{stderr}");
}

#[test]
fn module_selection_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/merge/llama.dynamo/model.onnx");
    let tensors = |extra: &[&str]| -> Vec<String> {
        let out = dir.path().join("sel.onnx");
        let report = dir.path().join("sel.json");
        let mut args = vec![
            "quantize",
            "--model",
            s(&model),
            "--out",
            s(&out),
            "--int8",
            "--report",
            s(&report),
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{:?}", text(&o));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["module"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let only = tensors(&["--modules", "gate_proj"]);
    assert_eq!(only.len(), 2, "{only:?}");
    assert!(only.iter().all(|m| m.ends_with("mlp.gate_proj")));
    let all = tensors(&[]);
    let without = tensors(&["--exclude-modules", "gate_proj"]);
    assert_eq!(without.len(), all.len() - 2);
    assert!(without.iter().all(|m| !m.contains("gate_proj")));

    // A pattern that matches nothing is an error naming it.
    let out = dir.path().join("none.onnx");
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--int8",
        "--exclude-modules",
        "gate_prj",
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("--exclude-modules `gate_prj`: matches no module"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mlp.gate_proj"),
        "the message lists real paths: {stderr}"
    );
    assert!(!out.exists());
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--fp16",
        "--keep-f32",
        "NoSuchOp",
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("--keep-f32 `NoSuchOp`: matches no op type"),
        "{stderr}"
    );
}

#[test]
fn quantizes_a_merged_model_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("tests/fixtures/merge");
    let merged = dir.path().join("merged.onnx");
    let o = run(&[
        "merge",
        "--model",
        s(&fx.join("llama.dynamo/model.onnx")),
        "--adapter",
        s(&fx.join("adapters/llama-plain")),
        "--out",
        s(&merged),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let out = dir.path().join("merged-int8.onnx");
    let o = run(&[
        "quantize",
        "--model",
        s(&merged),
        "--out",
        s(&out),
        "--int8",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(m.model.layers.1.mlp.gate_proj)"),
        "{stdout}"
    );
    assert!(dir.path().join("merged-int8.onnx.data").exists());
    let o = run(&[
        "verify",
        "--reference",
        s(&merged),
        "--candidate",
        s(&out),
        "--random",
        "16",
        "--max-rel-err",
        "0.05",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn calibrated_int8_rounds_with_gptq() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/merge/llama.dynamo/model.onnx");
    let out = dir.path().join("gptq.onnx");
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--int8",
        "--calibrate",
        "8",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // The 14 linear layers of the two blocks and the score head (the embedding has no GPTQ).
    assert_eq!(stdout.matches("symmetric, GPTQ)").count(), 15, "{stdout}");
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--random",
        "16",
        "--max-rel-err",
        "0.05",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--fp16",
        "--calibrate",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--calibrate applies to --int8 only"));
}

#[test]
fn unsupported_weight_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/merge/llama.legacy/model.onnx");
    let mut proto = ModelProto::decode(std::fs::read(&src).unwrap().as_slice()).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "onnx::MatMul_598")
        .expect("the layer-0 gate_proj weight");
    // The same values as bfloat16 (upper halves of the f32 bits).
    let raw = t.raw_data.take().unwrap();
    let bf: Vec<u8> = raw.chunks(4).flat_map(|c| [c[2], c[3]]).collect();
    t.raw_data = Some(bf.into());
    t.data_type = Some(DataType::Bfloat16 as i32);
    let model = dir.path().join("bf16.onnx");
    std::fs::write(&model, proto.encode_to_vec()).unwrap();
    for mode in ["--int8", "--fp16", "--int8-dynamic"] {
        let out = dir.path().join("out.onnx");
        let o = run(&["quantize", "--model", s(&model), "--out", s(&out), mode]);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{mode}");
        assert!(
            stderr.contains("initializer `onnx::MatMul_598` data_type")
                && stderr.contains("bfloat16"),
            "{mode}: {stderr}"
        );
        assert!(!out.exists());
    }
}

#[cfg(feature = "ort")]
#[test]
fn verify_runs_both_backends() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        panic!("the ort feature needs ORT_DYLIB_PATH (see .ci/run)");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = reference_copy(dir.path());
    let out = dir.path().join("dyn.onnx");
    let o = run(&[
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--int8-dynamic",
    ]);
    let (stdout, _) = text(&o);
    assert!(o.status.success());
    assert!(
        stdout.contains(
            "warning: int8-dynamic writes DynamicQuantizeLinear + MatMulInteger: TensorRT"
        ),
        "{stdout}"
    );
    let o = run(&[
        "verify",
        "--reference",
        s(&model),
        "--candidate",
        s(&out),
        "--random",
        "16",
        "--backend",
        "both",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\ntract ") && stdout.contains("\nort "),
        "{stdout}"
    );
}
