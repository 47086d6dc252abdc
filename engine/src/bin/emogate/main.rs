//! `emogate`: the on-device emotion engine.

mod run;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use emogate_engine::features::Featurizer;
use emogate_engine::model::{AffectModel, BackendChoice, ModelSpec, parse_adapter_spec};
use emogate_engine::post::PostConfig;
use emogate_models::merge::resolve::LinearIndex;

/// Offline, real-time emotion engine for edge devices.
///
/// Runs an affect model (ONNX with an emogate manifest) on video frames and
/// audio, on tract (pure Rust CPU, the default) or ONNX Runtime with
/// TensorRT / CUDA / CPU execution providers, and publishes emotions with
/// capture timestamps.
#[derive(Parser)]
#[command(name = "emogate", version, about, long_about)]
struct Cli {
    /// Log details (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the cameras and microphones emogate can open, with the spec to
    /// pass as --video / --audio.
    Devices,
    /// Print a model's manifest, inputs and outputs, parameter count and gate_proj modules.
    Info {
        model: PathBuf,
        /// Sidecar manifest for models that carry none.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Time preprocessing, inference and postprocessing on a model.
    Bench {
        model: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Timed windows.
        #[arg(long, default_value_t = 200)]
        windows: usize,
        /// Python with onnxruntime, to time ONNX Runtime's Python API on the
        /// same model and threads in the same run; `none` skips it.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Stream video and/or audio (cameras, microphones, GStreamer pipelines
    /// or recordings) through a model and publish emotions.
    Run(Box<run::RunArgs>),
}

/// How to load the model.
#[derive(Args)]
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
    /// tract (pure Rust CPU) or ort (ONNX Runtime; build with --features ort).
    #[arg(long, default_value = "tract")]
    backend: String,
    /// Threads for inference.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// ONNX Runtime execution providers in order of preference.
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Fail instead of falling back when a requested execution provider is unavailable.
    #[arg(long)]
    ep_strict: bool,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// TensorRT engine and timing cache folder.
    #[arg(long)]
    trt_cache: Option<PathBuf>,
}

impl LoadArgs {
    fn spec(&self, model: PathBuf) -> Result<ModelSpec> {
        let adapters = self
            .adapters
            .iter()
            .map(|a| parse_adapter_spec(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelSpec {
            path: model,
            manifest: self.manifest.clone(),
            backend: self.backend_choice()?,
            adapters,
            active: self.active.clone(),
        })
    }

    fn backend_choice(&self) -> Result<BackendChoice> {
        match self.backend.as_str() {
            "tract" => Ok(BackendChoice::Tract {
                threads: self.threads,
            }),
            #[cfg(feature = "ort")]
            "ort" => {
                use emogate_engine::backend::ort::{OrtOptions, parse_providers};
                Ok(BackendChoice::Ort(OrtOptions {
                    library: self.ort_lib.clone(),
                    providers: parse_providers(&self.ep)?,
                    strict: self.ep_strict,
                    trt_fp16: true,
                    trt_cache_dir: self.trt_cache.clone(),
                    threads: self.threads,
                }))
            }
            #[cfg(not(feature = "ort"))]
            "ort" => {
                let _ = (&self.ep, self.ep_strict, &self.ort_lib, &self.trt_cache);
                bail!(
                    "--backend ort: this emogate was built without ONNX Runtime support; rebuild with `--features ort`"
                )
            }
            other => bail!("--backend `{other}`: expected tract or ort"),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default = if cli.verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Devices => {
            devices();
            Ok(())
        }
        Command::Info { model, manifest } => info(model, manifest),
        Command::Bench {
            model,
            load,
            windows,
            python,
        } => bench(model, load, windows, &python),
        Command::Run(args) => run::run(*args),
    }
}

fn devices() {
    let list = emogate_device::list::list_devices();
    for (title, items) in [
        ("cameras", &list.cameras),
        ("microphones", &list.microphones),
    ] {
        if items.is_empty() {
            println!("{title}: none found");
            continue;
        }
        println!("{title}:");
        for d in items {
            println!("  {:<24} {}", d.spec, d.name);
            for line in &d.details {
                println!("  {:<24}   {line}", "");
            }
        }
    }
    for note in &list.notes {
        println!("note: {note}");
    }
    if !cfg!(feature = "gstreamer") {
        println!("note: GStreamer sources (gst:PIPELINE) need a build with --features gstreamer");
    }
}

fn info(model: PathBuf, manifest: Option<PathBuf>) -> Result<()> {
    let onnx = emogate_models::onnx::OnnxModel::load(&model)
        .with_context(|| format!("loading {}", model.display()))?;
    let manifest = match manifest {
        Some(path) => Some(emogate_models::manifest::Manifest::from_file(&path)?),
        None => emogate_models::manifest::Manifest::from_model(&onnx)?,
    };
    println!("model: {}", model.display());
    match &manifest {
        Some(m) => {
            m.check_against(&onnx)?;
            println!("manifest:\n{}", serde_json::to_string_pretty(m)?);
        }
        None => {
            println!("manifest: none (give one with --manifest or `emogate-convert manifest set`)")
        }
    }
    let graph = onnx.graph();
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let dims = |v: &emogate_models::onnx::proto::ValueInfoProto| {
        emogate_models::manifest::value_dims(v)
            .map(|d| {
                d.iter()
                    .map(|x| x.map(|x| x.to_string()).unwrap_or("?".into()))
                    .collect::<Vec<_>>()
                    .join("×")
            })
            .unwrap_or_else(|| "?".into())
    };
    println!("inputs:");
    for i in graph.input.iter().filter(|i| !inits.contains(i.name())) {
        println!("  {} [{}]", i.name(), dims(i));
    }
    println!("outputs:");
    for o in &graph.output {
        println!("  {} [{}]", o.name(), dims(o));
    }
    let params: i64 = onnx
        .all_initializers()
        .iter()
        .map(|t| t.dims.iter().product::<i64>())
        .sum();
    println!("parameters: {params}");
    let index = LinearIndex::build(graph);
    let mut gate: Vec<_> = index
        .sites
        .iter()
        .filter_map(|s| {
            s.paths
                .iter()
                .find(|p| p.ends_with("gate_proj"))
                .map(|p| (p.clone(), s))
        })
        .collect();
    gate.sort_by(|a, b| a.0.cmp(&b.0));
    println!("gate_proj modules: {}", gate.len());
    for (path, site) in gate {
        println!(
            "  {path}: node `{}`, weight `{}` ({:?})",
            site.node_name, site.weight, site.layout
        );
    }
    Ok(())
}

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
    let frame = emogate_device::replay::VideoFrame {
        width: 320,
        height: 240,
        layout: emogate_device::replay::PixelLayout::Rgb8,
        data: (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect(),
        at: Duration::ZERO,
    };
    let audio: Vec<f32> = featurizer
        .audio()
        .map(|a| {
            (0..a.window_samples())
                .map(|i| (i as f32 * 0.05 + (i as f32 * 1e-5).powi(2)).sin() * 0.3)
                .collect()
        })
        .unwrap_or_default();
    let (mut pre, mut inf, mut post) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = 5;
    let started = Instant::now();
    for i in 0..windows + warmup {
        let t0 = Instant::now();
        let inputs = featurizer.build(
            Some(&emogate_engine::features::replay_frame(&frame)?),
            (!audio.is_empty()).then_some(audio.as_slice()),
        )?;
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
        load.threads
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
        bench_log_mel(&audio_spec, &audio, windows, python)?;
    }
    bench_switch(&mut affect)?;
    if python != "none" {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tools/bench/ort_python_bench.py"
        );
        let out = std::process::Command::new(python)
            .args([script, "--model"])
            .arg(&model)
            .args([
                "--threads",
                &load.threads.to_string(),
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

/// Our log-mel on one window against librosa's (same parameters, same
/// machine, same run): `tools/bench/logmel_librosa.py`.
fn bench_log_mel(
    spec: &emogate_models::manifest::AudioInput,
    audio: &[f32],
    runs: usize,
    python: &str,
) -> Result<()> {
    use emogate_engine::pre::mel::{MelConfig, MelSpec};
    let emogate_models::manifest::AudioFeatures::LogMel(m) = &spec.features else {
        return Ok(());
    };
    let mut mel = MelSpec::new(MelConfig::from_manifest(m, spec.sample_rate))?;
    let mut out = vec![0f32; m.n_mels * m.frames(audio.len())];
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let t = Instant::now();
        mel.compute_into(audio, &mut out)?;
        if i >= 10 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let ours = percentile(&times, 0.5);
    print!("log-mel ({:.1} s window) p50: {ours:.3} ms", spec.window_s);
    if python == "none" {
        println!();
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/logmel_librosa.py"
    );
    match std::process::Command::new(python)
        .args([script, "--runs", &runs.to_string()])
        .output()
    {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).context("reading librosa's timing")?;
            let theirs = v["median_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "; librosa {}: {theirs:.3} ms; librosa / emogate = {:.1}x",
                v["librosa"].as_str().unwrap_or("?"),
                theirs / ours
            );
        }
        _ => println!(
            "; librosa comparison skipped (`{python}` lacks librosa: pip install -r tools/fixtures/requirements-engine.txt)"
        ),
    }
    Ok(())
}

/// Median time to switch between the loaded adapters (merge in memory and
/// plan a new backend) and back to the base model.
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
