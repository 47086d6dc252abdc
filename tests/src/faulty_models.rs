//! Small ONNX models that misbehave on purpose, written at test time, for
//! the end-to-end tests of `emogate run`'s failure handling.
//!
//! Each model takes one audio input, `audio`: the raw waveform of the last
//! [`WINDOW_S`] seconds at [`SAMPLE_RATE`] Hz, fed as a `[1, 16000]` tensor
//! (manifest features `waveform`, layout `NT`), and returns `logits`, one
//! value per reference label ([`LABELS`], output kind `logits`). Each carries
//! its manifest embedded in `metadata_props`, so `emogate run --model FILE`
//! loads it with no sidecar, and each passes the load-time check
//! (`Manifest::check_against`).
//!
//! * [`write_nan_model`]: NaN logits for some windows, finite for others,
//!   decided by the window's mean (see [`write_nan_wav`] for a recording
//!   whose NaN windows are known).
//! * [`write_failing_model`]: every forward pass fails inside the runtime
//!   (tract and ONNX Runtime), after preprocessing succeeded.
//! * [`write_blocking_model`]: loads in about a second, then one forward
//!   pass computes for minutes.
//!
//! No model holds a large initializer: what is big is built by the runtime
//! (a `Range` it folds at load, products it computes per window), so the
//! files stay small (about 1 kB; 120 kB for the blocking model's 2000
//! nodes) and nothing binary is committed.

use std::path::{Path, PathBuf};

use emogate_models::manifest::{
    AudioFeatures, AudioInput, AudioLayout, InputSpec, Manifest, OutputKind, OutputSpec, SCHEMA,
};
use emogate_models::onnx::build::{attr_int, attr_ints, model, node, tensor_raw, value_info};
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use prost::Message;

/// The model input's sample rate (Hz).
pub const SAMPLE_RATE: u32 = 16_000;
/// The model input's window, in seconds.
pub const WINDOW_S: f64 = 1.0;
/// Samples in one window: the length of the `audio` input.
pub const WINDOW_SAMPLES: usize = 16_000;
/// The manifest name of the audio input.
pub const INPUT: &str = "audio";
/// The graph output and manifest output every model here returns.
pub const OUTPUT: &str = "logits";
/// The reference model's labels (models/reference/emogate-ref.onnx), in its order.
pub const LABELS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];
/// The hop the NaN model's manifest asks for (ms): windows then start on
/// whole seconds, which is what [`write_nan_wav`]'s pattern is laid out for.
pub const NAN_HOP_MS: f64 = 1000.0;
/// What [`write_nan_model`] writes, in the folder the caller gives.
pub const NAN_MODEL_FILE: &str = "faulty-nan.onnx";
/// What [`write_nan_wav`] writes.
pub const NAN_WAV_FILE: &str = "faulty-nan.wav";
/// What [`write_failing_model`] writes.
pub const FAILING_MODEL_FILE: &str = "faulty-failing.onnx";
/// What [`write_blocking_model`] and [`write_matmul_chain`] write.
pub const BLOCKING_MODEL_FILE: &str = "faulty-blocking.onnx";

/// The blocking model's matrices are `BLOCKING_SIZE × BLOCKING_SIZE` f32
/// (16 MiB each): one product is 2·2048³ ≈ 17 GFLOP, about 0.2 s on one
/// core of this project's build machines (tract reaches ~95 GFLOP/s there),
/// while the process stays near 400 MB resident. Larger matrices would
/// need fewer nodes but more memory, and tract runs them at a lower rate.
pub const BLOCKING_SIZE: usize = 2048;
/// Matrix products in one forward pass of [`write_blocking_model`]: 3 to 5
/// minutes on one thread there, so a machine twice as fast still blocks
/// for over a minute, far past any `--stall-ms` a test would use, while
/// tract still plans the 2000 nodes in about a second.
pub const BLOCKING_LINKS: usize = 1000;

/// ONNX opset of every model here: the last one where `ReduceMean` takes
/// its axes as an attribute, and old enough for ONNX Runtime 1.19.
const OPSET: i64 = 17;
const FLOAT: i32 = DataType::Float as i32;
const INT64: i32 = DataType::Int64 as i32;

/// The DC offset of [`write_nan_wav`]'s seconds: far from 0 so a window's
/// mean keeps its sign even if the engine cuts it a little off the second.
const DC: f32 = 0.25;
/// The tone on top of the DC, so the signal is audio-like and not constant.
const TONE_AMPLITUDE: f32 = 0.5;
/// A whole number of periods per second: any one-second window of the tone
/// sums to zero, so the window's mean is the DC alone.
const TONE_HZ: f32 = 440.0;
/// `logits = sqrt(mean) · NAN_WEIGHTS + NAN_BIAS`: distinct per label so a
/// finite output is not a flat, meaningless softmax. The bias is also the
/// failing model's.
const NAN_WEIGHTS: [f32; 7] = [1.0, -0.5, 0.25, 2.0, -1.0, 0.5, 0.0];
const NAN_BIAS: [f32; 7] = [0.1, 0.2, -0.3, 0.0, 0.4, -0.1, 0.3];
/// The failing model's logits length is `FAILING_BASE_LEN + floor(min(mean|x|, 1))`,
/// i.e. 8 or 9: never 1 and never 7, so it never broadcasts against the
/// 7-wide bias.
const FAILING_BASE_LEN: i64 = 8;

/// The manifest every model here carries: one waveform input, `logits`
/// over the reference labels.
pub fn manifest(name: &str, hop_ms: Option<f64>) -> Manifest {
    Manifest {
        schema: SCHEMA.into(),
        name: name.into(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
        inputs: vec![InputSpec::Audio(AudioInput {
            name: INPUT.into(),
            sample_rate: SAMPLE_RATE,
            window_s: WINDOW_S,
            layout: AudioLayout::Nt,
            features: AudioFeatures::Waveform,
        })],
        outputs: vec![OutputSpec {
            name: OUTPUT.into(),
            kind: OutputKind::Logits,
        }],
        hop_ms,
    }
}

/// Writes `dir/faulty-nan.onnx`: `logits = sqrt(mean(audio)) · w + b`.
///
/// A window whose samples average to a negative value gives seven NaN
/// logits (the square root of a negative number); a window with a mean ≥ 0
/// gives seven finite logits. Silence (a zero-filled window) is finite.
/// Its manifest's default hop is [`NAN_HOP_MS`] (1 s); with
/// [`write_nan_wav`]'s recording, window `k` (the `k`-th second, ending at
/// `k + 1` s) is NaN exactly when that second was marked NaN.
pub fn write_nan_model(dir: &Path) -> PathBuf {
    let mut g = Graph::default();
    let mean = g.op(
        "ReduceMean",
        &[INPUT],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let root = g.op("Sqrt", &[&mean], vec![]);
    let weights = g.f32s("weights", &[1, 7], &NAN_WEIGHTS);
    let bias = g.f32s("bias", &[1, 7], &NAN_BIAS);
    let scaled = g.op("Mul", &[&root, &weights], vec![]);
    g.output("Add", &[&scaled, &bias], vec![]);
    g.save(
        &dir.join(NAN_MODEL_FILE),
        &manifest("faulty-nan", Some(NAN_HOP_MS)),
        &[Some(1), Some(LABELS.len() as i64)],
    )
}

/// Writes `dir/faulty-nan.wav`: mono 16-bit PCM at 16 kHz, one second per
/// entry of `nan_seconds`, each a 440 Hz tone (amplitude 0.5) on a DC offset
/// of −0.25 where the entry is `true` and +0.25 where it is `false`.
///
/// At a hop of 1 s (the NaN model's default, [`NAN_HOP_MS`]) the engine's
/// window `k` covers second `k`, whose mean is its DC offset (the tone has
/// whole periods in any second), so [`write_nan_model`] gives NaN logits for
/// window `k` exactly when `nan_seconds[k]`, and finite logits otherwise.
/// The mean keeps its sign while a window is off the second boundary by
/// less than half a second. Other hops are not covered: a window across
/// two seconds of opposite sign averages to about 0.
pub fn write_nan_wav(dir: &Path, nan_seconds: &[bool]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(NAN_WAV_FILE);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = hound::WavWriter::create(&path, spec)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    for &nan in nan_seconds {
        let dc = if nan { -DC } else { DC };
        for i in 0..WINDOW_SAMPLES {
            let t = i as f32 / SAMPLE_RATE as f32;
            let v = dc + TONE_AMPLITUDE * (std::f32::consts::TAU * TONE_HZ * t).sin();
            out.write_sample((v * i16::MAX as f32).round() as i16)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }
    out.finalize()
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Writes `dir/faulty-failing.onnx`: every forward pass fails in the
/// runtime, on tract and on ONNX Runtime, for any input in [-1, 1].
///
/// The graph makes a vector of length `8 + floor(min(mean|audio|, 1))`
/// (8 or 9) with `Range` and adds it to a `[1, 7]` bias. The length
/// depends on the samples, so neither runtime can see at load that it never
/// broadcasts against 7; the `Add` refuses it when it runs. The output is
/// declared `[1, n]` with a symbolic `n`, which the load-time manifest
/// check accepts. So in the engine preprocessing succeeds and the error is
/// the model's (`AffectModel::run` returns a backend `Run` error); nothing
/// reaches postprocessing.
pub fn write_failing_model(dir: &Path) -> PathBuf {
    let mut g = Graph::default();
    let magnitude = g.op("Abs", &[INPUT], vec![]);
    // A scalar: Range takes rank-0 bounds.
    let mean = g.op(
        "ReduceMean",
        &[&magnitude],
        vec![attr_ints("axes", &[0, 1]), attr_int("keepdims", 0)],
    );
    let one = g.f32s("one", &[], &[1.0]);
    let capped = g.op("Min", &[&mean, &one], vec![]);
    let floor = g.op("Floor", &[&capped], vec![]);
    let steps = g.op("Cast", &[&floor], vec![attr_int("to", INT64 as i64)]);
    let base = g.i64s("base_len", &[], &[FAILING_BASE_LEN]);
    let len = g.op("Add", &[&steps, &base], vec![]);
    let zero = g.i64s("zero", &[], &[0]);
    let step = g.i64s("step", &[], &[1]);
    let range = g.op("Range", &[&zero, &len, &step], vec![]);
    let values = g.op("Cast", &[&range], vec![attr_int("to", FLOAT as i64)]);
    let bias = g.f32s("bias", &[1, 7], &NAN_BIAS);
    g.output("Add", &[&values, &bias], vec![]);
    g.save(
        &dir.join(FAILING_MODEL_FILE),
        &manifest("faulty-failing", None),
        &[Some(1), None],
    )
}

/// Writes `dir/faulty-blocking.onnx`: [`write_matmul_chain`] with
/// [`BLOCKING_LINKS`] products of [`BLOCKING_SIZE`]² matrices, about
/// 17 TFLOP per window. Loading takes about a second (tract, one thread;
/// about 115 MB resident); every forward pass, whatever the audio, then
/// computes for 3–5 minutes on one thread (measured: 0.18–0.25 s a
/// product; one window of `emogate run` took 5 min on a busy 2-core
/// machine), which leaves room for a machine twice as fast to still block
/// for over a minute. The process stays near 400 MB resident while it
/// computes. Its logits are whatever the products give; nobody waits for
/// them.
pub fn write_blocking_model(dir: &Path) -> PathBuf {
    write_matmul_chain(dir, BLOCKING_SIZE, BLOCKING_LINKS)
}

/// Writes `dir/faulty-blocking.onnx` with `links` matrix products of
/// `size × size` matrices per forward pass (each 2·`size`³ flops): the
/// blocking model, or a short chain to time one product with.
///
/// `A = tanh(sin(0, 1, …, n²−1) · (mean(audio) + 1.5) / √n)` as an n × n
/// matrix; then `Bᵢ₊₁ = tanh(Bᵢ · Bᵢ)`, and the logits are the first row's
/// first seven values. The sine table is a `Range` the runtime folds at
/// load (n² floats in memory, a few bytes in the file). The gain depends on
/// the samples, so no product can be folded at load. Each product squares
/// the whole previous matrix, so no runtime can narrow the chain to the
/// one row it returns (it can for the last product alone); `tanh` keeps
/// the values in [-1, 1], away from overflow and from slow subnormal
/// arithmetic.
pub fn write_matmul_chain(dir: &Path, size: usize, links: usize) -> PathBuf {
    let n = size as i64;
    let mut g = Graph::default();
    let mean = g.op(
        "ReduceMean",
        &[INPUT],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let offset = g.f32s("offset", &[], &[1.5]);
    let gain = g.op("Add", &[&mean, &offset], vec![]);
    let start = g.f32s("start", &[], &[0.0]);
    let limit = g.f32s("limit", &[], &[(n * n) as f32]);
    let delta = g.f32s("delta", &[], &[1.0]);
    let ramp = g.op("Range", &[&start, &limit, &delta], vec![]);
    let table = g.op("Sin", &[&ramp], vec![]);
    let shape = g.i64s("square", &[2], &[n, n]);
    let square = g.op("Reshape", &[&table, &shape], vec![]);
    let norm = g.f32s("norm", &[], &[1.0 / (n as f32).sqrt()]);
    let normed = g.op("Mul", &[&square, &norm], vec![]);
    let a = g.op("Mul", &[&normed, &gain], vec![]);
    let mut b = g.op("Tanh", &[&a], vec![]);
    for _ in 0..links {
        let square = g.op("MatMul", &[&b, &b], vec![]);
        b = g.op("Tanh", &[&square], vec![]);
    }
    let starts = g.i64s("starts", &[2], &[0, 0]);
    let ends = g.i64s("ends", &[2], &[1, LABELS.len() as i64]);
    g.output("Slice", &[&b, &starts, &ends], vec![]);
    g.save(
        &dir.join(BLOCKING_MODEL_FILE),
        &manifest("faulty-blocking", None),
        &[Some(1), Some(LABELS.len() as i64)],
    )
}

/// A graph under construction: nodes get numbered output names, constants
/// become initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// Appends an `op` node; returns the name of its one output.
    fn op(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let name = format!("{op}_{}", self.nodes.len());
        let out = format!("{name}_out");
        self.push(&name, op, inputs, &out, attributes);
        out
    }

    /// Appends the node that produces the graph output.
    fn output(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) {
        let name = format!("{op}_{}", self.nodes.len());
        self.push(&name, op, inputs, OUTPUT, attributes);
    }

    fn push(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        out: &str,
        attributes: Vec<AttributeProto>,
    ) {
        let mut n = node(name, op, inputs, &[out]);
        n.attribute = attributes;
        self.nodes.push(n);
    }

    fn f32s(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor_raw(name, FLOAT, dims, raw));
        name.to_string()
    }

    fn i64s(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor_raw(name, INT64, dims, raw));
        name.to_string()
    }

    /// Wraps the graph in a model with `manifest` embedded and writes it to
    /// `path` (through a temp file and a rename, like every model the tools
    /// write), creating the folder.
    fn save(self, path: &Path, manifest: &Manifest, output_dims: &[Option<i64>]) -> PathBuf {
        let graph = GraphProto {
            name: Some(manifest.name.clone()),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(
                INPUT,
                FLOAT,
                &[Some(1), Some(WINDOW_SAMPLES as i64)],
            )],
            output: vec![value_info(OUTPUT, FLOAT, output_dims)],
            ..Default::default()
        };
        let mut proto = model(graph, OPSET);
        manifest.embed(&mut proto);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        emogate_tools::atomic::write_bytes(path, &proto.encode_to_vec())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_path_buf()
    }
}
