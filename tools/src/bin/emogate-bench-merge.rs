//! Benchmark: `emogate-convert merge` on a Qwen2.5-0.5B-shaped model
//! (about 2 GB of f32 in external data) with a rank-16 gate_proj adapter.
//!
//! In one run it measures, with the page cache warm and outputs removed
//! between runs, the median wall time and peak RSS of:
//! * `cp` of the model files (the floor any merge must pay to write a new model),
//! * `emogate-convert merge` (with `--no-sync`, like `cp`; and with fsync),
//! * `emogate-convert merge --share-base-data` (writes only changed tensors),
//! * the straightforward Python baseline (`tools/bench/merge_baseline.py`, onnx + numpy),
//!
//! and prints the ratios against the targets: merge ≤ 1.5× cp, peak RSS
//! < 512 MB, ≥ 6× faster than Python. It also checks that emogate's and
//! Python's merged weights agree.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use emogate_models::onnx::{OnnxModel, initializers_by_name};
use emogate_tools::{cli, synth};

#[derive(Parser)]
#[command(name = "emogate-bench-merge", about, long_about)]
/// Benchmark the gate_proj merge against cp and a Python (onnx + numpy) baseline.
struct Args {
    /// Working folder: the generated model, adapter and outputs go here (about 6 GB with --python).
    #[arg(long, default_value = "bench-out/merge")]
    dir: PathBuf,
    /// Use a tiny model of the same structure (a smoke test of the harness).
    #[arg(long)]
    tiny: bool,
    /// Timed runs of each contender; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Python interpreter with onnx, numpy and safetensors; `none` skips the baseline.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Regenerate the model even if it exists.
    #[arg(long)]
    regenerate: bool,
}

struct Sample {
    seconds: f64,
    max_rss_kb: i64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    cli::init_logging(false);
    let spec = if args.tiny {
        synth::DecoderSpec::tiny()
    } else {
        synth::DecoderSpec::qwen2_5_0_5b()
    };
    let base_dir = args.dir.join("base");
    let adapter_dir = args.dir.join("adapter");
    let model = base_dir.join("model.onnx");
    if args.regenerate || !model.exists() {
        let started = Instant::now();
        let bar = cli::progress(spec.layers as u64, "generating");
        synth::write_decoder(&base_dir, &spec, 7, &mut |l| bar.set_position(l as u64))?;
        bar.finish_and_clear();
        synth::write_gate_proj_adapter(&adapter_dir, &spec, 16, 32.0, 11)?;
        println!(
            "generated {} ({} parameters) in {:.1} s",
            model.display(),
            spec.parameters(),
            started.elapsed().as_secs_f64()
        );
    }
    let data = base_dir.join("model.onnx.data");
    let size = std::fs::metadata(&data)?.len() + std::fs::metadata(&model)?.len();
    println!(
        "model: {} ({:.2} GB), adapter: rank 16 on {} gate_proj",
        model.display(),
        size as f64 / 1e9,
        spec.layers
    );
    warm(&[&model, &data])?;

    let convert = sibling("emogate-convert")?;
    let out_dir = args.dir.join("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/merge_baseline.py");
    let python_ok = args.python != "none"
        && Command::new(&args.python)
            .args(["-c", "import onnx, numpy, safetensors"])
            .status()
            .is_ok_and(|s| s.success());
    if !python_ok && args.python != "none" {
        println!(
            "python baseline skipped: `{}` lacks onnx/numpy/safetensors (pip install -r tools/bench/requirements.txt)",
            args.python
        );
    }

    let (mut cp, mut merge, mut merge_sync, mut share, mut python) =
        (vec![], vec![], vec![], vec![], vec![]);
    let merged = out_dir.join("merged.onnx");
    let model_s = model.to_str().context("path")?;
    let adapter_s = adapter_dir.to_str().context("path")?;
    let merged_s = merged.to_str().context("path")?;
    let shared = base_dir.join("shared.onnx");
    for run in 0..args.runs {
        fresh(&out_dir)?;
        cp.push(time(
            Command::new("cp").arg(&model).arg(&data).arg(&out_dir),
        )?);
        fresh(&out_dir)?;
        merge.push(time(Command::new(&convert).args([
            "merge",
            "--model",
            model_s,
            "--adapter",
            adapter_s,
            "--out",
            merged_s,
            "--no-sync",
        ]))?);
        fresh(&out_dir)?;
        merge_sync.push(time(Command::new(&convert).args([
            "merge",
            "--model",
            model_s,
            "--adapter",
            adapter_s,
            "--out",
            merged_s,
        ]))?);
        let _ = std::fs::remove_file(&shared);
        let _ = std::fs::remove_file(base_dir.join("shared.onnx.data"));
        fresh(&out_dir)?;
        share.push(time(
            Command::new(&convert)
                .args(["merge", "--model", model_s, "--adapter", adapter_s, "--out"])
                .arg(&shared)
                .arg("--share-base-data"),
        )?);
        if python_ok && run < args.runs.min(3) {
            fresh(&out_dir)?;
            // Ours again, for the agreement check below.
            time(Command::new(&convert).args([
                "merge",
                "--model",
                model_s,
                "--adapter",
                adapter_s,
                "--out",
                merged_s,
                "--no-sync",
            ]))?;
            let py_out = out_dir.join("python.onnx");
            python.push(time(
                Command::new(&args.python)
                    .arg(&script)
                    .args(["--model", model_s, "--adapter", adapter_s, "--out"])
                    .arg(&py_out),
            )?);
            check_agreement(&merged, &py_out)?;
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }

    let cp_t = median(&cp);
    let merge_t = median(&merge);
    println!(
        "\n{:<34} {:>10} {:>14} {:>10}",
        "contender (median)", "wall s", "peak RSS MB", "vs cp"
    );
    for (name, s) in [
        ("cp model files", &cp),
        ("emogate merge --no-sync", &merge),
        ("emogate merge (fsync)", &merge_sync),
        ("emogate merge --share-base-data", &share),
        ("python onnx+numpy", &python),
    ] {
        if s.is_empty() {
            continue;
        }
        println!(
            "{name:<34} {:>10.3} {:>14.1} {:>9.2}x",
            median(s),
            max_rss_mb(s),
            median(s) / cp_t
        );
    }
    println!("\ntargets:");
    println!(
        "  merge / cp            = {:.2}  (target <= 1.5)",
        merge_t / cp_t
    );
    println!(
        "  merge peak RSS        = {:.0} MB  (target < 512 MB)",
        max_rss_mb(&merge)
    );
    if !python.is_empty() {
        println!(
            "  python / merge        = {:.1}x (target >= 6x)",
            median(&python) / merge_t
        );
    }
    Ok(())
}

/// Runs a command to completion, timing it and reading its peak RSS.
fn time(cmd: &mut Command) -> Result<Sample> {
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if rc < 0 {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    let exit = std::process::ExitStatus::from_raw(status);
    if !exit.success() {
        bail!("{cmd:?} failed: {exit}");
    }
    Ok(Sample {
        seconds,
        max_rss_kb: usage.ru_maxrss,
    })
}

fn median(samples: &[Sample]) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn max_rss_mb(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) as f64 / 1024.0
}

/// Empties `dir` and flushes dirty pages, so one contender's writeback does
/// not land on the next one's clock.
fn fresh(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

/// Reads the files once so every contender starts with a warm page cache.
fn warm(files: &[&Path]) -> Result<()> {
    for f in files {
        std::io::copy(&mut std::fs::File::open(f)?, &mut std::io::sink())?;
    }
    Ok(())
}

/// A binary built beside this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p emogate-tools`",
            path.display()
        );
    }
    Ok(path)
}

/// emogate's and Python's merged first gate_proj must agree.
fn check_agreement(ours: &Path, theirs: &Path) -> Result<()> {
    let a = OnnxModel::load(ours)?;
    let b = OnnxModel::load(theirs)?;
    let name = a
        .graph()
        .node
        .iter()
        .find(|n| n.name() == "/model/layers.0/mlp/gate_proj/MatMul")
        .and_then(|n| n.input.get(1).cloned())
        .context("gate_proj of layer 0 not found")?;
    let values = |m: &OnnxModel| -> Result<Vec<f32>> {
        let weight = initializers_by_name(m.graph())
            .get(name.as_str())
            .copied()
            .with_context(|| format!("{}: initializer `{name}` missing", m.path().display()))?;
        Ok(m.float_values(weight)?.1)
    };
    let (wa, wb) = (values(&a)?, values(&b)?);
    let diff = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    if diff > 1e-5 {
        bail!("emogate and python merges disagree on {name}: max abs diff {diff}");
    }
    Ok(())
}
