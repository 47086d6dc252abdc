//! `emogate-bench-quantize`: size, error and latency of emogate's fp16,
//! int8 (QDQ) and int8-dynamic models against ONNX Runtime's
//! `quantize_dynamic` and onnxconverter-common's fp16 converter, on the
//! same models, inputs and runtimes, in one run.
//!
//! The anchors are made by `tools/fixtures/make_quantize_fixtures.py
//! --anchors` with the Python given by `--python` (install
//! `tools/fixtures/requirements-quantize.txt` into it). Every candidate is
//! compared with its f32 model on the same backend over `--inputs` seeded
//! input sets; latency is the median over those runs (one thread).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;
use emogate_models::manifest::Manifest;
use emogate_models::onnx::{OnnxModel, SaveOptions};
use emogate_models::quantize::fp16::Fp16Options;
use emogate_models::quantize::int8::Int8Options;
use emogate_models::quantize::{Mode, Selection, quantize_to_file, weight_bytes};
use emogate_tools::{atomic, cli, verify};

/// Benchmark emogate-convert quantize against ONNX Runtime's Python tools.
#[derive(Parser)]
#[command(name = "emogate-bench-quantize", version, about, long_about)]
struct Args {
    /// Working folder (converted models are written here).
    #[arg(long, default_value = "bench-out/quantize")]
    dir: PathBuf,
    /// Python with tools/fixtures/requirements-quantize.txt installed (for
    /// the anchors); `none` skips them.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Models to convert (default: the reference model and the merge fixtures).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Seeded input sets per model (accuracy and latency).
    #[arg(long, default_value_t = 1000)]
    inputs: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Log progress.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(serde::Serialize)]
struct Row {
    model: String,
    variant: String,
    file_bytes: u64,
    weight_bytes: u64,
    weight_pct: f64,
    backend: &'static str,
    error: Option<String>,
    top1: Option<f64>,
    mean_rel_err: f64,
    max_abs_err: f64,
    kl: Option<f64>,
    nonfinite: usize,
    p50_ms: f64,
    f32_p50_ms: f64,
}

fn file_bytes(model: &Path) -> Result<u64> {
    let m = OnnxModel::load(model)?;
    let mut files = std::collections::BTreeSet::new();
    for t in m.all_initializers() {
        if let Some(e) = m.external_data(t)? {
            files.insert(e.file);
        }
    }
    let mut total = std::fs::metadata(model)?.len();
    for f in files {
        total += std::fs::metadata(f)?.len();
    }
    Ok(total)
}

fn main() -> Result<()> {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let models = if args.models.is_empty() {
        let mut m = vec![root.join("models/reference/emogate-ref.onnx")];
        for d in [
            "llama.legacy",
            "llama.dynamo",
            "qwen2.legacy",
            "qwen2.dynamo",
            "llama_bias.legacy",
            "llama_bias.dynamo",
            "swiglu_gemm.legacy",
        ] {
            m.push(root.join("tests/fixtures/merge").join(d).join("model.onnx"));
        }
        m
    } else {
        args.models.clone()
    };
    let mut backends = vec![verify::BackendKind::Tract];
    if cfg!(feature = "ort") {
        backends.push(verify::BackendKind::Ort);
    }
    let mut rows: Vec<Row> = Vec::new();
    for (mi, path) in models.iter().enumerate() {
        let label = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = if label == "reference" {
            "emogate-ref".to_string()
        } else {
            label
        };
        let dir = args.dir.join(format!("{mi}-{label}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let model = OnnxModel::load(path)?;
        let before = weight_bytes(model.graph());
        // Candidates: ours, then the anchors.
        let mut candidates: Vec<(String, PathBuf)> = Vec::new();
        let mut ours = vec![
            (
                "emogate fp16".to_string(),
                Mode::Fp16(Fp16Options::default()),
            ),
            (
                "emogate int8".to_string(),
                Mode::Int8(Int8Options::default()),
            ),
            (
                "emogate int8-dynamic".to_string(),
                Mode::Int8Dynamic(Int8Options::default()),
            ),
        ];
        ours.push((
            "emogate int8, gate_proj f32".to_string(),
            Mode::Int8(Int8Options {
                selection: Selection {
                    modules: vec![],
                    exclude: vec!["gate_proj".into()],
                },
                ..Int8Options::default()
            }),
        ));
        match emogate_tools::calibrate::hessians(&model, 256, 0) {
            Ok(hessians) if !hessians.is_empty() => ours.push((
                "emogate int8 --calibrate 256".to_string(),
                Mode::Int8(Int8Options {
                    hessians,
                    ..Int8Options::default()
                }),
            )),
            Ok(_) => {}
            Err(e) => eprintln!("{label}: calibration: {e:#}"),
        }
        for (name, mode) in ours {
            let out = dir.join(format!("{}.onnx", name.replace([' ', ',', '-'], "_")));
            match quantize_to_file(
                &model,
                &mode,
                &out,
                &SaveOptions {
                    sync: false,
                    ..SaveOptions::default()
                },
            ) {
                Ok(_) => candidates.push((name, out)),
                Err(e) => eprintln!("{label}: {name}: {e}"),
            }
        }
        if args.python != "none" {
            let status = Command::new(&args.python)
                .arg(root.join("tools/fixtures/make_quantize_fixtures.py"))
                .arg("--anchors")
                .arg(path)
                .arg(&dir)
                .output()
                .with_context(|| format!("running {}", args.python))?;
            if status.status.success() {
                candidates.push(("ORT quantize_dynamic".into(), dir.join("ort_dynamic.onnx")));
                candidates.push(("onnxconverter fp16".into(), dir.join("ort_fp16.onnx")));
            } else {
                eprintln!(
                    "{label}: anchors failed: {}",
                    String::from_utf8_lossy(&status.stderr)
                );
            }
        }
        let manifest = Manifest::from_model(&model)?;
        let descs = verify::model_inputs(&model, &Default::default())?;
        let sets = verify::random_inputs(&descs, manifest.as_ref(), args.inputs, 1, 1.0)?;
        let names = verify::output_names(&model);
        for &kind in &backends {
            let mut base = verify::load_backend(kind, path, &descs, 1)?;
            let (r_out, r_ms) = verify::run_all(base.as_mut(), &sets, "f32")?;
            drop(base);
            let roles = verify::output_roles(&names, manifest.as_ref(), &r_out);
            let f32_p50 = verify::median(&r_ms);
            rows.push(Row {
                model: label.clone(),
                variant: "f32".into(),
                file_bytes: file_bytes(path)?,
                weight_bytes: before,
                weight_pct: 100.0,
                backend: kind.name(),
                error: None,
                top1: None,
                mean_rel_err: 0.0,
                max_abs_err: 0.0,
                kl: None,
                nonfinite: 0,
                p50_ms: f32_p50,
                f32_p50_ms: f32_p50,
            });
            for (name, cand) in &candidates {
                let m = OnnxModel::load(cand)?;
                let wb = weight_bytes(m.graph());
                let mut row = Row {
                    model: label.clone(),
                    variant: name.clone(),
                    file_bytes: file_bytes(cand)?,
                    weight_bytes: wb,
                    weight_pct: 100.0 * wb as f64 / before.max(1) as f64,
                    backend: kind.name(),
                    error: None,
                    top1: None,
                    mean_rel_err: f64::NAN,
                    max_abs_err: f64::NAN,
                    kl: None,
                    nonfinite: 0,
                    p50_ms: f64::NAN,
                    f32_p50_ms: f32_p50,
                };
                let result = verify::load_backend(kind, cand, &descs, 1).and_then(|mut b| {
                    let (c_out, c_ms) = verify::run_all(b.as_mut(), &sets, name)?;
                    Ok((verify::compare(&names, &roles, &r_out, &c_out)?, c_ms))
                });
                match result {
                    Ok((metrics, ms)) => {
                        // The first output is the class output in all these models.
                        if let Some(o) = metrics.first() {
                            row.top1 = o.top1;
                            row.mean_rel_err = o.mean_rel_err;
                            row.max_abs_err = o.max_abs_err;
                            row.kl = o.kl;
                        }
                        row.nonfinite = metrics.iter().map(|m| m.nonfinite_candidate).sum();
                        row.p50_ms = verify::median(&ms);
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        row.error =
                            Some(msg.lines().last().unwrap_or("").chars().take(160).collect());
                    }
                }
                rows.push(row);
            }
        }
    }
    println!(
        "| model | variant | backend | files (bytes) | weights | top-1 | mean rel err | max abs err | KL | p50 ms (f32) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        if let Some(e) = &r.error {
            println!(
                "| {} | {} | {} | {} | {:.1}% | fails to load/run: {} | | | | |",
                r.model, r.variant, r.backend, r.file_bytes, r.weight_pct, e
            );
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {:.1}% | {} | {:.2e} | {:.2e} | {} | {:.3} ({:.3}) |",
            r.model,
            r.variant,
            r.backend,
            r.file_bytes,
            r.weight_pct,
            r.top1
                .map(|t| format!("{:.1}%", 100.0 * t))
                .unwrap_or_else(|| "-".into()),
            r.mean_rel_err,
            r.max_abs_err,
            r.kl.map(|k| format!("{k:.1e}"))
                .unwrap_or_else(|| "-".into()),
            r.p50_ms,
            r.f32_p50_ms
        );
    }
    if let Some(j) = &args.json {
        atomic::write_json(j, &rows)?;
    }
    Ok(())
}
