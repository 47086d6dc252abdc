//! `emogate`: the on-device emotion engine.

mod ctl;
mod reload;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use emogate_models::onnx::linear::LinearIndex;

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
        /// Also plan the model on tract (1 thread, the manifest's shapes)
        /// and print the kernels it chose: the matrix-product kernel per
        /// node (NEON `arm64simd_…` on a Jetson; `generic_…` is the slow
        /// portable fallback), the CPU's f16 support and the plan's
        /// operators.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Stream video and/or audio (cameras, microphones, GStreamer pipelines
    /// or recordings) through a model and publish emotions.
    ///
    /// Exit status: 0 when the sources ended or SIGINT/SIGTERM stopped it,
    /// 1 for a bad setting or a source that can never work, 3 when the
    /// model failed --max-consecutive-errors windows in a row, 4 when
    /// inference stalled (--stall-ms).
    Run(Box<run::RunArgs>),
    /// Control a running `emogate run --control ...`: switch the adapter,
    /// print its status, reload its config file. Prints the JSON reply;
    /// exits 1 when the request failed.
    Ctl(ctl::CtlArgs),
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A supervisor tells a broken model (3) and a stuck one (4)
            // from a bad setting (1).
            let code = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<emogate_engine::pipeline::PipelineError>())
                .map_or(1, emogate_engine::pipeline::PipelineError::exit_code);
            std::process::ExitCode::from(code)
        }
    }
}

fn run(command: Command) -> Result<std::process::ExitCode> {
    let done = |r: Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    match command {
        Command::Devices => {
            devices();
            done(Ok(()))
        }
        Command::Info {
            model,
            manifest,
            verbose,
        } => done(info(model, manifest, verbose)),
        Command::Run(args) => done(run::run(*args)),
        Command::Ctl(args) => ctl::ctl(args),
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

fn info(model: PathBuf, manifest: Option<PathBuf>, verbose: bool) -> Result<()> {
    let onnx = emogate_models::onnx::OnnxModel::load(&model)
        .with_context(|| format!("loading {}", model.display()))?;
    let manifest_path = manifest.clone();
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
    for i in emogate_models::onnx::runtime_inputs(graph) {
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
    if verbose {
        print_kernels(&model, manifest_path)?;
    }
    Ok(())
}

/// Plans `model` on tract and prints the kernels it chose.
fn print_kernels(model: &std::path::Path, manifest: Option<PathBuf>) -> Result<()> {
    let affect = emogate_infer::AffectModel::load(&emogate_infer::ModelSpec {
        path: model.to_path_buf(),
        manifest,
        ..Default::default()
    })
    .with_context(|| format!("planning {} on tract", model.display()))?;
    let Some(report) = affect.kernels() else {
        return Ok(());
    };
    println!(
        "tract plan ({}; CPU f16 arithmetic: {}):",
        report.arch,
        if report.fp16_cpu { "yes" } else { "no" }
    );
    println!("  matrix-product kernels:");
    for (kernel, nodes) in &report.matmul {
        println!("    {kernel}: {nodes} node(s)");
    }
    println!("  operators:");
    for (op, nodes) in &report.ops {
        println!("    {op}: {nodes}");
    }
    Ok(())
}
