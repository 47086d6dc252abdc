//! `emogate-bench-vad`: times voice activity detection per hop, as the
//! engine would run it: `VoiceDetector::observe` on a 2 s window every
//! 250 ms (4000 new samples at 16 kHz, so 7 or 8 chunks of 512 run per
//! hop), one thread, over the speech/silence/noise fixture played in a
//! loop. Then the same hops through silero-vad's own `OnnxWrapper` in
//! Python (`tools/bench/vad_python_bench.py`), in the same run, so the
//! ratio compares like with like.
//!
//! A benchmark harness, not part of the product.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use emogate_device::audio::read_wav as read_wav_file;
use emogate_engine::backend_choice::BackendSettings;
use emogate_infer::vad::{VadOptions, VoiceDetector};

/// Time voice activity detection per 250 ms hop, against Python.
#[derive(Parser)]
#[command(name = "emogate-bench-vad", version, about, long_about)]
struct Cli {
    /// A WAV, played in a loop (mixed to mono; rates other than 16 kHz are
    /// resampled by the detector, and that is timed too).
    #[arg(long, default_value = "tests/fixtures/vad/speech-silence-noise.wav")]
    wav: PathBuf,
    /// The detector.
    #[arg(long, default_value = "models/vad/silero_vad_16k.onnx")]
    model: PathBuf,
    /// tract or ort.
    #[arg(long, default_value = "tract")]
    backend: String,
    /// `libonnxruntime.so` for `--backend ort` (default: `$ORT_DYLIB_PATH`).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Timed hops.
    #[arg(long, default_value_t = 2000)]
    hops: usize,
    /// Milliseconds per hop: new audio per call.
    #[arg(long, default_value_t = 250)]
    hop_ms: u32,
    /// Milliseconds per window.
    #[arg(long, default_value_t = 2000)]
    window_ms: u32,
    /// Python with the packages of models/vad/requirements.txt; `none`
    /// skips the comparison.
    #[arg(long, default_value = "python3")]
    python: String,
}

const WARMUP: usize = 20;

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [q(0.1), q(0.5), q(0.9)]
}

/// The WAV's mono mix and its rate, as the engine's replay reads it.
fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let wav = read_wav_file(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((wav.to_mono(), wav.sample_rate))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.hops > 0, "--hops must be at least 1");
    let (clip, rate) = read_wav(&cli.wav)?;
    anyhow::ensure!(!clip.is_empty(), "{}: no samples", cli.wav.display());
    let samples = |ms: u32| (u64::from(ms) * u64::from(rate) / 1000) as usize;
    let (hop, window) = (samples(cli.hop_ms), samples(cli.window_ms));
    anyhow::ensure!(
        hop > 0 && window >= hop,
        "--hop-ms must give at least one sample and --window-ms at least --hop-ms"
    );
    let total = window + (cli.hops + WARMUP) * hop;
    let stream: Vec<f32> = clip.iter().copied().cycle().take(total).collect();
    let settings = BackendSettings {
        backend: Some(cli.backend.clone()),
        threads: Some(1),
        ort_lib: cli.ort_lib.clone(),
        ..BackendSettings::default()
    };
    let mut detector = VoiceDetector::load(&cli.model, &settings.choice()?, VadOptions::default())
        .with_context(|| format!("loading {}", cli.model.display()))?;
    let mut per_hop = Vec::with_capacity(cli.hops);
    let mut chunks = 0usize;
    let mut speech_windows = 0usize;
    for i in 0..cli.hops + WARMUP {
        let end = window + i * hop;
        let t0 = Instant::now();
        let ratio = detector.observe(end as u64, &stream[end - window..end], rate)?;
        let elapsed = t0.elapsed().as_secs_f64() * 1e3;
        if i >= WARMUP {
            per_hop.push(elapsed);
            chunks += detector.last_probabilities().len();
            speech_windows += usize::from(ratio.is_some_and(|r| r >= 0.5));
        }
    }
    let hop_ms = f64::from(cli.hop_ms);
    let [p10, p50, p90] = quantiles(per_hop);
    println!(
        "{} ({rate} Hz): {} backend, 1 thread, {} hops of {hop_ms} ms ({hop} samples; {:.2} chunks of 512 at 16 kHz each), {} ms windows; {speech_windows} windows with speech_ratio >= 0.5",
        cli.wav.display(),
        detector.backend_name(),
        cli.hops,
        chunks as f64 / cli.hops as f64,
        cli.window_ms
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8}",
        "per hop (ms)", "p10", "p50", "p90"
    );
    println!(
        "{:<28} {p10:>8.3} {p50:>8.3} {p90:>8.3}",
        format!("emogate observe ({})", detector.backend_name())
    );
    println!(
        "real-time factor (p50 / {hop_ms} ms): {:.4} (1 core busy {:.2}% of the time)",
        p50 / hop_ms,
        100.0 * p50 / hop_ms
    );
    if cli.python == "none" {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/vad_python_bench.py"
    );
    let out = std::process::Command::new(&cli.python)
        .arg(script)
        .arg("--wav")
        .arg(&cli.wav)
        .args(["--hops", &cli.hops.min(1000).to_string()])
        .args(["--hop-ms", &cli.hop_ms.to_string()])
        .envs([
            ("OMP_NUM_THREADS", "1"),
            ("OPENBLAS_NUM_THREADS", "1"),
            ("MKL_NUM_THREADS", "1"),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).context("reading the Python benchmark's JSON")?;
            let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<28} {:>8.3} {:>8.3} {:>8.3}",
                "python silero OnnxWrapper",
                num("p10_ms"),
                num("p50_ms"),
                num("p90_ms"),
            );
            println!("python / emogate (p50): {:.2}x", num("p50_ms") / p50);
        }
        Ok(o) => println!(
            "Python comparison skipped: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!(
            "Python comparison skipped: cannot run `{}`: {e}",
            cli.python
        ),
    }
    Ok(())
}
