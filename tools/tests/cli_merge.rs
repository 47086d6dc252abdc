//! `emogate-convert merge`, driven as a user would: the real binary, on
//! copies of the committed PEFT/ONNX fixtures in a temp dir.
//!
//! Failure tests check three things: a non-zero exit, a message on stderr
//! that names the file and the field at fault, and that nothing was left
//! behind under the output's name (`<out>`, `<out>.data`, temp files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::proto::ModelProto;
use emogate_tools::synth::write_safetensors;
use prost::Message;
use safetensors::SafeTensors;

const BIN: &str = env!("CARGO_BIN_EXE_emogate-convert");

#[path = "../../tests/support/runner.rs"]
mod runner;

/// The converter as a command (through `EMOGATE_TEST_RUNNER` under emulation).
fn convert() -> Command {
    runner::command(BIN)
}
/// Weights of the fixtures' layer-0 and layer-1 gate_proj (tests/fixtures/merge/INDEX.json).
const LEGACY_GATE0: &str = "onnx::MatMul_598";
const DYNAMO_GATES: [&str; 2] = ["val_131", "val_237"];

// ---------------------------------------------------------------- helpers

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge")
}

/// Copies the regular files of a fixture folder, except `skip`.
fn copy_dir(src: &Path, dst: &Path, skip: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !skip.iter().any(|s| name == **s) {
            std::fs::copy(entry.path(), dst.join(&name)).unwrap();
        }
    }
    dst.to_path_buf()
}

/// A temp dir holding copies of one model dir and one adapter, plus an
/// empty `out/` folder for the output.
struct Case {
    tmp: tempfile::TempDir,
    model: PathBuf,
    adapter: PathBuf,
}

impl Case {
    fn new(model_dir: &str, adapter: &str) -> Self {
        Self::without(model_dir, adapter, &[])
    }

    /// Like `new`, leaving the named files of the model dir out.
    fn without(model_dir: &str, adapter: &str, skip: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model = copy_dir(&fixtures().join(model_dir), &tmp.path().join("model"), skip)
            .join("model.onnx");
        let adapter = copy_dir(
            &fixtures().join("adapters").join(adapter),
            &tmp.path().join("adapter"),
            &[],
        );
        std::fs::create_dir(tmp.path().join("out")).unwrap();
        Case {
            tmp,
            model,
            adapter,
        }
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out/merged.onnx")
    }

    fn weights(&self) -> PathBuf {
        self.adapter.join("adapter_model.safetensors")
    }

    fn config(&self) -> PathBuf {
        self.adapter.join("adapter_config.json")
    }

    /// `merge --model M --adapter A --out OUT` plus `extra`.
    fn merge(&self, extra: &[&str]) -> Output {
        self.merge_to(&self.out(), extra)
    }

    fn merge_to(&self, out: &Path, extra: &[&str]) -> Output {
        let mut cmd = convert();
        cmd.arg("merge")
            .arg("--model")
            .arg(&self.model)
            .arg("--adapter")
            .arg(&self.adapter)
            .arg("--out")
            .arg(out)
            .arg("--no-sync")
            .args(extra);
        cmd.output().expect("run emogate-convert")
    }

    /// The output and its side file are absent, and `out/` holds nothing
    /// (no temp file survived either).
    fn assert_no_output(&self) {
        let out = self.out();
        assert!(!out.exists(), "{} was left behind", out.display());
        assert!(
            !data_of(&out).exists(),
            "{} was left behind",
            data_of(&out).display()
        );
        assert_eq!(
            list(out.parent().unwrap()),
            Vec::<String>::new(),
            "leftovers in the output folder"
        );
    }
}

fn data_of(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".data");
    out.with_file_name(name)
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run whose stderr contains every one of `needles`.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got {:?}\nstdout: {}\nstderr: {err}",
        o.status,
        stdout(o)
    );
    assert!(err.starts_with("error: "), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks `{needle}`:\n{err}");
    }
}

fn assert_success(o: &Output) {
    assert!(
        o.status.success(),
        "merge failed: {:?}\nstderr: {}",
        o.status,
        stderr(o)
    );
}

/// The adapter's tensors as (key, shape, little-endian f32 bytes), in file order.
fn read_f32_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
            (k, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn edit_config(case: &Case, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let text = std::fs::read_to_string(case.config()).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(case.config(), serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Rewrites one initializer's external_data `location` in a dynamo model.
fn set_location(model: &Path, tensor: &str, location: &str) {
    let mut proto = ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == tensor)
        .expect("tensor");
    let entry = t
        .external_data
        .iter_mut()
        .find(|e| e.key() == "location")
        .expect("location entry");
    entry.value = Some(location.to_string());
    std::fs::write(model, proto.encode_to_vec()).unwrap();
}

/// Every file of the given folders, with its bytes.
fn snapshot(dirs: &[&Path]) -> BTreeMap<PathBuf, Vec<u8>> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn values(model: &OnnxModel, name: &str) -> Vec<f32> {
    let t = model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .expect("initializer");
    model.float_values(t).unwrap().1
}

// ----------------------------------------------------- refused adapters

#[test]
fn wrong_shape_adapter_is_refused() {
    let case = Case::new("llama.legacy", "llama-plain");
    // Layer 0's lora_A becomes [4, 63]: the graph's gate_proj has in=64.
    let mut tensors = read_f32_tensors(&case.weights());
    let a = tensors
        .iter_mut()
        .find(|t| t.0.contains("layers.0.mlp.gate_proj.lora_A"))
        .unwrap();
    a.1 = vec![4, 63];
    a.2 =
        a.2.chunks(64 * 4)
            .flat_map(|row| row[..63 * 4].to_vec())
            .collect();
    write_safetensors(&case.weights(), &tensors).unwrap();

    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &[
            "model.onnx",
            "adapter module `model.layers.0.mlp.gate_proj`",
            "in=63",
            "in=64",
            LEGACY_GATE0,
        ],
    );
    case.assert_no_output();
}

#[test]
fn adapter_module_missing_from_graph_is_listed() {
    let case = Case::new("llama.legacy", "llama-plain");
    let mut tensors = read_f32_tensors(&case.weights());
    for t in &mut tensors {
        t.0 = t.0.replace("layers.1.", "layers.7.");
    }
    write_safetensors(&case.weights(), &tensors).unwrap();

    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &[
            "model.onnx",
            "adapter modules not found in the graph: model.layers.7.mlp.gate_proj",
        ],
    );
    // Layer 0 did resolve and must not be reported as missing.
    assert!(!stderr(&o).contains("layers.0"), "{}", stderr(&o));
    case.assert_no_output();
}

#[test]
fn truncated_safetensors_is_refused() {
    let case = Case::new("llama.legacy", "llama-plain");
    let bytes = std::fs::read(case.weights()).unwrap();
    std::fs::write(case.weights(), &bytes[..bytes.len() - 100]).unwrap();
    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &[
            "adapter_model.safetensors",
            "safetensors header",
            "not a valid safetensors file",
        ],
    );
    case.assert_no_output();
}

#[test]
fn garbage_safetensors_header_is_refused() {
    let case = Case::new("llama.legacy", "llama-plain");
    let mut bytes = 40u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{ this is not a safetensors header !!!!!");
    std::fs::write(case.weights(), &bytes).unwrap();
    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &[
            "adapter_model.safetensors",
            "safetensors header",
            "not a valid safetensors file",
        ],
    );
    case.assert_no_output();
}

/// A config field emogate must refuse rather than merge approximately.
fn assert_config_field_refused(field: &str, value: serde_json::Value, why: &str) {
    let case = Case::new("llama.legacy", "llama-plain");
    edit_config(&case, |c| {
        c.insert(field.to_string(), value);
    });
    let o = case.merge(&[]);
    assert_fails_with(&o, &["adapter_config.json", &format!(": {field}: "), why]);
    case.assert_no_output();
}

#[test]
fn use_qalora_is_refused_by_name() {
    assert_config_field_refused("use_qalora", serde_json::json!(true), "is true");
}

#[test]
fn layer_replication_is_refused_by_name() {
    assert_config_field_refused("layer_replication", serde_json::json!([[0, 1]]), "is set");
}

#[test]
fn trained_base_bias_is_refused_by_name() {
    assert_config_field_refused("bias", serde_json::json!("all"), "is \"all\"");
}

// ------------------------------------------------------- refused models

#[test]
fn truncated_onnx_is_refused() {
    let case = Case::new("llama.legacy", "llama-plain");
    let bytes = std::fs::read(&case.model).unwrap();
    std::fs::write(&case.model, &bytes[..bytes.len() / 2]).unwrap();
    let o = case.merge(&[]);
    assert_fails_with(&o, &["model.onnx", "not a valid ONNX model", "truncated"]);
    case.assert_no_output();
}

#[test]
fn missing_external_data_file_is_refused() {
    let case = Case::without("llama.dynamo", "llama-plain", &["model.onnx.data"]);
    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &[
            "model.onnx",
            "external_data.location",
            "`model.onnx.data` cannot be opened",
        ],
    );
    case.assert_no_output();
}

/// A dynamo model whose first gate_proj weight points at `location`; the
/// data file exists both in the model's folder and one level up, so only
/// the escape can be the reason for a refusal.
fn escaping_case(location: impl FnOnce(&Path) -> String) -> (Case, String) {
    let case = Case::new("llama.dynamo", "llama-plain");
    let outside = case.tmp.path().join("model.onnx.data");
    std::fs::copy(case.model.with_file_name("model.onnx.data"), &outside).unwrap();
    let location = location(&outside);
    set_location(&case.model, DYNAMO_GATES[0], &location);
    (case, location)
}

#[test]
fn external_location_with_parent_dir_is_refused() {
    let (case, location) = escaping_case(|_| "../model.onnx.data".into());
    let o = case.merge(&[]);
    let field = format!("tensor `{}` external_data.location", DYNAMO_GATES[0]);
    assert_fails_with(
        &o,
        &[
            "model.onnx",
            &field,
            &format!("`{location}` leaves the model's folder"),
        ],
    );
    case.assert_no_output();
}

#[test]
fn external_location_absolute_path_is_refused() {
    let (case, location) = escaping_case(|outside| outside.to_str().unwrap().to_string());
    assert!(location.starts_with('/'));
    let o = case.merge(&[]);
    let field = format!("tensor `{}` external_data.location", DYNAMO_GATES[0]);
    assert_fails_with(
        &o,
        &[&field, &format!("`{location}` leaves the model's folder")],
    );
    case.assert_no_output();
}

#[test]
fn external_location_symlink_out_of_the_folder_is_refused() {
    // A plain name, but a symlink that leads outside the model's folder.
    let (case, _) = escaping_case(|_| "model.onnx.data".into());
    let inside = case.model.with_file_name("model.onnx.data");
    std::fs::remove_file(&inside).unwrap();
    std::os::unix::fs::symlink(case.tmp.path().join("model.onnx.data"), &inside).unwrap();
    let o = case.merge(&[]);
    assert_fails_with(
        &o,
        &["external_data.location", "outside the model's folder"],
    );
    case.assert_no_output();
}

#[test]
fn out_equal_to_model_is_refused_and_input_unchanged() {
    let case = Case::new("llama.legacy", "llama-plain");
    let before = snapshot(&[case.model.parent().unwrap()]);
    let o = case.merge_to(&case.model, &[]);
    assert_fails_with(&o, &["model.onnx", "output path", "is the input model"]);
    assert_eq!(
        snapshot(&[case.model.parent().unwrap()]),
        before,
        "the model folder must be untouched"
    );
}

#[test]
fn out_equal_to_models_data_file_is_refused_and_input_unchanged() {
    let case = Case::new("llama.dynamo", "llama-plain");
    let data = case.model.with_file_name("model.onnx.data");
    let before = snapshot(&[case.model.parent().unwrap()]);
    let o = case.merge_to(&data, &[]);
    assert_fails_with(
        &o,
        &["model.onnx.data", "output path", "external data file"],
    );
    assert_eq!(
        snapshot(&[case.model.parent().unwrap()]),
        before,
        "the model folder must be untouched"
    );
}

#[test]
fn share_base_data_outside_the_base_folder_is_refused() {
    let case = Case::new("llama.dynamo", "llama-plain");
    let o = case.merge(&["--share-base-data"]);
    assert_fails_with(
        &o,
        &[
            "merged.onnx",
            "--share-base-data",
            "must be in the input's folder",
        ],
    );
    case.assert_no_output();
}

// ------------------------------------------------------------ successes

#[test]
fn report_json_has_an_entry_per_module() {
    let case = Case::new("llama.legacy", "llama-plain");
    let report = case.tmp.path().join("r.json");
    let o = case.merge(&["--report", report.to_str().unwrap()]);
    assert_success(&o);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let modules = json["modules"].as_array().expect("modules array");
    let names: Vec<&str> = modules
        .iter()
        .map(|m| m["module"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "model.layers.0.mlp.gate_proj",
            "model.layers.1.mlp.gate_proj"
        ]
    );
    for m in modules {
        assert!(
            m["weight"]
                .as_str()
                .is_some_and(|w| w.starts_with("onnx::MatMul_")),
            "{m}"
        );
        assert_eq!(m["rank"], 4, "{m}");
        assert_eq!(m["scale"], 2.0, "lora_alpha 8 / r 4: {m}");
        let rel = m["relative_change"].as_f64().expect("relative_change");
        assert!(rel > 0.0 && rel < 1.0, "{m}");
    }
    assert_eq!(modules[0]["weight"], LEGACY_GATE0);
}

#[test]
fn stdout_prints_a_table() {
    let case = Case::new("llama.legacy", "llama-plain");
    let o = case.merge(&[]);
    assert_success(&o);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "header, one row per module, `wrote …`:\n{text}"
    );
    for column in ["module", "kind", "weight", "rank", "scale"] {
        assert!(
            lines[0].contains(column),
            "header lacks {column}: {}",
            lines[0]
        );
    }
    assert!(
        lines[1].starts_with("model.layers.0.mlp.gate_proj") && lines[1].contains(LEGACY_GATE0),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("lora") && lines[1].contains("2.0000"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("model.layers.1.mlp.gate_proj"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], format!("wrote {}", case.out().display()));
}

#[test]
fn inputs_are_byte_identical_after_a_merge() {
    let case = Case::new("llama.dynamo", "llama-save_score");
    let inputs = [case.model.parent().unwrap(), case.adapter.as_path()];
    let before = snapshot(&inputs);
    assert_eq!(
        before.len(),
        4,
        "model, its data file, adapter config and weights"
    );
    assert_success(&case.merge(&[]));
    assert_eq!(snapshot(&inputs), before);
}

#[test]
fn dynamo_merge_writes_out_data_and_peft_values() {
    let case = Case::new("llama.dynamo", "llama-plain");
    assert_success(&case.merge(&[]));
    assert_eq!(
        list(case.out().parent().unwrap()),
        ["merged.onnx", "merged.onnx.data"]
    );
    let merged = OnnxModel::load(case.out()).unwrap();
    let base = OnnxModel::load(&case.model).unwrap();
    for t in &merged.graph().initializer {
        if let Some(ext) = merged.external_data(t).unwrap() {
            assert_eq!(
                ext.location,
                "merged.onnx.data",
                "`{}` must not point at the input's data",
                t.name()
            );
            assert!(
                t.raw_data.is_none(),
                "`{}` is both external and raw",
                t.name()
            );
        }
    }
    // Layer 0 equals PEFT's merged weight (stored [in, out], PEFT's is [out, in]).
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected/llama-plain.json")).unwrap(),
    )
    .unwrap();
    let peft: Vec<f32> = expected["merged_gate_proj_layer0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let got = values(&merged, DYNAMO_GATES[0]);
    let (out, inp) = (128, 64);
    for o in 0..out {
        for i in 0..inp {
            let (g, p) = (got[i * out + o], peft[o * inp + i]);
            assert!((g - p).abs() < 1e-5, "[{o},{i}]: emogate {g} vs PEFT {p}");
        }
    }
    // Everything that is not a gate_proj weight is unchanged.
    for t in &base.graph().initializer {
        if !DYNAMO_GATES.contains(&t.name()) && base.float_type(t).is_ok() {
            assert_eq!(
                values(&merged, t.name()),
                values(&base, t.name()),
                "`{}` changed",
                t.name()
            );
        }
    }
}

#[test]
fn share_base_data_writes_only_changed_tensors() {
    let case = Case::new("llama.dynamo", "llama-plain");
    let base_dir = case.model.parent().unwrap();
    let shared = base_dir.join("shared.onnx");
    assert_success(&case.merge_to(&shared, &["--share-base-data"]));
    assert_success(&case.merge(&[]));

    let base_data = std::fs::metadata(base_dir.join("model.onnx.data"))
        .unwrap()
        .len();
    let shared_data = std::fs::metadata(data_of(&shared)).unwrap().len();
    let full_data = std::fs::metadata(data_of(&case.out())).unwrap().len();
    // Two 64x128 f32 gate_proj weights are 64 KiB; the base data is ~316 KiB.
    assert!(
        shared_data <= 2 * 64 * 128 * 4 + 4096,
        "shared side file is {shared_data} bytes"
    );
    assert!(
        shared_data * 4 < base_data,
        "{shared_data} vs base {base_data}"
    );
    assert!(
        full_data >= base_data,
        "a normal merge copies everything: {full_data} vs {base_data}"
    );

    let shared_model = OnnxModel::load(&shared).expect("shared output loads");
    let full_model = OnnxModel::load(case.out()).unwrap();
    for name in DYNAMO_GATES {
        let t = shared_model
            .graph()
            .initializer
            .iter()
            .find(|t| t.name() == name)
            .unwrap();
        assert_eq!(
            shared_model.external_data(t).unwrap().unwrap().location,
            "shared.onnx.data"
        );
        assert_eq!(
            values(&shared_model, name),
            values(&full_model, name),
            "`{name}`"
        );
    }
    // Unchanged tensors keep pointing at the base's data file.
    let unchanged = shared_model
        .graph()
        .initializer
        .iter()
        .filter_map(|t| shared_model.external_data(t).unwrap())
        .filter(|e| e.location == "model.onnx.data")
        .count();
    assert!(unchanged > 0, "no tensor shares the base's data");
}

#[test]
fn help_mentions_merge() {
    let o = convert().arg("--help").output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("merge"), "{text}");
    assert!(text.contains("Merge a PEFT LoRA adapter"), "{text}");
}
