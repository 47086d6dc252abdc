//! Benchmark: `emogate-convert analyze` on two Qwen2.5-0.5B-shaped
//! safetensors checkpoints (about 2 GB of f32 each), a base and a "tuned"
//! one whose change concentrates in gate_proj.
//!
//! With the page cache warm for every contender (both files are read once
//! before the timed runs, and nothing is written), it measures the median
//! wall time (and spread) and peak RSS of:
//! * `cat base tuned > /dev/null`, the floor: reading both files;
//! * `emogate-convert analyze --base base --tuned tuned` (the default:
//!   `--rank-max-dim 256`, stable ranks ‖ΔW‖_F²/σ_max² of the k/v
//!   projections and the score head; the 896-wide matrices get none);
//! * the same with `--spectrum` (also the Roy–Vetterli effective rank, from
//!   the full spectrum by Jacobi);
//!
//! one after the other in each repetition, and prints per contender the
//! ratio to the same repetition's read (median, min, max over the
//! repetitions) against the target: analyze ≤ 2× reading both files; and
//! peak RSS against a few tensors (the largest, the embedding, is 545 MB of
//! f32).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use emogate_tools::{cli, synth};

#[derive(Parser)]
#[command(name = "emogate-bench-analyze", about, long_about)]
/// Benchmark `analyze` on two 2 GB safetensors checkpoints against reading them.
struct Args {
    /// Working folder: the two generated checkpoints go here (about 4 GB).
    #[arg(long, default_value = "bench-out/analyze")]
    dir: PathBuf,
    /// Use a tiny model of the same structure (a smoke test of the harness).
    #[arg(long)]
    tiny: bool,
    /// Timed runs of each contender; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Regenerate the checkpoints even if they exist.
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
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let base = args.dir.join("base.safetensors");
    let tuned = args.dir.join("tuned.safetensors");
    for (path, shift) in [(&base, None), (&tuned, Some((13, 0.01f32)))] {
        if args.regenerate || !path.exists() {
            let started = Instant::now();
            let bar = cli::progress(0, "generating");
            synth::write_checkpoint(path, &spec, 7, shift, &mut |d, t| {
                bar.set_length(t as u64);
                bar.set_position(d as u64);
            })?;
            bar.finish_and_clear();
            println!(
                "generated {} in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let size = std::fs::metadata(&base)?.len() + std::fs::metadata(&tuned)?.len();
    println!(
        "checkpoints: {} + {} ({:.2} GB together, {} parameters each)",
        base.display(),
        tuned.display(),
        size as f64 / 1e9,
        spec.parameters()
    );
    warm(&[&base, &tuned])?;
    let convert = sibling("emogate-convert")?;
    let analyze = |extra: &[&str]| {
        let mut c = Command::new(&convert);
        c.arg("analyze")
            .arg("--base")
            .arg(&base)
            .arg("--tuned")
            .arg(&tuned)
            .args(extra);
        c
    };
    let (mut read, mut default, mut spectrum) = (vec![], vec![], vec![]);
    for run in 0..args.runs {
        read.push(time(Command::new("cat").arg(&base).arg(&tuned))?);
        default.push(time(&mut analyze(&[]))?);
        spectrum.push(time(&mut analyze(&["--spectrum"]))?);
        eprintln!(
            "run {}/{}: read {:.3} s, analyze {:.3} s, analyze --spectrum {:.3} s",
            run + 1,
            args.runs,
            read[run].seconds,
            default[run].seconds,
            spectrum[run].seconds
        );
    }
    println!(
        "\n{:<34} {:>9} {:>8} {:>8} {:>12} {:>22}",
        "contender", "median s", "min s", "max s", "peak RSS MB", "÷ read: median [min, max]"
    );
    for (name, s) in [
        ("cat base tuned > /dev/null", &read),
        ("emogate-convert analyze", &default),
        ("emogate-convert analyze --spectrum", &spectrum),
    ] {
        let (lo, hi) = spread(s);
        let ratios: Vec<Sample> = s
            .iter()
            .zip(&read)
            .map(|(a, r)| Sample {
                seconds: a.seconds / r.seconds,
                max_rss_kb: 0,
            })
            .collect();
        let (rlo, rhi) = spread(&ratios);
        println!(
            "{name:<34} {:>9.3} {:>8.3} {:>8.3} {:>12.1} {:>8.2} [{:.2}, {:.2}]",
            median(s),
            lo,
            hi,
            max_rss_mb(s),
            median(&ratios),
            rlo,
            rhi
        );
    }
    println!(
        "\nanalyze / read both files = {:.2} (median of {} repetitions; target <= 2); with --spectrum {:.2}",
        median(&default) / median(&read),
        args.runs,
        median(&spectrum) / median(&read)
    );
    Ok(())
}

/// Runs a command to completion with stdout discarded, timing it and
/// reading its peak RSS.
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

fn spread(samples: &[Sample]) -> (f64, f64) {
    let v = samples.iter().map(|s| s.seconds);
    (
        v.clone().fold(f64::INFINITY, f64::min),
        v.fold(0.0, f64::max),
    )
}

fn max_rss_mb(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) as f64 / 1024.0
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
