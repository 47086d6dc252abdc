//! `emogate-convert`: offline model conversion for emogate.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use emogate_models::merge::MergeReport;
use emogate_models::quantize::int8::ScaleMethod;
use emogate_models::quantize::{QuantizeReport, Selection};
use emogate_tools::convert::{self, MergeJob, QuantizeJob, QuantizeKind};
use emogate_tools::{atomic, cli, graft, verify};

/// Offline converter for emogate affect models.
///
/// Works directly on ONNX files, with no PyTorch: merge PEFT LoRA adapters
/// (gate_proj and any other linear layer) into a base model exported by
/// torch.onnx (legacy or dynamo exporter), convert it to fp16 or int8,
/// verify how far a converted model's outputs moved, and embed or show the
/// model manifest the runtime reads. Inputs are never modified; outputs
/// appear only once complete.
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
    Merge(MergeArgs),
    /// Make a smaller model: fp16, int8 weights in QDQ form (TensorRT), or
    /// int8 dynamic quantization (CPU runtimes).
    ///
    /// --fp16 converts float weights and values to f16; the graph's inputs
    /// and outputs stay f32 (with Casts), and normalization (LayerNormalization,
    /// RMSNorm/LayerNorm patterns of Pow/ReduceMean/Sqrt/Div) and Softmax stay
    /// f32, as does anything named with --keep-f32. Weights beyond ±65504 are
    /// clamped and counted.
    ///
    /// --int8 quantizes MatMul/Gemm/Conv weights (and Gather embedding
    /// tables) symmetrically per output channel (zero point 0) as int8
    /// initializers feeding DequantizeLinear (with the channel axis);
    /// activations stay f32. TensorRT's ONNX parser
    /// accepts this form.
    ///
    /// --int8-dynamic writes DynamicQuantizeLinear + MatMulInteger as ONNX
    /// Runtime's quantize_dynamic does; TensorRT rejects it.
    ///
    /// Prints sizes, tensors converted and values clamped; --report writes
    /// the same as JSON. A model with external data gets `<OUT>.data`.
    Quantize(QuantizeArgs),
    /// Run a reference and a candidate model on the same inputs and report
    /// how far the candidate's outputs moved.
    ///
    /// Per output: max abs error, mean relative error (‖c−r‖/‖r‖ per input,
    /// averaged), cosine similarity, top-1 agreement (class outputs) and
    /// KL(reference‖candidate) for probability outputs, plus latency medians.
    /// Inputs come from --inputs FILE.npz (one array per model input, named
    /// after it, shaped as the input or [N, ...input shape]) or --random N
    /// (seeded): from the model's manifest when it has one, otherwise from
    /// the input shapes. Exits with status 2 when a threshold is missed
    /// (or the candidate outputs NaN/Inf where the reference does not),
    /// 1 on errors.
    Verify(VerifyArgs),
    /// Read or write the model manifest (schema emogate.manifest/1) that
    /// tells the runtime how to feed the model and read its outputs.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Where tuning moved the weights: per module, module type and layer.
    ///
    /// Compares a base with a tuned model (ONNX files of any exporter, or
    /// Hugging Face safetensors checkpoints, single or sharded with
    /// model.safetensors.index.json, in any mix) or with a PEFT adapter
    /// (ΔW = s·B·A computed from the factors, never formed). Modules pair up
    /// as merge resolves them. Reports parameter count, ‖ΔW‖_F/‖W‖_F, the
    /// share of the total ‖ΔW‖², cos(W, W') and, for 2-D weights up to
    /// --rank-max-dim wide, the stable rank ‖ΔW‖_F²/σ_max(ΔW)² (σ_max by
    /// power iteration to a relative 1e-12; column `srank`, JSON
    /// `stable_rank`); with --spectrum also the effective rank (exp of the
    /// entropy of the normalized singular values, Roy & Vetterli; `erank`,
    /// `effective_rank`). Tensors are streamed over --threads threads:
    /// memory stays at a few tensors.
    Analyze(AnalyzeArgs),
    /// Graft modules of a donor into a base model, or cut an adapter down.
    ///
    /// `--from DONOR --into BASE --modules REGEX --out OUT.onnx`: the matched
    /// modules of BASE take DONOR's tensors. DONOR is a tuned ONNX model
    /// (any exporter: tensors are copied bit for bit, shapes must agree) or
    /// a PEFT adapter folder (its matched modules are merged, as `merge`).
    /// `--adapter DIR --modules REGEX --out-adapter DIR2` writes a PEFT
    /// adapter holding only the matched modules (modules_to_save included
    /// when matched; target_modules adjusted). A pattern that matches
    /// nothing is an error that lists the real module paths.
    Transfer(TransferArgs),
    /// Break or revert chosen modules, reproducibly.
    ///
    /// --mode revert:BASE.onnx copies the base model's tensors back (the
    /// clean way to remove what tuning did to one module); zero; mean (every
    /// value the tensor's mean); noise:SIGMA (plus seeded Gaussian noise of
    /// std SIGMA); reinit:SEED (PyTorch's default init, seeded); scale:F.
    /// Weights and biases of the matched modules change.
    ///
    /// Zeroing any one of gate_proj/up_proj/down_proj deletes the whole MLP
    /// (down(SiLU(gate·x)·up·x) = 0), so a zero ablation says nothing about
    /// gate_proj in particular: a warning says so; use revert.
    Ablate(AblateArgs),
    /// Accuracy, UAR, macro-F1, confusion matrix and valence/arousal RMSE and
    /// CCC of a model on labelled inputs, with seeded bootstrap 95% intervals.
    ///
    /// --inputs FILE.npz: one array per model input ([N, ...input shape]),
    /// `labels` (int64 [N], class indices) and optionally `valence_arousal`
    /// (float32 [N, 2]). --dataset DIR: DIR/labels.csv with columns
    /// id,face,audio,label,valence,arousal (face: .png or .y4m, audio: .wav,
    /// relative to DIR; label a class name of the manifest), or
    /// DIR/labels.jsonl with one object per line and the same fields
    /// ({"face": "f.png", "audio": "v.wav", "label": "happy", "valence":
    /// 0.6, "arousal": 0.4}), or the manifest file itself; featurized by the
    /// same preprocessing as `emogate run`. A row whose media file is missing
    /// is reported with its line and skipped. Exits with status 2 when the
    /// accuracy is below --min-acc, 1 on errors.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("against").required(true).args(["tuned", "adapter"])))]
struct AnalyzeArgs {
    /// The base model: .onnx, .safetensors, model.safetensors.index.json or a folder with one.
    #[arg(long)]
    base: PathBuf,
    /// The tuned model (same forms as --base).
    #[arg(long)]
    tuned: Option<PathBuf>,
    /// A PEFT adapter folder trained on the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The summary table groups by module type or by layer.
    #[arg(long, value_enum, default_value = "type")]
    group_by: GroupBy,
    /// Also write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also write a heat map (module type × layer) as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Rank measures only for 2-D weights whose smaller side is at most N
    /// (the Gram matrix costs N²·M, the spectrum about 10·N³).
    #[arg(long, value_name = "N", default_value_t = emogate_tools::analyze::DEFAULT_RANK_MAX_DIM)]
    rank_max_dim: usize,
    /// Also compute the effective rank exp(−Σ pᵢ ln pᵢ), pᵢ = σᵢ/Σσⱼ (Roy &
    /// Vetterli), from ΔW's full spectrum (Jacobi; slow). Without it, each
    /// such weight gets only its stable rank ‖ΔW‖_F²/σ_max(ΔW)², σ_max by
    /// power iteration to a relative 1e-12 (exact from the r×r factors with
    /// --adapter).
    #[arg(long)]
    spectrum: bool,
    /// Worker threads over tensors (default: the available cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GroupBy {
    Type,
    Layer,
}

#[derive(clap::Args)]
struct TransferArgs {
    /// The donor: a tuned ONNX model, or a PEFT adapter folder.
    #[arg(long, requires_all = ["into", "out"], conflicts_with = "adapter")]
    from: Option<PathBuf>,
    /// The model that receives the modules.
    #[arg(long)]
    into: Option<PathBuf>,
    /// Regular expression over module paths (e.g. `gate_proj`, `layers\.1\.mlp`).
    #[arg(long)]
    modules: String,
    /// Where to write the grafted model.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A PEFT adapter folder to cut down (with --out-adapter).
    #[arg(long, requires = "out_adapter")]
    adapter: Option<PathBuf>,
    /// Where to write the adapter holding only the matched modules (a new folder).
    #[arg(long)]
    out_adapter: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Skip fsync before renaming outputs into place.
    #[arg(long)]
    no_sync: bool,
}

#[derive(clap::Args)]
struct AblateArgs {
    /// The model to ablate (.onnx).
    #[arg(long)]
    model: PathBuf,
    /// Regular expression over module paths.
    #[arg(long)]
    modules: String,
    /// Only these layers (the last index in the module path): N or A-B.
    #[arg(long, value_name = "A-B")]
    layers: Option<String>,
    /// revert:BASE.onnx | zero | mean | noise:SIGMA | reinit:SEED | scale:F
    #[arg(long)]
    mode: String,
    /// Where to write the ablated model.
    #[arg(long)]
    out: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Skip fsync before renaming outputs into place.
    #[arg(long)]
    no_sync: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModalityArg {
    Face,
    Audio,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EvalBackendArg {
    Tract,
    Ort,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["inputs", "dataset"])))]
struct EvalArgs {
    /// The model to evaluate (.onnx).
    #[arg(long)]
    model: PathBuf,
    /// Labelled inputs: model input arrays + `labels` (+ `valence_arousal`).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// A folder with labels.csv (id,face,audio,label,valence,arousal) or labels.jsonl
    /// (one JSON object per line, the same fields) and its media; or that manifest file.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Feed this input as zeros, as the engine's `--missing zero` does.
    #[arg(long, value_enum)]
    zero_input: Option<ModalityArg>,
    /// Which runtime runs the model.
    #[arg(long, value_enum, default_value = "tract")]
    backend: EvalBackendArg,
    /// A second model to score on the same inputs, side by side.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Exit with status 2 when the accuracy is below X (0..1).
    #[arg(long, value_name = "X")]
    min_acc: Option<f64>,
    /// Write the featurized inputs and labels as .npz here (for --inputs).
    #[arg(long)]
    save_inputs: Option<PathBuf>,
    /// Threads of the runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(clap::Args)]
struct MergeArgs {
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
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["fp16", "int8", "int8_dynamic"])))]
struct QuantizeArgs {
    /// The f32 model (.onnx); merged models and models with external data work.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the converted model.
    #[arg(long)]
    out: PathBuf,
    /// Convert to float16 (precision-sensitive subgraphs stay f32).
    #[arg(long)]
    fp16: bool,
    /// int8 weights, symmetric, per output channel, QDQ form (TensorRT).
    #[arg(long)]
    int8: bool,
    /// DynamicQuantizeLinear + MatMulInteger (CPU runtimes; not TensorRT).
    #[arg(long)]
    int8_dynamic: bool,
    /// fp16: keep f32 graph inputs and outputs, with Casts inside (default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    keep_io_types: bool,
    /// fp16: also keep these in f32: an op type (`Softmax`) or a regular
    /// expression over node names and module paths. Repeatable.
    #[arg(long, value_name = "OP_OR_NODE_PATTERN")]
    keep_f32: Vec<String>,
    /// fp16: convert normalization and Softmax too (naive conversion; may
    /// overflow to Inf/NaN on large activations). For comparisons only.
    #[arg(long)]
    no_keep_sensitive: bool,
    /// Quantize only modules whose path matches this regular expression
    /// (e.g. `mlp`, `^blocks\.1\.`). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    modules: Vec<String>,
    /// Leave modules matching this regular expression in f32 (e.g.
    /// `gate_proj`, the affective locus). Repeatable; wins over --modules.
    #[arg(long, value_name = "PATTERN")]
    exclude_modules: Vec<String>,
    /// int8: weights with fewer elements stay f32.
    #[arg(long, default_value_t = 256, value_name = "N")]
    min_elements: usize,
    /// --int8: how each channel's scale is chosen: `mse` (the clipped scale
    /// with the least squared rounding error) or `absmax` (max|w|/127, as
    /// ONNX Runtime's quantizer).
    #[arg(long, value_enum, default_value = "mse")]
    int8_scale: ScaleArg,
    /// --int8: round weights with GPTQ, using the inputs each layer sees on
    /// N seeded calibration inputs (from the manifest, else the input
    /// shapes), run in tract. Same QDQ graph, smaller output error.
    #[arg(long, value_name = "N")]
    calibrate: Option<usize>,
    /// --int8-dynamic: one scale per output column instead of per tensor.
    #[arg(long)]
    per_channel: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Skip fsync before renaming outputs into place.
    #[arg(long)]
    no_sync: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScaleArg {
    Mse,
    Absmax,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    Tract,
    Ort,
    Both,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The model whose outputs are right (usually the f32 original).
    #[arg(long)]
    reference: PathBuf,
    /// The model to check (e.g. the output of `quantize`).
    #[arg(long)]
    candidate: PathBuf,
    /// Inputs from a NumPy .npz file: one array per model input, named after
    /// it, shaped as the input or [N, ...input shape] for N input sets.
    #[arg(long, conflicts_with = "random")]
    inputs: Option<PathBuf>,
    /// N random input sets (default 200 when --inputs is not given).
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Multiply every float input by this (tests large activations).
    #[arg(long, default_value_t = 1.0)]
    input_scale: f32,
    /// Value of a symbolic input dimension, as NAME=N (default: 1 for the
    /// first axis, 8 elsewhere). Repeatable.
    #[arg(long = "dim", value_name = "NAME=N")]
    dims: Vec<String>,
    /// Which runtime runs both models.
    #[arg(long, value_enum, default_value = "tract")]
    backend: BackendArg,
    /// Threads per runtime (1 gives stable latencies).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Fail when an output's mean relative error is above X.
    #[arg(long, value_name = "X")]
    max_rel_err: Option<f64>,
    /// Fail when a class output's top-1 agreement is below Y (0..1).
    #[arg(long, value_name = "Y")]
    min_top1: Option<f64>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
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
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {}", cli::describe(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: ran, but a verification threshold was missed.
fn run(command: Command) -> Result<bool> {
    match command {
        Command::Merge(args) => merge_cmd(args).map(|()| true),
        Command::Quantize(args) => quantize_cmd(args).map(|()| true),
        Command::Verify(args) => verify_cmd(args),
        Command::Manifest(command) => manifest_cmd(command).map(|()| true),
        Command::Analyze(args) => analyze_cmd(args).map(|()| true),
        Command::Transfer(args) => transfer_cmd(args).map(|()| true),
        Command::Ablate(args) => ablate_cmd(args).map(|()| true),
        Command::Eval(args) => eval_cmd(args),
    }
}

fn analyze_cmd(a: AnalyzeArgs) -> Result<()> {
    use emogate_tools::analyze;
    let bar = cli::progress(0, "analyzing");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let defaults = analyze::RankOptions::default();
    let ranks = analyze::RankOptions {
        max_dim: a.rank_max_dim,
        spectrum: a.spectrum,
        threads: a.threads.unwrap_or(defaults.threads).max(1),
    };
    let report = match (&a.tuned, &a.adapter) {
        (Some(t), _) => analyze::analyze_models(&a.base, t, ranks, &mut progress),
        (None, Some(d)) => analyze::analyze_adapter(&a.base, d, ranks, &mut progress),
        (None, None) => unreachable!("clap requires one"),
    };
    bar.finish_and_clear();
    let report = report?;
    print!("{}", analyze::table(&report, a.group_by == GroupBy::Layer));
    if let Some(path) = &a.report {
        atomic::write_json(path, &report)?;
    }
    if let Some(path) = &a.svg {
        atomic::write_bytes(path, analyze::heat_map_svg(&report).as_bytes())?;
    }
    Ok(())
}

fn print_graft(r: &graft::GraftReport) {
    for c in &r.copies {
        println!(
            "{:<44} {:<6} {} <- {} ({}){}",
            c.module,
            c.role.name(),
            c.initializer,
            c.from_module,
            c.from_initializer,
            if c.bit_exact { "" } else { " [converted]" }
        );
    }
    for m in &r.merged {
        println!(
            "{:<44} {:<6} merged ({}), |dW|/|W| {:.3e}",
            m.module, m.kind, m.weight, m.relative_change
        );
    }
    for c in &r.changed {
        println!(
            "{:<44} {:<6} {} {:?}",
            c.module,
            c.role.name(),
            c.initializer,
            c.shape
        );
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(s) = &r.save {
        println!("{}: wrote {}", r.operation, s.model.display());
    }
}

fn transfer_cmd(a: TransferArgs) -> Result<()> {
    match (&a.from, &a.adapter) {
        (Some(from), None) => {
            let (Some(into), Some(out)) = (&a.into, &a.out) else {
                anyhow::bail!("--from needs --into and --out");
            };
            let r = graft::transfer(from, into, &a.modules, out, !a.no_sync)?;
            print_graft(&r);
            if let Some(p) = &a.report {
                atomic::write_json(p, &r)?;
            }
        }
        (None, Some(dir)) => {
            let Some(out) = &a.out_adapter else {
                anyhow::bail!("--adapter needs --out-adapter");
            };
            let r = graft::subset_adapter(dir, &a.modules, out)?;
            println!(
                "wrote {}: {} tensors; LoRA modules: {}; modules_to_save: {}",
                r.output.display(),
                r.tensors,
                r.lora_modules.join(", "),
                if r.saved_modules.is_empty() {
                    "-".into()
                } else {
                    r.saved_modules.join(", ")
                }
            );
            if let Some(p) = &a.report {
                atomic::write_json(p, &r)?;
            }
        }
        _ => anyhow::bail!(
            "give --from DONOR --into BASE --out OUT, or --adapter DIR --out-adapter DIR2"
        ),
    }
    Ok(())
}

fn ablate_cmd(a: AblateArgs) -> Result<()> {
    let mode = graft::AblateMode::parse(&a.mode)?;
    let mut filter = emogate_models::surgery::ModuleFilter::new(&a.modules)?;
    filter.layers = a.layers.as_deref().map(graft::parse_layers).transpose()?;
    let r = graft::ablate(&a.model, &filter, &mode, &a.out, !a.no_sync)?;
    print_graft(&r);
    if let Some(p) = &a.report {
        atomic::write_json(p, &r)?;
    }
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<bool> {
    use emogate_tools::eval;
    if let Some(x) = a.min_acc
        && !(0.0..=1.0).contains(&x)
    {
        anyhow::bail!("--min-acc {x}: expected a fraction in 0..1");
    }
    let options = eval::EvalOptions {
        model: a.model,
        compare: a.compare,
        source: match (a.inputs, a.dataset) {
            (Some(p), _) => eval::EvalSource::Npz(p),
            (None, Some(d)) => eval::EvalSource::Dataset(d),
            (None, None) => unreachable!("clap requires one"),
        },
        zero_input: a.zero_input.map(|m| match m {
            ModalityArg::Face => eval::Modality::Face,
            ModalityArg::Audio => eval::Modality::Audio,
        }),
        backend: match a.backend {
            EvalBackendArg::Tract => verify::BackendKind::Tract,
            EvalBackendArg::Ort => verify::BackendKind::Ort,
        },
        threads: a.threads,
        save_inputs: a.save_inputs,
        min_acc: a.min_acc,
    };
    let r = eval::eval(&options)?;
    for s in &r.skipped {
        eprintln!(
            "skipped line {}{}: {}",
            s.line,
            s.id.as_ref().map(|i| format!(" ({i})")).unwrap_or_default(),
            s.reason
        );
    }
    println!(
        "inputs {} ({} samples{}), backend {}; 95% intervals: bootstrap, {} resamples, seed {}",
        r.inputs,
        r.models[0].scores.samples,
        r.zero_input
            .map(|z| format!(", {z:?} zeroed"))
            .unwrap_or_default(),
        r.backend.name(),
        r.bootstrap_resamples,
        r.bootstrap_seed
    );
    let ci = |s: &eval::metrics::Scored| format!("{:.4} [{:.4}, {:.4}]", s.value, s.lo, s.hi);
    println!(
        "{:<12} {}",
        "",
        r.models
            .iter()
            .map(|m| format!("{:<34}", m.model.display()))
            .collect::<String>()
    );
    let rowp = |name: &str, f: &dyn Fn(&eval::Scores) -> String| {
        println!(
            "{:<12} {}",
            name,
            r.models
                .iter()
                .map(|m| format!("{:<34}", f(&m.scores)))
                .collect::<String>()
        );
    };
    rowp("correct", &|s| format!("{}/{}", s.correct, s.samples));
    rowp("accuracy", &|s| ci(&s.accuracy));
    rowp("UAR", &|s| ci(&s.uar));
    rowp("macro-F1", &|s| ci(&s.macro_f1));
    rowp("valence RMSE", &|s| {
        s.valence
            .as_ref()
            .map(|v| ci(&v.rmse))
            .unwrap_or_else(|| "-".into())
    });
    rowp("valence CCC", &|s| {
        s.valence
            .as_ref()
            .map(|v| ci(&v.ccc))
            .unwrap_or_else(|| "-".into())
    });
    rowp("arousal RMSE", &|s| {
        s.arousal
            .as_ref()
            .map(|v| ci(&v.rmse))
            .unwrap_or_else(|| "-".into())
    });
    rowp("arousal CCC", &|s| {
        s.arousal
            .as_ref()
            .map(|v| ci(&v.ccc))
            .unwrap_or_else(|| "-".into())
    });
    for m in &r.models {
        println!(
            "confusion (rows: true, columns: predicted) of {}:",
            m.model.display()
        );
        for (k, row) in m.scores.confusion.iter().enumerate() {
            let name = r.labels.get(k).cloned().unwrap_or_else(|| k.to_string());
            println!(
                "  {:<10} {}",
                name,
                row.iter().map(|c| format!("{c:>6}")).collect::<String>()
            );
        }
    }
    if let Some(p) = &a.report {
        atomic::write_json(p, &r)?;
    }
    if !r.passed {
        println!(
            "FAIL accuracy {:.4} is below --min-acc",
            r.models[0].scores.accuracy.value
        );
    }
    Ok(r.passed)
}

fn merge_cmd(a: MergeArgs) -> Result<()> {
    let job = MergeJob {
        model: a.model,
        adapter: a.adapter,
        out: a.out,
        share_base_data: a.share_base_data,
        sync: !a.no_sync,
        threads: a.threads,
    };
    let bar = cli::progress(0, "merging");
    let result = convert::merge(&job, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let report = result?;
    print_table(&report);
    if let Some(path) = &a.report {
        atomic::write_json(path, &report)?;
    }
    Ok(())
}

fn manifest_cmd(command: ManifestCommand) -> Result<()> {
    match command {
        ManifestCommand::Set {
            model,
            manifest,
            out,
        } => {
            let m = convert::set_manifest(&model, &manifest, &out)?;
            println!("wrote {} with manifest `{}`", out.display(), m.name);
        }
        ManifestCommand::Show { model } => {
            let m = convert::embedded_manifest(&model)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
    }
    Ok(())
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

fn quantize_cmd(a: QuantizeArgs) -> Result<()> {
    let job = QuantizeJob {
        model: a.model,
        out: a.out,
        kind: if a.fp16 {
            QuantizeKind::Fp16
        } else if a.int8 {
            QuantizeKind::Int8
        } else {
            QuantizeKind::Int8Dynamic
        },
        selection: Selection {
            modules: a.modules,
            exclude: a.exclude_modules,
        },
        keep_io_types: a.keep_io_types,
        keep_f32: a.keep_f32,
        keep_sensitive: !a.no_keep_sensitive,
        min_elements: a.min_elements,
        scale: match a.int8_scale {
            ScaleArg::Mse => ScaleMethod::Mse,
            ScaleArg::Absmax => ScaleMethod::AbsMax,
        },
        calibrate: a.calibrate,
        per_channel: a.per_channel,
        sync: !a.no_sync,
    };
    let report = convert::quantize(&job)?;
    print_quantize_report(&report);
    if let Some(path) = &a.report {
        atomic::write_json(path, &report)?;
    }
    Ok(())
}

/// The converted tensors, as a table.
fn print_quantize_report(r: &QuantizeReport) {
    println!("{} conversion of {}", r.mode, r.model.display());
    println!(
        "{:<56} {:<10} {:<18} {:<38} {:>8}",
        "tensor", "op", "shape", "to", "clamped"
    );
    for t in &r.tensors {
        let name = match &t.module {
            Some(m) => format!("{} ({m})", t.name),
            None => t.name.clone(),
        };
        println!(
            "{:<56} {:<10} {:<18} {:<38} {:>8}",
            name,
            t.op,
            format!("{:?}", t.shape),
            t.to,
            t.clamped
        );
    }
    print_quantize_notes(r);
}

/// What was skipped or kept in f32, the totals, warnings and the output.
fn print_quantize_notes(r: &QuantizeReport) {
    let mb = |b: u64| b as f64 / 1e6;
    for s in &r.skipped {
        println!(
            "skipped {}{}: {}",
            s.weight,
            s.module
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            s.reason
        );
    }
    if !r.kept_f32.is_empty() {
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for k in &r.kept_f32 {
            *reasons.entry(k.reason.as_str()).or_default() += 1;
        }
        for (reason, n) in reasons {
            println!("kept in f32: {n} node(s): {reason}");
        }
    }
    println!(
        "tensors converted: {}; values clamped: {}; values flushed to zero: {}",
        r.tensors.len(),
        r.values_clamped,
        r.values_flushed_to_zero
    );
    println!(
        "size: {:.3} MB -> {:.3} MB files ({:.1}%), weights {:.3} MB -> {:.3} MB ({:.1}%)",
        mb(r.file_bytes_before),
        mb(r.file_bytes_after),
        100.0 * r.file_bytes_after as f64 / r.file_bytes_before.max(1) as f64,
        mb(r.weight_bytes_before),
        mb(r.weight_bytes_after),
        100.0 * r.weight_bytes_after as f64 / r.weight_bytes_before.max(1) as f64
    );
    for w in &r.warnings {
        println!("warning: {w}");
    }
    if let Some(s) = &r.save {
        println!(
            "wrote {}{}",
            s.model.display(),
            s.data
                .as_ref()
                .map(|d| format!(" and {}", d.display()))
                .unwrap_or_default()
        );
    }
}

fn verify_cmd(a: VerifyArgs) -> Result<bool> {
    let options = verify::VerifyOptions {
        inputs: verify::InputChoice::new(a.inputs, a.random, a.seed, a.input_scale)?,
        dims: a
            .dims
            .iter()
            .map(|d| verify::parse_dim(d))
            .collect::<Result<_, _>>()?,
        backends: match a.backend {
            BackendArg::Tract => verify::Backends::Tract,
            BackendArg::Ort => verify::Backends::Ort,
            BackendArg::Both => verify::Backends::Both,
        },
        threads: a.threads,
        thresholds: verify::Thresholds::new(a.max_rel_err, a.min_top1)?,
        reference: a.reference,
        candidate: a.candidate,
    };
    let report = verify::verify(&options)?;
    print_verify_report(&report);
    if let Some(path) = &a.report {
        atomic::write_json(path, &report)?;
    }
    if report.passed {
        println!("PASS");
    }
    for f in &report.failures {
        println!("FAIL {f}");
    }
    Ok(report.passed)
}

fn print_verify_report(report: &verify::VerifyReport) {
    println!(
        "reference {}\ncandidate {}\ninputs    {}",
        report.reference.display(),
        report.candidate.display(),
        report.inputs
    );
    println!(
        "{:<8} {:<20} {:>11} {:>11} {:>10} {:>10} {:>9} {:>11} {:>9}",
        "backend",
        "output",
        "max_abs",
        "mean_rel",
        "cos_mean",
        "cos_min",
        "top1",
        "KL",
        "nonfinite"
    );
    for b in &report.backends {
        for m in &b.outputs {
            println!(
                "{:<8} {:<20} {:>11.3e} {:>11.3e} {:>10.6} {:>10.6} {:>9} {:>11} {:>9}",
                b.backend,
                m.name,
                m.max_abs_err,
                m.mean_rel_err,
                m.cosine_mean,
                m.cosine_min,
                m.top1
                    .map(|t| format!("{:.2}%", 100.0 * t))
                    .unwrap_or_else(|| "-".into()),
                m.kl.map(|k| format!("{k:.3e}"))
                    .unwrap_or_else(|| "-".into()),
                m.nonfinite_candidate
            );
        }
        println!(
            "{:<8} latency p50: reference {:.3} ms, candidate {:.3} ms",
            b.backend, b.reference_ms_p50, b.candidate_ms_p50
        );
    }
}
