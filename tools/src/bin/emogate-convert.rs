//! `emogate-convert`: offline model conversion for emogate.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use emogate_models::manifest::{MANIFEST_KEY, Manifest};
use emogate_models::merge::{MergeOptions, MergeReport, merge_to_file};
use emogate_models::onnx::{OnnxModel, SaveOptions, save_model};
use emogate_models::peft::Adapter;
use emogate_tools::cli;

/// Offline converter for emogate affect models.
///
/// Works directly on ONNX files, with no PyTorch: merge PEFT LoRA adapters
/// (gate_proj and any other linear layer) into a base model exported by
/// torch.onnx (legacy or dynamo exporter), and embed or show the model
/// manifest the runtime reads. Inputs are never modified; outputs appear
/// only once complete.
#[derive(Parser)]
#[command(name = "emogate-convert", version, about, long_about)]
struct Cli {
    /// Log progress details (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Merge a PEFT LoRA adapter into an ONNX model's weights.
    ///
    /// Reproduces PEFT's merge_and_unload(): W += scale·B·A (scale =
    /// lora_alpha/r, or lora_alpha/sqrt(r) with use_rslora, after
    /// rank_pattern/alpha_pattern), DoRA's magnitude rescale, lora_bias,
    /// and modules_to_save replacement tensors. Each adapter module must
    /// resolve to exactly one weight of the graph, found through the legacy
    /// exporter's node names, the dynamo exporter's name-scope metadata or
    /// parameter-named initializers; module paths are matched by suffix so
    /// wrapper prefixes do not matter.
    ///
    /// A model with external data (side files) gets `<OUT>.data` beside it.
    Merge {
        /// The base model (.onnx), exported from the model the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Where to write the merged model.
        #[arg(long)]
        out: PathBuf,
        /// Also write the per-module report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Keep unchanged tensors in the base model's data file instead of
        /// copying them; only changed tensors are written. The output must be
        /// in the base model's folder and needs that data file to stay there.
        #[arg(long)]
        share_base_data: bool,
        /// Skip fsync before renaming outputs into place (faster, but a power
        /// cut right after may leave an empty file).
        #[arg(long)]
        no_sync: bool,
        /// Merge threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Read or write the model manifest (schema emogate.manifest/1) that
    /// tells the runtime how to feed the model and read its outputs.
    #[command(subcommand)]
    Manifest(ManifestCommand),
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Embed a manifest JSON file into a model (metadata key `emogate.manifest`),
    /// after checking it against the model's real inputs and outputs.
    Set {
        /// The model to describe.
        #[arg(long)]
        model: PathBuf,
        /// The manifest JSON file.
        #[arg(long)]
        manifest: PathBuf,
        /// Where to write the model with the manifest.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a model's embedded manifest as JSON.
    Show {
        /// The model.
        model: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.verbose);
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
        Command::Manifest(command) => run_manifest(command),
        Command::Merge {
            model,
            adapter,
            out,
            report,
            share_base_data,
            no_sync,
            threads,
        } => {
            let base = OnnxModel::load(&model)
                .with_context(|| format!("loading base model {}", model.display()))?;
            let lora = Adapter::load(&adapter)
                .with_context(|| format!("loading adapter {}", adapter.display()))?;
            let options = MergeOptions {
                save: SaveOptions {
                    share_base_data,
                    sync: !no_sync,
                    ..SaveOptions::default()
                },
                threads,
            };
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating the output folder {}", parent.display()))?;
            }
            let total = (lora.modules.len() + lora.replacements.len()) as u64;
            let bar = cli::progress(total, "merging");
            let started = std::time::Instant::now();
            let result = merge_to_file(&base, &lora, &out, &options, &mut |done, _| {
                bar.set_position(done as u64)
            })
            .with_context(|| format!("merging {} into {}", adapter.display(), model.display()));
            bar.finish_and_clear();
            let result = result?;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "merge done"
            );
            print_table(&result);
            if let Some(path) = report {
                cli::write_json_atomic(&path, &result)?;
            }
            Ok(())
        }
    }
}

fn run_manifest(command: ManifestCommand) -> Result<()> {
    match command {
        ManifestCommand::Set {
            model,
            manifest,
            out,
        } => {
            let base =
                OnnxModel::load(&model).with_context(|| format!("loading {}", model.display()))?;
            let manifest = Manifest::from_file(&manifest)?;
            manifest
                .check_against(&base)
                .with_context(|| format!("the manifest does not fit {}", model.display()))?;
            let mut proto = base.proto.clone();
            manifest.embed(&mut proto);
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            save_model(
                &base,
                proto,
                std::iter::empty(),
                &out,
                &SaveOptions::default(),
            )
            .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} with manifest `{}`", out.display(), manifest.name);
            Ok(())
        }
        ManifestCommand::Show { model } => {
            let base =
                OnnxModel::load(&model).with_context(|| format!("loading {}", model.display()))?;
            let manifest = Manifest::from_model(&base)?.with_context(|| {
                format!(
                    "{} has no embedded manifest (metadata key `{MANIFEST_KEY}`)",
                    model.display()
                )
            })?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
    }
}

fn print_table(report: &MergeReport) {
    println!(
        "{:<44} {:<7} {:<32} {:>5} {:>8} {:>10}",
        "module", "kind", "weight", "rank", "scale", "|dW|/|W|"
    );
    for m in &report.modules {
        let weight = match &m.copied_from {
            Some(from) => format!("{} (copy of {from})", m.weight),
            None => m.weight.clone(),
        };
        println!(
            "{:<44} {:<7} {:<32} {:>5} {:>8} {:>10.3e}",
            m.module,
            m.kind,
            weight,
            m.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            m.scale
                .map(|s| format!("{s:.4}"))
                .unwrap_or_else(|| "-".into()),
            m.relative_change
        );
    }
    println!(
        "wrote {}{}",
        report.output.display(),
        report
            .save
            .data
            .as_ref()
            .map(|d| format!(" and {}", d.display()))
            .unwrap_or_default()
    );
}
