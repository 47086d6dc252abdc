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
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    bench(cli.model, cli.load, cli.windows, &cli.python)
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
    let pixels: Vec<u8> = (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect();
    let frame = Frame::new(320, 240, PixelLayout::Rgb8, pixels, 0)?;
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
            Some(&frame),
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

/// Our log-mel on one window against librosa's (same parameters, same
/// machine, same run): `tools/bench/logmel_librosa.py`.
fn bench_log_mel(
    spec: &emogate_models::manifest::AudioInput,
    audio: &[f32],
    runs: usize,
    python: &str,
) -> Result<()> {
    use emogate_infer::pre::mel::{MelConfig, MelSpec};
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
