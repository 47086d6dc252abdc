//! `adapter_switch` (`cargo bench -p emogate-engine --features ort --bench
//! adapter_switch -- [FLAGS]`): how long a user waits for an adapter switch, on
//! the reference model and on a Qwen2.5-0.5B-shaped decoder, on tract and
//! ONNX Runtime.
//!
//! A switch in `emogate run` (`engine/src/pipeline/switch.rs`): a request
//! goes to the preparer thread, which builds the new backend
//! (`Preparer::prepare`: merge the adapter in memory, load or plan it on
//! the runtime) while the inference thread keeps serving windows; before
//! its next window the inference thread installs it (a pointer swap that
//! drops the old backend). This harness does the same with two threads
//! and times, per switch:
//!
//! * **prepare**: `Preparer::prepare` on the preparer thread (for the
//!   large model, which carries no manifest, [`prepare_backend`]: the
//!   function `Preparer::prepare` calls once it has looked the adapter up);
//! * **switch**: from the request to the new backend handed to the
//!   inference thread, the `switch_ms` that `emogate run` reports in its
//!   `adapter_changed` event: prepare plus the wait for the window in
//!   flight;
//! * **install**: the swap on the inference thread, dropping the old
//!   backend: the extra delay of the first window on the new adapter.
//!
//! For the reference model it also switches through emogate's own
//! [`Pipeline`] (the sample clip looped, replayed as fast as possible) and
//! reports the `prepare_ms` and `switch_ms` its `Switcher` measured: the
//! harness rows should agree with those.
//!
//! The inference thread serves windows back to back (`--hop-ms 0`, as
//! `emogate run --pace fast` does): the preparer shares the machine with a
//! busy inference thread, and the switch waits at most one window. With
//! `--hop-ms 250` it runs a window every 250 ms, as `emogate run` at real
//! time does, and requests come at a random point of the hop: a switch then
//! also waits for the next window.
//!
//! A benchmark harness, not part of the product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use emogate_device::file_source::{VideoFile, WavFile};
use emogate_engine::backend_choice::BackendSettings;
use emogate_engine::pipeline::switch::SwitchOutcome;
use emogate_engine::pipeline::{Pacing, Pipeline, PipelineConfig};
use emogate_infer::affect::{AffectError, Prepared, Switching, prepare_backend, to_tensors};
use emogate_infer::backend::{Backend, BackendError, InputFact};
use emogate_infer::{AffectModel, Featurizer, ModelSpec, Tensor};
use emogate_media::{Frame, PixelLayout, StopFlag};
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_models::slots::SlotGraph;
use emogate_tools::synth::{DecoderSpec, write_decoder, write_gate_proj_adapter};

/// Adapter switch latency (prepare and the whole switch), p50/p99.
#[derive(Parser)]
#[command(name = "adapter_switch", version, about, long_about)]
struct Cli {
    /// Models to time: `reference` (the bundled model, adapters affect-gate and
    /// affect-all), `large` (a Qwen2.5-0.5B-shaped decoder, 2 GB of f32).
    #[arg(long, value_delimiter = ',', default_value = "reference,large")]
    models: Vec<String>,
    /// Backends, in order: tract, ort (build with --features ort).
    #[arg(long, value_delimiter = ',', default_value = "tract,ort")]
    backends: Vec<String>,
    /// How switches are made, in order: `slots` (the slot graph, planned
    /// once; emogate's default) and `replan` (merge and plan per switch).
    #[arg(long, value_delimiter = ',', default_value = "slots,replan")]
    switching: Vec<Switching>,
    /// Timed switches per backend on the reference model (affect-gate → affect-all →
    /// base → …).
    #[arg(long, default_value_t = 60)]
    switches: usize,
    /// Timed switches per backend on the large model (a → b → base → …).
    #[arg(long, default_value_t = 12)]
    large_switches: usize,
    /// Untimed rounds (one switch to each adapter and back to the base)
    /// before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup_rounds: usize,
    /// The reference model.
    #[arg(long, default_value = "models/reference/emogate-ref.onnx")]
    reference: PathBuf,
    /// Folder holding the reference model's adapters `affect-gate` and `affect-all`.
    #[arg(long, default_value = "models/reference/adapters")]
    reference_adapters: PathBuf,
    /// Where the large model and its two adapters are written (about 2 GB;
    /// reused when present). Default: $TMPDIR/emogate-switch-bench, the
    /// folder `tests/tests/switch_time_large.rs` uses.
    #[arg(long)]
    large_dir: Option<PathBuf>,
    /// Also switch the reference model through emogate's own pipeline
    /// (`no` skips it).
    #[arg(long, default_value = "yes")]
    pipeline: String,
    /// Video and audio the pipeline replays, looped.
    #[arg(long, default_value = "tests/fixtures/sample/face.y4m")]
    video: PathBuf,
    #[arg(long, default_value = "tests/fixtures/sample/voice.wav")]
    audio: PathBuf,
    /// One window every this many ms on the inference thread; 0: back to
    /// back.
    #[arg(long, default_value_t = 0.0)]
    hop_ms: f64,
    /// Inference threads per backend.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// ONNX Runtime execution providers in order of preference.
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Cli {
    fn settings(&self, backend: &str) -> BackendSettings {
        BackendSettings {
            backend: Some(backend.to_string()),
            threads: Some(self.threads),
            ep: Some(self.ep.clone()),
            ep_strict: false,
            ort_lib: self.ort_lib.clone(),
            trt_cache: None,
        }
    }
}

/// Timings in ms, one per switch.
#[derive(Default)]
struct Timings {
    /// The adapter each switch went to (`None`: the base model).
    targets: Vec<Option<String>>,
    prepare: Vec<f64>,
    switch: Vec<f64>,
    install: Vec<f64>,
    /// Every forward pass the inference thread ran (what the slot
    /// branches cost on each window).
    window: Vec<f64>,
}

/// One row group of the table.
struct Row {
    model: &'static str,
    backend: String,
    path: &'static str,
    timings: Timings,
    /// CPU time other processes (and the hypervisor's steal) took while
    /// this row ran, as a share of all the machine's CPUs.
    elsewhere: f64,
}

/// One switch as the inference thread saw it.
struct Sample {
    prepare: Duration,
    switch: Duration,
    install: Duration,
}

/// A prepared switch waiting for the inference thread (`Ready` in
/// `engine/src/pipeline/switch.rs`).
struct Ready<P> {
    target: Option<String>,
    requested_at: Instant,
    prepare: Duration,
    prepared: P,
}

/// What the inference thread owns: the model it serves windows from.
/// `P` is what a switch prepares: a [`Prepared`] for an [`AffectModel`], a
/// [`LargeSwitch`] for the large decoder.
trait Served<P>: Send {
    /// One forward pass.
    fn window(&mut self) -> Result<()>;
    /// Installs a prepared switch (binding slot factors, or swapping in
    /// a new backend and dropping the old one).
    fn install(&mut self, target: Option<String>, prepared: P) -> Result<()>;
}

/// Prepares the switch to an adapter (`None`: the base model).
type Prepare<'a, P> = dyn Fn(Option<&str>) -> Result<P, AffectError> + Sync + 'a;

/// The reference model with its manifest's inputs, built once.
struct ReferenceServed {
    model: AffectModel,
    inputs: Vec<Tensor>,
}

impl Served<Prepared> for ReferenceServed {
    fn window(&mut self) -> Result<()> {
        self.model.run(&self.inputs)?;
        Ok(())
    }

    fn install(&mut self, target: Option<String>, prepared: Prepared) -> Result<()> {
        Ok(self.model.install(target, prepared)?)
    }
}

/// A switch of the large decoder, as `AffectModel::prepare` makes them.
enum LargeSwitch {
    /// Slot factors for the running slot graph.
    Factors(Vec<Tensor>),
    /// A backend with the adapter merged.
    Backend(Box<dyn Backend>),
}

/// The large decoder: a backend and its token ids.
struct LargeServed {
    backend: Box<dyn Backend>,
    input: Tensor,
}

impl Served<LargeSwitch> for LargeServed {
    fn window(&mut self) -> Result<()> {
        self.backend.run(std::slice::from_ref(&self.input))?;
        Ok(())
    }

    fn install(&mut self, _target: Option<String>, prepared: LargeSwitch) -> Result<()> {
        match prepared {
            LargeSwitch::Factors(factors) => self.backend.bind(&factors)?,
            LargeSwitch::Backend(backend) => self.backend = backend,
        }
        Ok(())
    }
}

/// The switch targets, from the base model: each adapter in turn, then the
/// base, `warmup_rounds` times untimed and then `switches` timed ones.
/// Returns them and how many of them are warm-up.
fn schedule(
    adapters: &[&str],
    switches: usize,
    warmup_rounds: usize,
) -> (Vec<Option<String>>, usize) {
    let round: Vec<Option<String>> = adapters
        .iter()
        .map(|a| Some(a.to_string()))
        .chain([None])
        .collect();
    let warmup = warmup_rounds * round.len();
    let targets = round
        .iter()
        .cycle()
        .take(warmup + switches)
        .cloned()
        .collect();
    (targets, warmup)
}

/// Switches `served` through `targets` with a preparer thread and an
/// inference thread serving windows, as `emogate run` does.
fn run_switches<P: Send>(
    served: &mut dyn Served<P>,
    prepare: &Prepare<'_, P>,
    targets: &[Option<String>],
    warmup: usize,
    hop: Duration,
) -> Result<Timings> {
    let slot: Mutex<Option<Ready<P>>> = Mutex::new(None);
    let stop = StopFlag::new();
    let (request_tx, request_rx) = mpsc::channel::<(Option<String>, Instant)>();
    let (done_tx, done_rx) = mpsc::channel::<Result<Sample>>();
    let mut timings = Timings::default();
    let windows: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let windows_ref = &windows;
    std::thread::scope(|s| -> Result<()> {
        // The preparer thread (`Switcher::prepare_loop`).
        let preparer_done = done_tx.clone();
        let slot_ref = &slot;
        s.spawn(move || {
            for (target, requested_at) in request_rx {
                let started = Instant::now();
                match prepare(target.as_deref()) {
                    Ok(prepared) => {
                        *slot_ref.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ready {
                            target,
                            requested_at,
                            prepare: started.elapsed(),
                            prepared,
                        });
                    }
                    Err(e) => {
                        let _ = preparer_done.send(Err(anyhow!(e).context(format!(
                            "preparing {}",
                            target.as_deref().unwrap_or("the base model")
                        ))));
                    }
                }
            }
        });
        // The inference thread (`Inference::serve`, `install_prepared`).
        let stop_ref = &stop;
        s.spawn(move || {
            let mut next = Instant::now();
            while !stop_ref.is_raised() {
                let ready = slot_ref
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let mut sample = None;
                if let Some(ready) = ready {
                    let switch = ready.requested_at.elapsed();
                    let started = Instant::now();
                    if let Err(e) = served.install(ready.target, ready.prepared) {
                        let _ = done_tx.send(Err(e.context("installing a switch failed")));
                        return;
                    }
                    sample = Some(Sample {
                        prepare: ready.prepare,
                        switch,
                        install: started.elapsed(),
                    });
                }
                let started = Instant::now();
                if let Err(e) = served.window() {
                    let _ = done_tx.send(Err(e.context("a window failed")));
                    return;
                }
                windows_ref
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(started.elapsed().as_secs_f64() * 1e3);
                // Reported after the first window on the new backend ran.
                if let Some(sample) = sample {
                    let _ = done_tx.send(Ok(sample));
                }
                if !hop.is_zero() {
                    next += hop;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
        });
        let result = (|| {
            // With a hop, requests come at a random point of it, as a
            // user's would (a fixed seed: runs compare).
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
            for (i, target) in targets.iter().enumerate() {
                if i >= warmup {
                    timings.targets.push(target.clone());
                }
                if !hop.is_zero() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    std::thread::sleep(hop.mul_f64((rng >> 11) as f64 / (1u64 << 53) as f64));
                }
                request_tx
                    .send((target.clone(), Instant::now()))
                    .map_err(|_| anyhow!("the preparer thread has ended"))?;
                let sample = done_rx
                    .recv_timeout(Duration::from_secs(900))
                    .map_err(|e| anyhow!("no switch done: {e}"))??;
                if i >= warmup {
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    timings.prepare.push(ms(sample.prepare));
                    timings.switch.push(ms(sample.switch));
                    timings.install.push(ms(sample.install));
                }
            }
            Ok(())
        })();
        stop.raise();
        drop(request_tx);
        result
    })?;
    timings.window = windows.into_inner().unwrap_or_else(PoisonError::into_inner);
    Ok(timings)
}

fn reference_spec(cli: &Cli, backend: &str, switching: Switching) -> Result<ModelSpec> {
    Ok(ModelSpec {
        path: cli.reference.clone(),
        manifest: None,
        backend: cli.settings(backend).choice()?,
        adapters: ["affect-gate", "affect-all"]
            .iter()
            .map(|a| (a.to_string(), cli.reference_adapters.join(a)))
            .collect(),
        active: None,
        switching,
    })
}

/// Switches on the reference model with this harness.
fn bench_reference(cli: &Cli, backend: &str, switching: Switching) -> Result<Row> {
    let model = AffectModel::load(&reference_spec(cli, backend, switching)?)
        .with_context(|| format!("loading {}", cli.reference.display()))?;
    let mut featurizer = Featurizer::new(model.manifest())?;
    // Synthetic media of the manifest's sizes, as emogate-bench-model uses.
    let pixels: Vec<u8> = (0..320 * 240 * 3).map(|i| (i % 251) as u8).collect();
    let frame = Frame::new(320, 240, PixelLayout::Rgb8, pixels, 0)?;
    let audio: Vec<f32> = featurizer
        .audio()
        .map(|a| {
            (0..a.window_samples())
                .map(|i| (i as f32 * 0.05).sin() * 0.3)
                .collect()
        })
        .unwrap_or_default();
    let inputs = featurizer.build(
        Some(&frame),
        (!audio.is_empty()).then_some(audio.as_slice()),
    )?;
    let preparer = model.preparer();
    let prepare = |target: Option<&str>| preparer.prepare(target);
    let (targets, warmup) = schedule(
        &["affect-gate", "affect-all"],
        cli.switches,
        cli.warmup_rounds,
    );
    let slotted = model.switches_by_slots();
    if slotted != (switching == Switching::Slots) {
        bail!("asked for {switching:?} but the model switches by slots: {slotted}");
    }
    let mut served = ReferenceServed { model, inputs };
    let timings = run_switches(&mut served, &prepare, &targets, warmup, hop(cli))?;
    Ok(Row {
        model: "reference",
        backend: served.model.backend_name().to_string(),
        path: path_name("harness", switching),
        timings,
        elsewhere: f64::NAN,
    })
}

/// Switches on the reference model through emogate's own pipeline and its
/// `Switcher`: the numbers its `adapter_changed` events carry.
fn bench_reference_pipeline(cli: &Cli, backend: &str, switching: Switching) -> Result<Row> {
    let model = AffectModel::load(&reference_spec(cli, backend, switching)?)
        .with_context(|| format!("loading {}", cli.reference.display()))?;
    let backend_name = model.backend_name().to_string();
    let video = VideoFile::open(&cli.video, 10.0, true)
        .with_context(|| format!("opening {}", cli.video.display()))?;
    let audio = WavFile::open(&cli.audio, true)
        .with_context(|| format!("opening {}", cli.audio.display()))?;
    let pipeline = Pipeline::new(
        model,
        Some(Box::new(video)),
        Some(Box::new(audio)),
        Pacing::AsFastAsPossible,
        PipelineConfig::default(),
    )?;
    let switcher = pipeline.switcher();
    let stop = StopFlag::new();
    let (targets, warmup) = schedule(
        &["affect-gate", "affect-all"],
        cli.switches,
        cli.warmup_rounds,
    );
    let mut timings = Timings::default();
    std::thread::scope(|s| -> Result<()> {
        let run_stop = stop.clone();
        let run = s.spawn(move || pipeline.run(Vec::new(), run_stop));
        let result = (|| {
            for (i, target) in targets.iter().enumerate() {
                let ticket = switcher.request(target.clone())?;
                match switcher.wait(&ticket, Duration::from_secs(120)) {
                    Some(SwitchOutcome::Installed(done)) => {
                        if i >= warmup {
                            timings.targets.push(target.clone());
                            timings.prepare.push(done.prepare_ms);
                            timings.switch.push(done.switch_ms);
                        }
                    }
                    other => bail!("switch to {target:?}: {other:?}"),
                }
            }
            Ok(())
        })();
        stop.raise();
        let summary = run.join().map_err(|_| anyhow!("the pipeline panicked"))?;
        result?;
        summary?;
        Ok(())
    })?;
    Ok(Row {
        model: "reference",
        backend: backend_name,
        path: path_name("pipeline", switching),
        timings,
        elsewhere: f64::NAN,
    })
}

/// The large decoder and its adapters `a` and `b` in `dir`, written when
/// missing.
fn large_files(dir: &Path, spec: &DecoderSpec) -> Result<(PathBuf, [PathBuf; 2])> {
    let model = dir.join("base/model.onnx");
    if !model.exists() {
        eprintln!(
            "writing the Qwen2.5-0.5B-shaped decoder to {} (about 2 GB)…",
            dir.display()
        );
        write_decoder(&dir.join("base"), spec, 7, &mut |_| {})
            .with_context(|| format!("writing {}", model.display()))?;
    }
    // `adapter` is switch_time_large's (rank 16, alpha 32, seed 11).
    let adapters = [dir.join("adapter"), dir.join("adapter-b")];
    for (adapter, seed) in adapters.iter().zip([11, 12]) {
        if !adapter.join("adapter_config.json").exists() {
            write_gate_proj_adapter(adapter, spec, 16, 32.0, seed)
                .with_context(|| format!("writing {}", adapter.display()))?;
        }
    }
    Ok((model, adapters))
}

/// Switches on the large decoder: the same merge and load as
/// `Preparer::prepare` ([`prepare_backend`]), given the token-id input the
/// model takes (it carries no emogate manifest, so no `AffectModel`).
fn bench_large(cli: &Cli, backend: &str, dir: &Path, switching: Switching) -> Result<Row> {
    let spec = DecoderSpec::qwen2_5_0_5b();
    let (model_path, adapter_dirs) = large_files(dir, &spec)?;
    let runtime = cli.settings(backend).choice()?.runtime();
    let onnx = OnnxModel::load(&model_path)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let mut adapters = BTreeMap::new();
    for (name, dir) in ["a", "b"].iter().zip(&adapter_dirs) {
        adapters.insert(
            name.to_string(),
            Adapter::load(dir).with_context(|| format!("loading {}", dir.display()))?,
        );
    }
    let mut facts = vec![InputFact::I64(vec![1, spec.seq_len])];
    let rss_before = rss_kb("VmRSS");
    let started = Instant::now();
    // What `AffectModel::load` and `AffectModel::prepare` do, for a model
    // without a manifest.
    let slots = match switching {
        Switching::Slots => {
            let all: Vec<&Adapter> = adapters.values().collect();
            Some(SlotGraph::new(&onnx, &all).map_err(|e| anyhow!("slot graph: {e}"))?)
        }
        Switching::Replan => None,
    };
    let base = match &slots {
        Some(slots) => {
            facts.extend(
                slots
                    .inputs()
                    .iter()
                    .map(|i| InputFact::F32(i.dims.clone())),
            );
            let mut backend = runtime.load_graph(&onnx, slots.proto(), &facts)?;
            let zeros = slots.factors(&onnx, None).map_err(|e| anyhow!("{e}"))?;
            backend.bind(&to_tensors(zeros))?;
            backend
        }
        None => prepare_backend(runtime.as_ref(), &onnx, None, &facts)?,
    };
    let prepare = |target: Option<&str>| -> Result<LargeSwitch, AffectError> {
        let adapter = target.map(|name| &adapters[name]);
        match &slots {
            Some(slots) => slots
                .factors(&onnx, adapter)
                .map(|f| LargeSwitch::Factors(to_tensors(f)))
                .map_err(|e| {
                    AffectError::Backend(BackendError::Config {
                        field: "slots".into(),
                        message: e.to_string(),
                    })
                }),
            None => {
                prepare_backend(runtime.as_ref(), &onnx, adapter, &facts).map(LargeSwitch::Backend)
            }
        }
    };
    eprintln!(
        "large model on {} ({switching:?}): base loaded in {:.2} s; RSS {:.0} → {:.0} MB",
        base.name(),
        started.elapsed().as_secs_f64(),
        rss_before / 1024.0,
        rss_kb("VmRSS") / 1024.0,
    );
    let backend_name = base.name().to_string();
    let mut served = LargeServed {
        backend: base,
        input: Tensor::i64(
            vec![1, spec.seq_len],
            (0..spec.seq_len as i64).map(|i| i * 37 % 1000).collect(),
        ),
    };
    let started = Instant::now();
    served.window()?;
    eprintln!(
        "large model on {backend_name}: one window {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let (targets, warmup) = schedule(&["a", "b"], cli.large_switches, cli.warmup_rounds);
    let rss_loaded = rss_kb("VmRSS");
    let timings = run_switches(&mut served, &prepare, &targets, warmup, hop(cli))?;
    eprintln!(
        "large model on {backend_name} ({switching:?}): RSS after load {:.0} MB, now {:.0} MB; \
         peak {:.0} MB (the process's, since it started)",
        rss_loaded / 1024.0,
        rss_kb("VmRSS") / 1024.0,
        rss_kb("VmHWM") / 1024.0,
    );
    Ok(Row {
        model: "Qwen2.5-0.5B-shaped",
        backend: backend_name,
        path: path_name("harness", switching),
        timings,
        elsewhere: f64::NAN,
    })
}

/// `--hop-ms` as a `Duration`; NaN, negative and absurd values (which would
/// panic in `Duration::from_secs_f64`) fall back to no pause.
fn hop(cli: &Cli) -> Duration {
    Duration::try_from_secs_f64(cli.hop_ms.max(0.0) / 1e3).unwrap_or_else(|_| {
        eprintln!(
            "--hop-ms {}: not a usable number of milliseconds; using 0",
            cli.hop_ms
        );
        Duration::ZERO
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_row(row: &Row) {
    for (what, values) in [
        ("prepare", &row.timings.prepare),
        ("switch", &row.timings.switch),
        ("install", &row.timings.install),
        ("window", &row.timings.window),
    ] {
        if values.is_empty() {
            continue;
        }
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let fmt = |x: f64| {
            if x < 10.0 {
                format!("{x:.2}")
            } else {
                format!("{x:.1}")
            }
        };
        println!(
            "| {} | {} | {} | {what} | {} | {} | {} | {} | {} | {:.0} % |",
            row.model,
            row.backend,
            row.path,
            v.len(),
            fmt(percentile(&v, 0.5)),
            fmt(percentile(&v, 0.99)),
            fmt(v[0]),
            fmt(v[v.len() - 1]),
            row.elsewhere * 100.0,
        );
    }
}

/// Medians per target: a switch to the base model merges nothing.
fn print_by_target(row: &Row) {
    let mut seen: Vec<&Option<String>> = Vec::new();
    for target in &row.timings.targets {
        if !seen.contains(&target) {
            seen.push(target);
        }
    }
    for target in seen {
        let pick = |values: &[f64]| {
            let mut v: Vec<f64> = values
                .iter()
                .zip(&row.timings.targets)
                .filter(|(_, t)| *t == target)
                .map(|(v, _)| *v)
                .collect();
            v.sort_by(f64::total_cmp);
            (v.len(), percentile(&v, 0.5))
        };
        let (n, prepare) = pick(&row.timings.prepare);
        let (_, switch) = pick(&row.timings.switch);
        println!(
            "| {} | {} | {} | {} | {n} | {prepare:.1} | {switch:.1} |",
            row.model,
            row.backend,
            row.path,
            target.as_deref().unwrap_or("base"),
        );
    }
}

/// CPU seconds the whole machine has been busy (steal included), and this
/// process's own.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            // user nice system idle iowait irq softirq steal
            let idle = fields.get(3)? + fields.get(4)?;
            Some((fields.iter().sum::<f64>() - idle) / tick)
        })
        .unwrap_or(f64::NAN);
    // SAFETY: getrusage fills a plain struct for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let own = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    } else {
        f64::NAN
    };
    (machine, own)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`), NaN if unreadable.
fn rss_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// `harness/slots`, `pipeline/replan`, …
fn path_name(path: &'static str, switching: Switching) -> &'static str {
    match (path, switching) {
        ("harness", Switching::Slots) => "harness/slots",
        ("harness", Switching::Replan) => "harness/replan",
        ("pipeline", Switching::Slots) => "pipeline/slots",
        _ => "pipeline/replan",
    }
}

fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills a plain struct for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // `cargo bench` starts this in engine/; the default paths are from the
    // repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root)
        .with_context(|| format!("entering the repository root {}", root.display()))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let large_dir = cli
        .large_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("emogate-switch-bench"));
    let mut rows = Vec::new();
    for model in &cli.models {
        for backend in &cli.backends {
            let paths: &[&str] = match model.as_str() {
                "reference" if cli.pipeline != "no" => &["harness", "pipeline"],
                "reference" | "large" => &["harness"],
                other => bail!("--models: `{other}`: expected reference or large"),
            };
            for (path, switching) in paths
                .iter()
                .flat_map(|p| cli.switching.iter().map(move |s| (p, *s)))
            {
                let before = load_average();
                let cpu_before = cpu_seconds();
                let started = Instant::now();
                let row = match (model.as_str(), *path) {
                    ("large", _) => bench_large(&cli, backend, &large_dir, switching),
                    (_, "pipeline") => bench_reference_pipeline(&cli, backend, switching),
                    _ => bench_reference(&cli, backend, switching),
                };
                let mut row =
                    row.with_context(|| format!("{model} on {backend} ({path}, {switching:?})"))?;
                let wall = started.elapsed().as_secs_f64();
                let cpu_after = cpu_seconds();
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                row.elsewhere = ((cpu_after.0 - cpu_before.0) - (cpu_after.1 - cpu_before.1))
                    .max(0.0)
                    / (wall * cpus);
                eprintln!(
                    "{model} on {backend} ({path}, {switching:?}): {wall:.1} s; load average {before} before, {} after; \
                     other processes {:.0} % of {cpus} CPUs; peak RSS so far {:.0} MB",
                    load_average(),
                    row.elsewhere * 100.0,
                    peak_rss_mb()
                );
                rows.push(row);
            }
        }
    }
    println!(
        "adapter switch latency, ms (prepare: merge in memory + load on the preparer thread; \
         switch: request to installed on the inference thread, windows {}; \
         install: the swap, dropping the old backend; elsewhere: CPU other processes took \
         meanwhile, share of all CPUs)",
        if cli.hop_ms > 0.0 {
            format!("every {} ms", cli.hop_ms)
        } else {
            "back to back".into()
        }
    );
    println!();
    println!("| model | backend | path | timed | n | p50 | p99 | min | max | elsewhere |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        print_row(row);
    }
    println!();
    println!("| model | backend | path | to | n | prepare p50 | switch p50 |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        print_by_target(row);
    }
    println!();
    println!("command: {command}");
    println!(
        "threads: {}; load average at the end: {}; peak RSS: {:.0} MB",
        cli.threads,
        load_average(),
        peak_rss_mb()
    );
    Ok(())
}
