//! One function per parser: the bytes of one fuzz input in, the parser run
//! as the product runs it, its result checked against [`crate::rule`]
//! (through `super::rule` so that the regression test can include this file
//! next to its own copy of `rule.rs`). A parser that takes a path gets the
//! bytes as a file in `dir`, a scratch folder the caller owns.
//!
//! Each function is named after its fuzz target (`fuzz_targets/NAME.rs`)
//! and its folders of seeds (`seeds/NAME/`) and regressions
//! (`regressions/NAME/`).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use emogate_models::manifest::Manifest;
use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::linear::LinearIndex;
use emogate_models::onnx::params::ParamIndex;

use super::rule::{expect_message, expect_names_file};

/// A target: the scratch folder and one input.
pub type Target = fn(&Path, &[u8]);

/// Every target, by name, for the regression test.
pub const TARGETS: &[(&str, Target)] = &[
    ("onnx_model", onnx_model),
    ("onnx_external", onnx_external),
    ("safetensors", safetensors),
    ("adapter_config", adapter_config),
    ("adapter_folder", adapter_folder),
    ("manifest", manifest),
    ("wav", wav),
    ("y4m", y4m),
    ("png", png),
    ("npz", npz),
    ("config_toml", config_toml),
    ("source_spec", source_spec),
    ("output_spec", output_spec),
    ("http_head", http_head),
    ("control", control),
    ("onnx_graph", super::graph::onnx_graph),
];

/// Writes `bytes` to `dir/name`, replacing what an earlier input left.
pub fn scratch(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("the scratch folder is writable");
    path
}

/// Removes `dir/name` if an earlier input left it.
fn clear(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}

fn names_file(result: Result<(), impl Display>, file: &Path) {
    if let Err(e) = result {
        expect_names_file(&e.to_string(), file);
    }
}

/// Splits one input into two parts: a little-endian `u16` gives the first
/// part's length (modulo what is there), the rest is the second part.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let (len, rest) = data.split_at(2);
    let n = usize::from(u16::from_le_bytes([len[0], len[1]])) % (rest.len() + 1);
    rest.split_at(n)
}

/// An ONNX model file alone (no side file).
pub fn onnx_model(dir: &Path, data: &[u8]) {
    clear(dir, "model.onnx.data");
    let path = scratch(dir, "model.onnx", data);
    exercise_onnx(&path);
}

/// An ONNX model plus `model.onnx.data`, its external data (the input is
/// split by [`split2`]).
pub fn onnx_external(dir: &Path, data: &[u8]) {
    let (model, side) = split2(data);
    scratch(dir, "model.onnx.data", side);
    let path = scratch(dir, "model.onnx", model);
    exercise_onnx(&path);
}

/// What the tools do with a model: load it (external references checked),
/// index its graph, linear layers and parameters, read its initializers
/// and its embedded manifest.
pub fn exercise_onnx(path: &Path) {
    let model = match OnnxModel::load(path) {
        Ok(m) => m,
        Err(e) => return expect_names_file(&e.to_string(), path),
    };
    let graph = model.graph();
    let linear = LinearIndex::build(graph);
    for site in 0..linear.sites.len().min(16) {
        let _ = linear.describe(site);
    }
    let params = ParamIndex::build(graph);
    let _ = params.modules();
    for tensor in model.all_initializers().into_iter().take(64) {
        names_file(model.float_values(tensor).map(drop), path);
        names_file(model.raw_bytes(tensor).map(drop), path);
    }
    match Manifest::from_model(&model) {
        Ok(Some(manifest)) => names_file(manifest.check_against(&model), path),
        Ok(None) => {}
        Err(e) => expect_names_file(&e.to_string(), path),
    }
}

/// A safetensors checkpoint: mapped, indexed, every tensor read.
pub fn safetensors(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "model.safetensors", data);
    match emogate_models::checkpoint::Checkpoint::open(&path) {
        Ok(checkpoint) => {
            for i in 0..checkpoint.tensors.len().min(64) {
                names_file(checkpoint.read(i).map(drop), &path);
            }
        }
        Err(e) => expect_names_file(&e.to_string(), &path),
    }
}

/// A real adapter's weights (`seeds/adapter_model.safetensors`), so that
/// `adapter_config` inputs reach past the weights file.
const SEED_ADAPTER_WEIGHTS: &[u8] = include_bytes!("../seeds/adapter_model.safetensors");

/// `adapter_config.json` next to a real adapter's weights.
pub fn adapter_config(dir: &Path, data: &[u8]) {
    let folder = dir.join("adapter");
    std::fs::create_dir_all(&folder).expect("the scratch folder is writable");
    scratch(&folder, "adapter_model.safetensors", SEED_ADAPTER_WEIGHTS);
    scratch(&folder, "adapter_config.json", data);
    load_adapter(&folder);
}

/// An adapter folder as a whole: `adapter_config.json` and
/// `adapter_model.safetensors` (the input split by [`split2`]).
pub fn adapter_folder(dir: &Path, data: &[u8]) {
    let (config, weights) = split2(data);
    let folder = dir.join("adapter");
    std::fs::create_dir_all(&folder).expect("the scratch folder is writable");
    scratch(&folder, "adapter_model.safetensors", weights);
    scratch(&folder, "adapter_config.json", config);
    load_adapter(&folder);
}

fn load_adapter(folder: &Path) {
    if let Err(e) = emogate_models::peft::Adapter::load(folder) {
        let message = e.to_string();
        super::rule::record(&message);
        assert!(
            message.contains("adapter_config.json")
                || message.contains("adapter_model.safetensors")
                || message.contains(&folder.display().to_string()),
            "error names neither adapter file: {message}"
        );
    }
}

/// A sidecar manifest (`manifest.json`).
pub fn manifest(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "manifest.json", data);
    names_file(Manifest::from_file(&path).map(drop), &path);
}

/// A WAV file, as replay reads it, mixed down to mono.
pub fn wav(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "audio.wav", data);
    match emogate_device::audio::read_wav(&path) {
        Ok(wav) => drop(wav.to_mono()),
        Err(e) => expect_names_file(&e.to_string(), &path),
    }
}

/// A Y4M clip: opened (frame offsets indexed), its first and last frames
/// decoded.
pub fn y4m(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "clip.y4m", data);
    read_clip(&path);
}

/// A PNG still image.
pub fn png(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "still.png", data);
    read_clip(&path);
}

fn read_clip(path: &Path) {
    use emogate_device::clip::{Clip, ClipReader};
    let clip = match Clip::open(path, 30.0) {
        Ok(c) => Arc::new(c),
        Err(e) => return expect_names_file(&e.to_string(), path),
    };
    let _ = (clip.period(), clip.duration());
    let count = clip.frame_count();
    let mut reader = match ClipReader::new(clip) {
        Ok(r) => r,
        Err(e) => return expect_names_file(&e.to_string(), path),
    };
    for k in [0, 1, count.saturating_sub(1), count] {
        names_file(reader.frame(k).map(drop), path);
    }
}

/// An `.npz` archive (`emogate-convert verify --inputs`, `eval`).
pub fn npz(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "inputs.npz", data);
    names_file(emogate_tools::npz::read_npz(&path).map(drop), &path);
}

/// The TOML file `emogate run --config` reads.
pub fn config_toml(dir: &Path, data: &[u8]) {
    let path = scratch(dir, "emogate.toml", data);
    match emogate_engine::config::RunConfig::load(&path) {
        Ok(config) => drop(config.changed_keys(&config)),
        Err(e) => expect_names_file(&e.to_string(), &path),
    }
}

/// `--video` / `--audio` source specs.
pub fn source_spec(_dir: &Path, data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = emogate_device::spec::parse_video(spec) {
        expect_message(&e.to_string());
    }
    if let Err(e) = emogate_device::spec::parse_audio(spec) {
        expect_message(&e.to_string());
    }
    let _ = emogate_device::spec::is_live(spec);
}

/// `--output` specs.
pub fn output_spec(_dir: &Path, data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = emogate_engine::sink::OutputSpec::parse(spec) {
        expect_message(&e.to_string());
    }
}

/// An HTTP request head (and its SSE `Last-Event-ID`), as the HTTP sink's
/// server reads it.
pub fn http_head(_dir: &Path, data: &[u8]) {
    let _ = emogate_engine::sink::http::parse_request_head(data, "e3f1");
}

/// A control request (Unix socket line or `POST /control` body).
pub fn control(_dir: &Path, data: &[u8]) {
    if let Err(e) = emogate_engine::control::Command::parse(data) {
        expect_message(&e);
    }
}
