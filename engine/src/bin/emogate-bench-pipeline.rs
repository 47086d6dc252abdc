//! `emogate-bench-pipeline`: the streaming pipeline at real-time pacing,
//! against a straightforward Python pipeline doing the same work, measured
//! in the same run.
//!
//! For each contender and run it reports the capture-to-written latency
//! (from the capture time of the newest sample in a window to its event
//! line written) at p50 and p99, and the CPU time of everything except the
//! model's forward pass as a share of one core. The target is ≤ 3 % at a
//! 250 ms hop. Medians over `--runs` are printed, then the ratios.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use emogate_device::file_source::{VideoFile, WavFile};
use emogate_engine::config::{MAX_HOP_MS, millis};
use emogate_engine::event::Message;
use emogate_engine::pipeline::{Pacing, Pipeline, PipelineConfig};
use emogate_engine::sink::jsonl::JsonlSink;
use emogate_engine::sink::{Sink, SinkError};
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec};
use emogate_media::StopFlag;

/// Real-time pipeline benchmark: latency and non-model CPU, Rust vs Python.
#[derive(Parser)]
#[command(name = "emogate-bench-pipeline", version, about, long_about)]
struct Args {
    #[arg(long, default_value = "models/reference/emogate-ref.onnx")]
    model: PathBuf,
    #[arg(long, default_value = "tests/fixtures/sample/face.y4m")]
    video: PathBuf,
    #[arg(long, default_value = "tests/fixtures/sample/voice.wav")]
    audio: PathBuf,
    /// Length of each run (the recording loops).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    #[arg(long, default_value_t = 250.0)]
    hop_ms: f64,
    /// Runs per contender; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Python with librosa, onnxruntime, soundfile and Pillow for the
    /// baseline (tools/bench/requirements-pipeline.txt); `none` skips it.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// Writes events as JSON lines to /dev/null (the work a file sink does)
/// and records when each was written.
struct TimedSink {
    inner: JsonlSink,
    latencies: Arc<Mutex<Vec<f64>>>,
}

impl Sink for TimedSink {
    fn name(&self) -> String {
        "timed".into()
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        self.inner.publish(message)?;
        if let Message::Emotion(e) = message {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let stamp = e.header.stamp.sec as f64 + f64::from(e.header.stamp.nanosec) * 1e-9;
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((now - stamp) * 1e3);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy)]
struct Measure {
    p50_ms: f64,
    p99_ms: f64,
    /// Non-model CPU as a fraction of one core.
    overhead_share: f64,
    events: u64,
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn run_rust(args: &Args, hop: Duration) -> Result<Measure> {
    let model = AffectModel::load(&ModelSpec {
        path: args.model.clone(),
        manifest: None,
        backend: BackendChoice::Tract { threads: 1 },
        adapters: vec![],
        active: None,
        switching: Default::default(),
    })
    .with_context(|| format!("loading {}", args.model.display()))?;
    let windows = ((args.seconds - 2.0) / hop.as_secs_f64()).floor() as u64 + 1;
    let video = VideoFile::open(&args.video, 10.0, true)?;
    let audio = WavFile::open(&args.audio, true)?;
    let pipeline = Pipeline::new(
        model,
        Some(Box::new(video)),
        Some(Box::new(audio)),
        Pacing::RealTime,
        PipelineConfig {
            hop,
            max_windows: Some(windows),
            ..PipelineConfig::default()
        },
    )?;
    let status = pipeline.status();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let sink = TimedSink {
        inner: JsonlSink::file(std::path::Path::new("/dev/null"), None, 1)?,
        latencies: Arc::clone(&latencies),
    };
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let summary = pipeline.run(vec![Box::new(sink)], StopFlag::new())?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (process_cpu() - cpu0).as_secs_f64();
    let model_cpu = status.model_cpu().as_secs_f64();
    let mut lat = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort_by(f64::total_cmp);
    if summary.counters.dropped > 0 {
        tracing::warn!(dropped = summary.counters.dropped, "windows were dropped");
    }
    Ok(Measure {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        overhead_share: (cpu - model_cpu) / wall,
        events: summary.events,
    })
}

fn run_python(args: &Args) -> Result<Measure> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bench/pipeline_python.py");
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .args(["--model".as_ref(), args.model.as_os_str()])
        .args(["--video".as_ref(), args.video.as_os_str()])
        .args(["--audio".as_ref(), args.audio.as_os_str()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--hop-ms", &args.hop_ms.to_string()])
        .output()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    if !out.status.success() {
        bail!(
            "the Python baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing {}", String::from_utf8_lossy(&out.stdout)))?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("the Python baseline printed no `{k}`"))
    };
    Ok(Measure {
        p50_ms: get("latency_p50_ms")?,
        p99_ms: get("latency_p99_ms")?,
        overhead_share: (get("cpu_s")? - get("model_cpu_s")?) / get("wall_s")?,
        events: get("events")? as u64,
    })
}

fn summarize(name: &str, runs: &[Measure]) -> Measure {
    let m = Measure {
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        overhead_share: median(runs.iter().map(|r| r.overhead_share).collect()),
        events: runs.iter().map(|r| r.events).sum(),
    };
    println!(
        "{name:<10} {:>10.2} {:>10.2} {:>13.2} % {:>8}",
        m.p50_ms,
        m.p99_ms,
        m.overhead_share * 100.0,
        m.events
    );
    m
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    if args.seconds.is_nan() || args.seconds < 3.0 {
        bail!(
            "--seconds {}: expected at least 3 (a 2 s window plus hops)",
            args.seconds
        );
    }
    let hop = millis("--hop-ms", args.hop_ms, MAX_HOP_MS)?;
    let mut rust = Vec::new();
    let mut python = Vec::new();
    // Alternate contenders so drift in machine load hits both alike.
    for run in 0..args.runs {
        eprintln!("run {}/{}: emogate", run + 1, args.runs);
        rust.push(run_rust(&args, hop)?);
        if args.python != "none" {
            eprintln!("run {}/{}: python", run + 1, args.runs);
            python.push(run_python(&args)?);
        }
    }
    println!(
        "real-time pipeline, {} s per run, {} ms hop, {} runs, medians",
        args.seconds, args.hop_ms, args.runs
    );
    println!(
        "{:<10} {:>10} {:>10} {:>15} {:>8}",
        "contender", "p50 ms", "p99 ms", "non-model CPU", "events"
    );
    let r = summarize("emogate", &rust);
    if !python.is_empty() {
        let p = summarize("python", &python);
        println!(
            "non-model CPU python/emogate = {:.1}×; latency p50 python/emogate = {:.1}×",
            p.overhead_share / r.overhead_share,
            p.p50_ms / r.p50_ms
        );
    }
    println!(
        "target: non-model CPU ≤ 3 % of one core at a 250 ms hop: {}",
        if r.overhead_share <= 0.03 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
