//! `emogate-bench-model`: times one model's stages (preprocessing,
//! inference, postprocessing), our log-mel against librosa's, adapter
//! switches, and ONNX Runtime's Python API on the same model and threads,
//! all in one run so the ratios compare like with like.
//!
//! A benchmark harness, not part of the product: `emogate` itself never
//! runs Python.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use emogate_engine::backend_choice::BackendSettings;
use emogate_engine::post::PostConfig;
use emogate_infer::affect::Switching;
use emogate_infer::{AffectModel, Featurizer, ModelSpec, parse_adapter_spec};
use emogate_media::{Frame, PixelLayout};

/// Time preprocessing, inference and postprocessing on a model.
#[derive(Parser)]
#[command(name = "emogate-bench-model", version, about, long_about)]
struct Cli {
    /// The ONNX model (with an emogate manifest, or give --manifest).
    model: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
    /// Timed windows.
    #[arg(long, default_value_t = 200)]
    windows: usize,
    /// Python with onnxruntime (and librosa), to time ONNX Runtime's Python
    /// API and librosa on the same model and threads in the same run;
    /// `none` skips them.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Instead of the stage timings: where tract's time goes, operator by
    /// operator, with tract's own Softmax and RmsNorm and with ours
    /// (alternating), beside ONNX Runtime's profiler (Python API, same
    /// model and threads). The model runs on tract as it is (no adapter).
    #[arg(long)]
    ops: bool,
    /// With --ops: feed a batch of this many items (each input repeated
    /// along its leading axis, which must be 1 in the manifest's shapes),
    /// on both runtimes; for a model with a free batch axis.
    #[arg(long, default_value_t = 1, requires = "ops")]
    batch: usize,
}

/// How to load the model.
#[derive(clap::Args)]
struct LoadArgs {
    /// Sidecar manifest (emogate.manifest/1 JSON) for models that carry none.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// A gate_proj adapter to merge at load, as NAME=DIR (PEFT folder); repeatable.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// The adapter active at start (default: the base model).
    #[arg(long)]
    active: Option<String>,
    /// How switches are made: slots or replan (as `emogate run --switch-by`).
    /// With adapters, the per-window cost of slots against replan is
    /// measured too.
    #[arg(long, default_value = "slots")]
    switch_by: Switching,
    /// tract (pure Rust CPU) or ort (ONNX Runtime; build with --features ort).
    #[arg(long, default_value = "tract")]
    backend: String,
    /// Threads for inference.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// ONNX Runtime execution providers in order of preference.
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

impl LoadArgs {
    fn settings(&self) -> BackendSettings {
        BackendSettings {
            backend: Some(self.backend.clone()),
            threads: Some(self.threads),
            ep: Some(self.ep.clone()),
            ep_strict: false,
            ort_lib: self.ort_lib.clone(),
            trt_cache: None,
        }
    }

    fn spec(&self, model: PathBuf) -> Result<ModelSpec> {
        let adapters = self
            .adapters
            .iter()
            .map(|a| parse_adapter_spec(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelSpec {
            path: model,
            manifest: self.manifest.clone(),
            backend: self.settings().choice()?,
            adapters,
            active: self.active.clone(),
            switching: self.switch_by,
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.ops {
        return bench_ops(&cli.model, &cli.load, cli.windows, cli.batch, &cli.python);
    }
    bench(cli.model, cli.load, cli.windows, &cli.python)
}

/// The pipeline's default hop, by which the benchmark's audio slides.
const HOP_S: f64 = 0.25;
/// Untimed windows first.
const WARMUP: usize = 5;
/// numpy, librosa and numba start helper threads that spin and inflate
/// the Python side's times on a loaded machine; pinned to one thread,
/// the comparison is like with like (our side is single-threaded too).
const PINNED_PYTHON: [(&str, &str); 4] = [
    ("OMP_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
    ("NUMBA_NUM_THREADS", "1"),
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(model: PathBuf, load: LoadArgs, windows: usize, python: &str) -> Result<()> {
    let mut affect = AffectModel::load(&load.spec(model.clone())?)
        .with_context(|| format!("loading {}", model.display()))?;
    let manifest = affect.manifest().clone();
    let mut featurizer = Featurizer::new(&manifest)?;
    let mut events = emogate_engine::event::EventBuilder::new(&manifest, PostConfig::default())?;
    // Synthetic media of the manifest's sizes: a moving gradient, a chirp.
    let pixels: Vec<u8> = (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect();
    let frame = Frame::new(320, 240, PixelLayout::Rgb8, pixels, 0)?;
    // The audio stream slides by one pipeline hop per window, as in a run,
    // so the log-mel reuses the frames the previous window computed.
    let window_samples = featurizer.audio().map_or(0, |a| a.window_samples());
    let hop_samples = featurizer
        .audio()
        .map_or(0, |a| (f64::from(a.sample_rate) * HOP_S).round() as usize);
    let stream: Vec<f32> = (0..window_samples + (windows + WARMUP) * hop_samples)
        .map(|i| (i as f32 * 0.05 + (i as f32 * 1e-5).powi(2)).sin() * 0.3)
        .collect();
    let audio_at = |i: usize| &stream[i * hop_samples..i * hop_samples + window_samples];
    let (mut pre, mut inf, mut post) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = WARMUP;
    let started = Instant::now();
    for i in 0..windows + warmup {
        let t0 = Instant::now();
        let inputs = featurizer.build(Some(&frame), (window_samples > 0).then(|| audio_at(i)))?;
        let t1 = Instant::now();
        let outputs = affect.run(&inputs)?;
        let t2 = Instant::now();
        events.estimate(&outputs, Duration::from_millis(i as u64 * 250))?;
        let t3 = Instant::now();
        if i >= warmup {
            pre.push((t1 - t0).as_secs_f64() * 1e3);
            inf.push((t2 - t1).as_secs_f64() * 1e3);
            post.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "model: {} ({} backend, {} thread(s))",
        model.display(),
        affect.backend_name(),
        load.settings().threads()
    );
    println!("{:<14} {:>10} {:>10}", "stage (ms)", "p50", "p99");
    for (name, v) in [
        ("preprocess", &mut pre),
        ("inference", &mut inf),
        ("postprocess", &mut post),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<14} {:>10.3} {:>10.3}",
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    println!("windows/s: {:.1}", (windows + warmup) as f64 / total);
    println!("peak RSS: {:.1} MB", peak_rss_mb());
    if let Some(audio_spec) = featurizer.audio().cloned() {
        let windows_of_stream: Vec<&[f32]> = (0..windows + warmup).map(audio_at).collect();
        bench_log_mel(&audio_spec, &windows_of_stream, warmup, python)?;
    }
    bench_switch(&mut affect)?;
    bench_slot_cost(
        &model,
        &load,
        &featurizer_inputs(&mut featurizer, &frame, &stream[..window_samples])?,
    )?;
    if python != "none" {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tools/bench/ort_python_bench.py"
        );
        let out = std::process::Command::new(python)
            .envs(PINNED_PYTHON)
            .args([script, "--model"])
            .arg(&model)
            .args([
                "--threads",
                &load.settings().threads().to_string(),
                "--runs",
                &windows.to_string(),
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                    .context("reading the Python benchmark's JSON")?;
                let py = v["p50_ms"].as_f64().unwrap_or(f64::NAN);
                let ours = percentile(&inf, 0.5);
                println!(
                    "onnxruntime {} (Python API) inference p50: {py:.3} ms; {} / onnxruntime = {:.2}x",
                    v["version"].as_str().unwrap_or("?"),
                    affect.backend_name(),
                    ours / py
                );
            }
            Ok(o) => println!(
                "onnxruntime Python comparison skipped: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
            ),
            Err(e) => println!("onnxruntime Python comparison skipped: cannot run `{python}`: {e}"),
        }
    }
    Ok(())
}

/// Our log-mel against librosa's (same parameters, same machine, same
/// run: `tools/bench/logmel_librosa.py`), on a stream sliding by one hop
/// per window: computed in full each window ([`MelSpec`]) and
/// incrementally ([`MelStream`], the pipeline's). Medians with the 10th
/// and 90th percentiles.
///
/// [`MelSpec`]: emogate_infer::pre::mel::MelSpec
/// [`MelStream`]: emogate_infer::pre::mel_stream::MelStream
fn bench_log_mel(
    spec: &emogate_models::manifest::AudioInput,
    windows: &[&[f32]],
    warmup: usize,
    python: &str,
) -> Result<()> {
    use emogate_infer::pre::mel::{MelConfig, MelSpec};
    use emogate_infer::pre::mel_stream::MelStream;
    let emogate_models::manifest::AudioFeatures::LogMel(m) = &spec.features else {
        return Ok(());
    };
    let Some(first) = windows.first() else {
        return Ok(());
    };
    let config = MelConfig::from_manifest(m, spec.sample_rate);
    let mut out = vec![0f32; m.n_mels * m.frames(first.len())];
    let mut full = MelSpec::new(config.clone())?;
    let mut full_ms = Vec::with_capacity(windows.len());
    for (i, w) in windows.iter().enumerate() {
        let t = Instant::now();
        full.compute_into(w, &mut out)?;
        if i >= warmup {
            full_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut stream = MelStream::new(config)?;
    let mut inc_ms = Vec::with_capacity(windows.len());
    for (i, w) in windows.iter().enumerate() {
        let t = Instant::now();
        stream.compute_into(w, &mut out)?;
        if i >= warmup {
            inc_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    full_ms.sort_by(f64::total_cmp);
    inc_ms.sort_by(f64::total_cmp);
    let spread = |v: &[f64]| {
        format!(
            "{:.4} ms [p10 {:.4}, p90 {:.4}]",
            percentile(v, 0.5),
            percentile(v, 0.1),
            percentile(v, 0.9)
        )
    };
    let stats = stream.stats();
    println!(
        "log-mel ({:.1} s window, {:.0} ms hop, {} windows): full {}; incremental {} \
         ({} of {} frames computed); full / incremental = {:.1}x",
        spec.window_s,
        HOP_S * 1e3,
        inc_ms.len(),
        spread(&full_ms),
        spread(&inc_ms),
        stats.frames_computed,
        stats.frames_computed + stats.frames_reused,
        percentile(&full_ms, 0.5) / percentile(&inc_ms, 0.5)
    );
    if python == "none" {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/logmel_librosa.py"
    );
    match std::process::Command::new(python)
        .envs(PINNED_PYTHON)
        .args([script, "--runs", &inc_ms.len().to_string()])
        .output()
    {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).context("reading librosa's timing")?;
            let theirs = v["median_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "librosa {} (the window in full, helper threads pinned to 1): {theirs:.3} ms [p10 {:.3}, p90 {:.3}]; \
                 librosa / emogate: {:.1}x full, {:.1}x incremental",
                v["librosa"].as_str().unwrap_or("?"),
                v["p10_ms"].as_f64().unwrap_or(f64::NAN),
                v["p90_ms"].as_f64().unwrap_or(f64::NAN),
                theirs / percentile(&full_ms, 0.5),
                theirs / percentile(&inc_ms, 0.5)
            );
        }
        _ => println!(
            "librosa comparison skipped (`{python}` lacks librosa: pip install -r tools/fixtures/requirements-engine.txt)"
        ),
    }
    Ok(())
}

/// One window's inputs.
fn featurizer_inputs(
    featurizer: &mut Featurizer,
    frame: &Frame,
    audio: &[f32],
) -> Result<Vec<emogate_infer::Tensor>> {
    Ok(featurizer.build(Some(frame), (!audio.is_empty()).then_some(audio))?)
}

/// Per-operator times of tract's plan with its own Softmax and RmsNorm
/// (`stock`) and with ours (the default), in alternating rounds so drift in
/// the machine's speed hits both alike, then ONNX Runtime's profile.
fn bench_ops(
    model: &std::path::Path,
    load: &LoadArgs,
    runs: usize,
    batch: usize,
    python: &str,
) -> Result<()> {
    use emogate_infer::backend::InputFact;
    use emogate_infer::backend::tract::{TractBackend, TractOptions};
    use std::collections::BTreeMap;
    let inputs = match load.manifest.is_some() || has_manifest(model)? {
        true => {
            let affect = AffectModel::load(&load.spec(model.to_path_buf())?)
                .with_context(|| format!("loading {}", model.display()))?;
            let mut featurizer = Featurizer::new(affect.manifest())?;
            let pixels: Vec<u8> = (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect();
            let frame = Frame::new(320, 240, PixelLayout::Rgb8, pixels, 0)?;
            let samples = featurizer.audio().map_or(0, |a| a.window_samples());
            let audio: Vec<f32> = (0..samples)
                .map(|i| (i as f32 * 0.05).sin() * 0.3)
                .collect();
            featurizer_inputs(&mut featurizer, &frame, &audio)?
        }
        // Not an affect model (a face detector, say): seeded values of the
        // graph's input shapes.
        false => graph_inputs(model)?,
    };
    anyhow::ensure!(batch >= 1, "--batch: at least 1");
    let inputs: Vec<emogate_infer::Tensor> = inputs
        .into_iter()
        .map(|t| {
            if batch == 1 {
                return Ok(t);
            }
            anyhow::ensure!(
                t.shape.first() == Some(&1),
                "--batch {batch}: an input of shape {:?} has no leading axis of 1 to repeat",
                t.shape
            );
            let values = t
                .as_f32()
                .context("--batch: inputs are float32")?
                .repeat(batch);
            let mut shape = t.shape.clone();
            shape[0] = batch;
            Ok(emogate_infer::Tensor::f32(shape, values))
        })
        .collect::<Result<_>>()?;
    let facts: Vec<InputFact> = inputs
        .iter()
        .map(|t| InputFact::F32(t.shape.clone()))
        .collect();
    let load_tract = |stock_ops| {
        let options = TractOptions {
            inputs: Some(facts.clone()),
            threads: load.settings().threads(),
            stock_ops,
        };
        TractBackend::load_with(model, &options)
            .with_context(|| format!("loading {} into tract", model.display()))
    };
    let mut plans = [
        ("tract's ops", load_tract(true)?),
        ("ours", load_tract(false)?),
    ];
    // Per plan: operator → per-round medians summed over its nodes; runs.
    let mut ops: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    let mut run_ms: [Vec<f64>; 2] = Default::default();
    // Our plan's nodes: (name, operator) → per-round medians.
    let mut nodes: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        for (i, (_, plan)) in plans.iter_mut().enumerate() {
            let profile = plan.profile(&inputs, WARMUP, runs.div_ceil(ROUNDS))?;
            let mut by_op: BTreeMap<String, f64> = BTreeMap::new();
            for node in &profile.nodes {
                *by_op.entry(node.op.clone()).or_default() += node.micros;
                if i == 1 {
                    nodes
                        .entry((node.name.clone(), node.op.clone()))
                        .or_default()
                        .push(node.micros);
                }
            }
            for (op, us) in by_op {
                let v = ops[i].entry(op).or_default();
                v.resize(round, 0.0);
                v.push(us);
            }
            run_ms[i].extend(profile.runs_ms);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    println!(
        "model: {} on tract, {} thread(s), {} timed runs per plan in {ROUNDS} alternating rounds",
        model.display(),
        load.settings().threads(),
        run_ms[0].len()
    );
    for (i, (name, _)) in plans.iter().enumerate() {
        run_ms[i].sort_by(f64::total_cmp);
        println!(
            "run with {name}: p50 {:.3} ms (p10 {:.3}, p90 {:.3})",
            percentile(&run_ms[i], 0.5),
            percentile(&run_ms[i], 0.1),
            percentile(&run_ms[i], 0.9)
        );
    }
    let mut names: Vec<&String> = ops[0].keys().chain(ops[1].keys()).collect();
    names.sort();
    names.dedup();
    let totals: Vec<f64> = (0..2)
        .map(|i| ops[i].values().map(|v| median(v)).sum())
        .collect();
    let cell = |i: usize, op: &String| ops[i].get(op).map_or(0.0, |v| median(v));
    names.sort_by(|a, b| (cell(0, b) + cell(1, b)).total_cmp(&(cell(0, a) + cell(1, a))));
    println!(
        "{:<24} {:>12} {:>7} {:>12} {:>7}",
        "tract operator", "tract's µs", "share", "ours µs", "share"
    );
    for op in names {
        let (a, b) = (cell(0, op), cell(1, op));
        println!(
            "{op:<24} {a:>12.1} {:>6.1}% {b:>12.1} {:>6.1}%",
            100.0 * a / totals[0],
            100.0 * b / totals[1]
        );
    }
    println!(
        "{:<24} {:>12.1} {:>7} {:>12.1}",
        "sum of nodes", totals[0], "", totals[1]
    );
    let mut slowest: Vec<(f64, &(String, String))> =
        nodes.iter().map(|(k, v)| (median(v), k)).collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("slowest nodes of our plan:");
    println!("{:>10}  {:<20} node", "µs", "operator");
    for (us, (name, op)) in slowest.iter().take(15) {
        println!("{us:>10.1}  {op:<20} {name}");
    }
    if python == "none" {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/ort_python_bench.py"
    );
    let run_python = |profile: bool| -> Result<Option<serde_json::Value>> {
        let mut command = std::process::Command::new(python);
        command
            .envs(PINNED_PYTHON)
            .args([script, "--model"])
            .arg(model)
            .args([
                "--threads",
                &load.settings().threads().to_string(),
                "--runs",
                &runs.to_string(),
                "--batch",
                &batch.to_string(),
            ]);
        if profile {
            command.arg("--profile");
        }
        match command.output() {
            Ok(o) if o.status.success() => Ok(Some(
                serde_json::from_slice(&o.stdout).context("reading the Python benchmark's JSON")?,
            )),
            Ok(o) => {
                println!(
                    "onnxruntime comparison skipped: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("failed")
                );
                Ok(None)
            }
            Err(e) => {
                println!("onnxruntime comparison skipped: cannot run `{python}`: {e}");
                Ok(None)
            }
        }
    };
    let (Some(plain), Some(profiled)) = (run_python(false)?, run_python(true)?) else {
        return Ok(());
    };
    let ort_p50 = plain["p50_ms"].as_f64().unwrap_or(f64::NAN);
    println!(
        "onnxruntime {} (Python API) run p50 {ort_p50:.3} ms; tract with tract's ops / onnxruntime = {:.2}x, with ours = {:.2}x",
        plain["version"].as_str().unwrap_or("?"),
        percentile(&run_ms[0], 0.5) / ort_p50,
        percentile(&run_ms[1], 0.5) / ort_p50,
    );
    let mut ort_ops: Vec<(String, f64)> = profiled["ops"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    ort_ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let ort_total: f64 = ort_ops.iter().map(|(_, v)| v).sum();
    println!(
        "onnxruntime's profiler (run p50 {:.3} ms with it on: it adds a cost per node, so read the shares):",
        profiled["profiled_p50_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!("{:<30} {:>10} {:>7}", "onnxruntime operator", "µs", "share");
    for (op, us) in &ort_ops {
        println!("{op:<30} {us:>10.1} {:>6.1}%", 100.0 * us / ort_total);
    }
    Ok(())
}

/// Whether the model carries an emogate manifest.
fn has_manifest(model: &std::path::Path) -> Result<bool> {
    let onnx = emogate_models::onnx::OnnxModel::load(model)
        .with_context(|| format!("reading {}", model.display()))?;
    Ok(emogate_models::manifest::Manifest::from_model(&onnx)
        .with_context(|| format!("reading the manifest of {}", model.display()))?
        .is_some())
}

/// Seeded values in -1..1 for each f32 graph input, of its static shape
/// (a named dimension counts 1).
fn graph_inputs(model: &std::path::Path) -> Result<Vec<emogate_infer::Tensor>> {
    use emogate_models::onnx::proto::{tensor_proto::DataType, tensor_shape_proto, type_proto};
    let onnx = emogate_models::onnx::OnnxModel::load(model)
        .with_context(|| format!("reading {}", model.display()))?;
    let mut state = 0x9e37_79b9_u32;
    let mut tensors = Vec::new();
    for input in emogate_models::onnx::runtime_inputs(onnx.graph()) {
        let name = input.name();
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            anyhow::bail!("{}: graph input `{name}` is not a tensor", model.display());
        };
        anyhow::ensure!(
            t.elem_type() == DataType::Float as i32,
            "{}: graph input `{name}` is not float32; --ops feeds float32 inputs to models without a manifest",
            model.display()
        );
        let shape: Vec<usize> = t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v as usize,
                _ => 1,
            })
            .collect();
        let values = (0..shape.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as f32 / u32::MAX as f32 * 2.0 - 1.0
            })
            .collect();
        tensors.push(emogate_infer::Tensor::f32(shape, values));
    }
    Ok(tensors)
}

/// What the adapter slot graph costs per window: the model with the
/// adapters switched by slots (the default) and by re-planning, both
/// running the active adapter, timed alternately on the same inputs so
/// that drift in the machine's speed hits both alike.
fn bench_slot_cost(
    model: &std::path::Path,
    load: &LoadArgs,
    inputs: &[emogate_infer::Tensor],
) -> Result<()> {
    if load.adapters.is_empty() {
        return Ok(());
    }
    let mut slots = AffectModel::load(&load.spec(model.to_path_buf())?)?;
    let mut replan = AffectModel::load(&ModelSpec {
        switching: Switching::Replan,
        ..load.spec(model.to_path_buf())?
    })?;
    if !slots.switches_by_slots() {
        println!("slot graph: not used (the adapters do not fit; see the log)");
        return Ok(());
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..(WARMUP + 300) {
        let t = Instant::now();
        slots.run(inputs)?;
        let ta = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        replan.run(inputs)?;
        let tb = t.elapsed().as_secs_f64() * 1e3;
        if round >= WARMUP {
            a.push(ta);
            b.push(tb);
        }
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    println!(
        "inference with adapter slots: p50 {:.3} ms (p10 {:.3}, p90 {:.3}); merged (replan): p50 {:.3} ms (p10 {:.3}, p90 {:.3}); slots/merged = {:.2}× ({} windows each, alternating)",
        percentile(&a, 0.5),
        percentile(&a, 0.1),
        percentile(&a, 0.9),
        percentile(&b, 0.5),
        percentile(&b, 0.1),
        percentile(&b, 0.9),
        percentile(&a, 0.5) / percentile(&b, 0.5),
        a.len()
    );
    Ok(())
}

/// Median time to switch between the loaded adapters and back to the base
/// model (slot factors bound, or a merge and a new plan; see --switch-by).
fn bench_switch(affect: &mut AffectModel) -> Result<()> {
    let names = affect.adapter_names();
    if names.is_empty() {
        return Ok(());
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        for name in &names {
            times.push(affect.switch(Some(name))?.as_secs_f64() * 1e3);
        }
        times.push(affect.switch(None)?.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "adapter switch p50: {:.1} ms, max {:.1} ms ({} switches over {})",
        percentile(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN),
        times.len(),
        names.join(", ")
    );
    Ok(())
}

fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills a plain struct for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}
