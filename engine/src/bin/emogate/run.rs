//! `emogate run`: flags and config file → a running [`Pipeline`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use emogate_device::spec::{AudioOptions, VideoOptions, is_live, open_audio, open_video};
use emogate_engine::backend_choice::BackendSettings;
use emogate_engine::config::{MAX_HOP_MS, MAX_STALE_MS, RunConfig, SourceConfig, millis};
use emogate_engine::control::unix::ControlSocket;
use emogate_engine::control::{Controller, ReloadHandle};
use emogate_engine::notify::{Notifier, Watchdog};
use emogate_engine::pipeline::{
    FaceSelect, FaceSettings, MissingPolicy, Pacing, Pipeline, PipelineConfig,
};
use emogate_engine::post::PostConfig;
use emogate_engine::sink::{ControlHandle, OpenContext, OutputSpec, Sink};
use emogate_infer::affect::{AffectModel, ModelSpec};
use emogate_infer::face::{DetectorOptions, FaceDetector};
use emogate_infer::vad::{VadOptions, VoiceDetector};
use emogate_media::StopFlag;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::reload::Reloader;

/// Settings of `emogate run`. Each overrides the same key of `--config`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// A TOML file with any of the settings below (see deploy/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model (.onnx with an emogate manifest).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sidecar manifest (emogate.manifest/1 JSON) for models that carry none.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// A gate_proj adapter to load, as NAME=DIR (PEFT folder); repeatable.
    #[arg(long = "adapter")]
    pub adapters: Vec<String>,
    /// The adapter active at start (default: the base model).
    #[arg(long)]
    pub active: Option<String>,
    /// How adapter switches are made: `slots` (default) plans the model
    /// once with a low-rank branch per adapted layer, so a switch only
    /// binds new factors (milliseconds) at a small cost per window;
    /// `replan` merges the adapter and plans the model again on every
    /// switch (no branch cost, but seconds on a large model and two
    /// models in memory while switching). Adapters that cannot run in
    /// slots (DoRA, lora_bias) always re-plan.
    #[arg(long, value_name = "slots|replan")]
    pub switch_by: Option<String>,
    /// tract (pure Rust CPU, default) or ort (ONNX Runtime; build with --features ort).
    #[arg(long)]
    pub backend: Option<String>,
    /// Threads for inference [default: 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime execution providers in order of preference, e.g. tensorrt,cuda,cpu.
    #[arg(long)]
    pub ep: Option<String>,
    /// Fail instead of falling back when a requested execution provider is unavailable.
    #[arg(long)]
    pub ep_strict: bool,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// TensorRT engine and timing cache folder.
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
    /// Video: v4l:INDEX or v4l:NAME (USB camera), gst:PIPELINE (GStreamer,
    /// e.g. a Jetson CSI camera), or a file: .y4m clip, .png still, folder of .png.
    #[arg(long)]
    pub video: Option<String>,
    /// Audio: mic:NAME or mic:default (ALSA via cpal), gst:PIPELINE, or a .wav file.
    #[arg(long)]
    pub audio: Option<String>,
    /// For models that take face crops: which faces get an emotion stream:
    /// largest, all, or N (the N largest) [default: largest].
    #[arg(long)]
    pub faces: Option<String>,
    /// The face detector (BlazeFace short-range ONNX)
    /// [default: models/face/blazeface-short.onnx, from the working directory].
    #[arg(long)]
    pub face_detector: Option<PathBuf>,
    /// Run the face detector on every Nth frame the pipeline uses (one per
    /// window) and track in between [default: 1].
    #[arg(long)]
    pub detect_every: Option<u32>,
    /// A face unseen for this many ms is lost (`face_lost`); its id is never
    /// reused [default: 1000].
    #[arg(long)]
    pub track_timeout_ms: Option<f64>,
    /// For models with audio: the voice activity detector (Silero VAD ONNX),
    /// or `off`. Each event then carries `speech_ratio`
    /// [default: models/vad/silero_vad_16k.onnx from the working directory,
    /// when it is there].
    #[arg(long)]
    pub vad: Option<String>,
    /// Treat an audio window whose speech ratio is below R (0-1) as missing
    /// audio (the --missing policy applies).
    #[arg(long, value_name = "R")]
    pub require_speech: Option<f32>,
    /// Camera width to ask for [default: 640] (the nearest mode is used).
    #[arg(long)]
    pub width: Option<u32>,
    /// Camera height to ask for [default: 480].
    #[arg(long)]
    pub height: Option<u32>,
    /// Camera frame rate to ask for [default: 30]; for a folder of frames, its frame rate [default: 10].
    #[arg(long)]
    pub fps: Option<f64>,
    /// Replay files in a loop.
    #[arg(long = "loop")]
    pub looped: bool,
    /// realtime (paced by the clock) or fast (replay as fast as possible,
    /// no drops) [default: fast when every source is a file, else realtime].
    #[arg(long)]
    pub pace: Option<String>,
    /// Time between windows in ms, above 0 and at most 60000 [default: the manifest's, else 250].
    #[arg(long)]
    pub hop_ms: Option<f64>,
    /// A modality whose newest item is older than this many ms is missing;
    /// above 0 and at most 3600000 [default: 1000].
    #[arg(long)]
    pub stale_ms: Option<f64>,
    /// A missing or stale modality: `zero` (feed zeros, mark the event
    /// degraded) or `skip` (no event) [default: zero].
    #[arg(long)]
    pub missing: Option<String>,
    /// Stop after this many windows.
    #[arg(long)]
    pub max_windows: Option<u64>,
    /// Smoothing half-life in seconds [default: 0.5].
    #[arg(long)]
    pub half_life: Option<f64>,
    /// Below this smoothed probability the label is unknown (null) [default: 0.35].
    #[arg(long)]
    pub confidence_floor: Option<f32>,
    /// Where messages go; repeatable: jsonl:- (stdout), jsonl:PATH[,rotate=SIZE][,keep=N],
    /// udp:HOST:PORT, http:[HOST:]PORT, mqtt://[USER@]HOST[:PORT]/PREFIX, mqtts://…
    /// (password and CA file: [mqtt] in --config), ros2:[DOMAIN_ID] [default: jsonl:-].
    #[arg(long = "output")]
    pub outputs: Vec<String>,
    /// Control while running: unix:PATH (a socket, one JSON request per
    /// line; access by its permissions) or http (POST /control on the
    /// http: output). Off by default. See `emogate ctl`.
    #[arg(long)]
    pub control: Option<String>,
    /// Stop with exit status 3 after this many failing windows in a row
    /// (errors or non-finite outputs), at least 1 [default: 10].
    #[arg(long)]
    pub max_consecutive_errors: Option<u32>,
    /// Inference busy on one window for longer than this many ms is a
    /// stall: report it and exit with status 4 [default: 10 hops, at least
    /// 2000; the first window, which warms the model up, 60000].
    #[arg(long)]
    pub stall_ms: Option<f64>,
    /// Adds this many ms to every forward pass (to rehearse a slower board).
    #[arg(long, hide = true)]
    pub debug_inference_delay_ms: Option<u64>,
}

/// The longest track timeout accepted, in ms (one hour).
const MAX_TRACK_TIMEOUT_MS: f64 = 3_600_000.0;

/// Where `--face-detector` looks by default: the detector shipped in the
/// repository, from the working directory.
const DEFAULT_FACE_DETECTOR: &str = "models/face/blazeface-short.onnx";

/// Where `--vad` looks by default: the detector shipped in the
/// repository, from the working directory.
const DEFAULT_VAD: &str = "models/vad/silero_vad_16k.onnx";

/// The longest stall limit accepted, in ms (one hour).
const MAX_STALL_MS: f64 = 3_600_000.0;

/// Signals handled: SIGINT/SIGTERM stop the run (flush the outputs, exit
/// 0); SIGHUP reloads `--config`.
const SIGNALS: [libc::c_int; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Raises `stop` on SIGINT or SIGTERM and reloads on SIGHUP, from a
/// thread that blocks in signal-hook's iterator: the handler itself only
/// writes to a self-pipe (all a handler may safely do), and the thread
/// wakes only when a signal comes. The handlers stay installed until the
/// process exits, so a second Ctrl-C while outputs flush is logged, not
/// fatal. A reload runs on a thread of its own: a switch it starts can
/// take seconds, and SIGTERM must not wait for it.
fn install_signal_handlers(stop: StopFlag, reload: Option<ReloadHandle>) -> Result<()> {
    let mut signals =
        Signals::new(SIGNALS).context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGINT | SIGTERM if stop.is_raised() => {
                        tracing::info!(signal, "signal received: already stopping");
                    }
                    SIGINT | SIGTERM => {
                        tracing::info!(signal, "signal received: stopping and flushing outputs");
                        stop.raise();
                    }
                    SIGHUP => match &reload {
                        None => tracing::warn!("SIGHUP: this run has no --config to reload"),
                        Some(reload) => {
                            tracing::info!("SIGHUP: reloading the config");
                            let reload = Arc::clone(reload);
                            // The outcome is logged and kept in /status by
                            // the reloader itself.
                            let spawned = std::thread::Builder::new().name("reload".into()).spawn(
                                move || {
                                    let _ = reload();
                                },
                            );
                            if let Err(e) = spawned {
                                tracing::error!(error = %e, "SIGHUP: cannot start the reload");
                            }
                        }
                    },
                    other => tracing::debug!(signal = other, "signal not handled"),
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Where `--control` listens.
enum ControlSpec {
    Unix(PathBuf),
    Http,
}

impl ControlSpec {
    fn parse(spec: &str) -> Result<Self> {
        match spec.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(ControlSpec::Unix(path.into())),
            None if spec == "http" => Ok(ControlSpec::Http),
            _ => bail!("--control `{spec}`: expected unix:PATH or http"),
        }
    }
}

/// A duration in ms from its flag or else its key in the config file,
/// checked against `(0, max_ms]`; the error names the one that was used.
fn ms_setting(
    (flag, flag_value): (&str, Option<f64>),
    (key, file_value): (&str, Option<f64>),
    config: Option<&Path>,
    max_ms: f64,
) -> Result<Option<Duration>> {
    Ok(match (flag_value, file_value) {
        (Some(v), _) => Some(millis(flag, v, max_ms)?),
        (None, Some(v)) => {
            let file = config.map_or_else(|| "--config".into(), |p| p.display().to_string());
            Some(millis(&format!("{key} in {file}"), v, max_ms)?)
        }
        (None, None) => None,
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    // Cold-start accounting (docs/benchmarks.md): where the time to the
    // first event goes, logged at info.
    let started = std::time::Instant::now();
    let file = match &args.config {
        Some(path) => RunConfig::load(path)?,
        None => RunConfig::default(),
    };
    // Checked before the model loads (seconds on a board), so a bad
    // value fails at once.
    let hop = ms_setting(
        ("--hop-ms", args.hop_ms),
        ("hop_ms", file.hop_ms),
        args.config.as_deref(),
        MAX_HOP_MS,
    )?;
    let stale = ms_setting(
        ("--stale-ms", args.stale_ms),
        ("stale_ms", file.stale_ms),
        args.config.as_deref(),
        MAX_STALE_MS,
    )?
    .unwrap_or(Duration::from_secs(1));
    let model = args
        .model
        .clone()
        .or(file.model.clone())
        .context("no model: give --model or `model` in --config")?;
    let stall = ms_setting(
        ("--stall-ms", args.stall_ms),
        ("stall_ms", file.stall_ms),
        args.config.as_deref(),
        MAX_STALL_MS,
    )?;
    let max_consecutive_errors = args
        .max_consecutive_errors
        .or(file.max_consecutive_errors)
        .unwrap_or(10);
    if max_consecutive_errors == 0 {
        bail!("--max-consecutive-errors 0: expected at least 1");
    }
    let control = args
        .control
        .as_deref()
        .or(file.control.as_deref())
        .map(ControlSpec::parse)
        .transpose()?;
    let mut adapters: Vec<(String, PathBuf)> = file.adapters.clone().into_iter().collect();
    let mut flag_adapters = Vec::new();
    for a in &args.adapters {
        let (name, dir) = emogate_infer::affect::parse_adapter_spec(a)?;
        adapters.retain(|(n, _)| *n != name);
        adapters.push((name.clone(), dir.clone()));
        flag_adapters.push((name, dir));
    }
    let settings = BackendSettings {
        backend: args.backend.clone().or(file.backend.clone()),
        threads: args.threads.or(file.threads),
        ep: args.ep.clone().or(file.ep.as_ref().map(|v| v.join(","))),
        ep_strict: args.ep_strict || file.ep_strict.unwrap_or(false),
        ort_lib: args.ort_lib.clone().or(file.ort_lib.clone()),
        trt_cache: args.trt_cache.clone().or(file.trt_cache.clone()),
    };
    let backend = settings.choice()?;
    let spec = ModelSpec {
        path: model.clone(),
        manifest: args.manifest.clone().or(file.manifest.clone()),
        backend,
        adapters,
        active: args.active.clone().or(file.active.clone()),
        switching: match args.switch_by.as_deref().or(file.switch_by.as_deref()) {
            None => Default::default(),
            Some(s) => s
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--switch-by / switch_by: {e}"))?,
        },
    };
    let affect =
        AffectModel::load(&spec).with_context(|| format!("loading {}", model.display()))?;
    let model_loaded = started.elapsed();
    if !spec.adapters.is_empty() {
        tracing::info!(
            adapters = spec.adapters.len(),
            switch_by = if affect.switches_by_slots() {
                "slots"
            } else {
                "replan"
            },
            "adapter switching"
        );
    }

    let hop = match (hop, affect.manifest().hop_ms) {
        (Some(hop), _) => hop,
        (None, Some(v)) => {
            let from = match &spec.manifest {
                Some(sidecar) => sidecar.display().to_string(),
                None => format!("the manifest of {}", model.display()),
            };
            millis(&format!("hop_ms in {from}"), v, MAX_HOP_MS)?
        }
        (None, None) => Duration::from_millis(250),
    };
    let missing = match args
        .missing
        .as_deref()
        .or(file.missing.as_deref())
        .unwrap_or("zero")
    {
        "zero" => MissingPolicy::Zero,
        "skip" => MissingPolicy::Skip,
        other => bail!("--missing `{other}`: expected zero or skip"),
    };
    let mut post = PostConfig {
        half_life_s: args.half_life.or(file.half_life).unwrap_or(0.5),
        ..PostConfig::default()
    };
    post.change.floor = args
        .confidence_floor
        .or(file.confidence_floor)
        .unwrap_or(0.35);

    let looped = args.looped || file.looped.unwrap_or(false);
    let video_cfg = merge_source(args.video.as_deref(), file.video.as_ref(), &args);
    let audio_cfg = merge_source(args.audio.as_deref(), file.audio.as_ref(), &args);
    let any_live = [&video_cfg, &audio_cfg]
        .iter()
        .any(|c| c.as_ref().is_some_and(|c| is_live(&c.source)));
    let pacing = match args.pace.as_deref().or(file.pace.as_deref()) {
        None if any_live => Pacing::RealTime,
        None => Pacing::AsFastAsPossible,
        Some("realtime") => Pacing::RealTime,
        Some("fast") if any_live => {
            bail!("--pace fast: live devices cannot be replayed faster than real time")
        }
        Some("fast") => Pacing::AsFastAsPossible,
        Some(other) => bail!("--pace `{other}`: expected realtime or fast"),
    };
    if looped && pacing == Pacing::AsFastAsPossible && args.max_windows.is_none() {
        bail!("--loop with --pace fast never ends: add --max-windows N or --pace realtime");
    }
    let video = video_cfg
        .map(|c| {
            open_video(&c.source, &{
                let d = VideoOptions::default();
                VideoOptions {
                    width: c.width.unwrap_or(d.width),
                    height: c.height.unwrap_or(d.height),
                    fps: c.fps.unwrap_or(d.fps),
                    looped,
                    dir_fps: c.fps.unwrap_or(d.dir_fps),
                }
            })
            .with_context(|| format!("--video {}", c.source))
        })
        .transpose()?;
    let audio = audio_cfg
        .map(|c| {
            open_audio(
                &c.source,
                &AudioOptions {
                    looped,
                    ..AudioOptions::default()
                },
            )
            .with_context(|| format!("--audio {}", c.source))
        })
        .transpose()?;

    let config = PipelineConfig {
        hop,
        stale,
        missing,
        post,
        max_windows: args.max_windows,
        frame_id: file.frame_id.clone().unwrap_or_else(|| "emogate".into()),
        extra_inference_delay: Duration::from_millis(args.debug_inference_delay_ms.unwrap_or(0)),
        stall,
        max_consecutive_errors,
        ..PipelineConfig::default()
    };
    let stall_limit = config.stall_limit();
    let mut pipeline = Pipeline::new(affect, video, audio, pacing, config)?;
    if pipeline.wants_faces() {
        let settings = FaceSettings {
            select: args
                .faces
                .as_deref()
                .or(file.faces.as_deref())
                .map(FaceSelect::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or(FaceSelect::Largest),
            detect_every: args.detect_every.or(file.detect_every).unwrap_or(1),
            track_timeout: ms_setting(
                ("--track-timeout-ms", args.track_timeout_ms),
                ("track_timeout_ms", file.track_timeout_ms),
                args.config.as_deref(),
                MAX_TRACK_TIMEOUT_MS,
            )?
            .unwrap_or(Duration::from_secs(1)),
        };
        let path = args
            .face_detector
            .clone()
            .or(file.face_detector.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FACE_DETECTOR));
        let detector = FaceDetector::load(&path, &spec.backend, DetectorOptions::default())
            .with_context(|| {
                format!(
                    "loading the face detector {} (the model takes face crops; \
                     give --face-detector PATH)",
                    path.display()
                )
            })?;
        pipeline = pipeline.with_faces(detector, settings)?;
    } else if args.faces.is_some()
        || args.face_detector.is_some()
        || args.detect_every.is_some()
        || args.track_timeout_ms.is_some()
    {
        bail!(
            "--faces, --face-detector, --detect-every and --track-timeout-ms are for models that \
             take face crops; {} takes the whole frame (its manifest has no \"crop\": {{\"face\": …}})",
            model.display()
        );
    }

    if pipeline.wants_audio() {
        let require = args.require_speech.or(file.require_speech);
        let setting = args.vad.clone().or(file.vad.clone());
        let path = match setting.as_deref() {
            Some("off") if require.is_some() => {
                bail!("--require-speech needs the voice activity detector; --vad is off")
            }
            Some("off") => None,
            Some(path) => Some(PathBuf::from(path)),
            None if Path::new(DEFAULT_VAD).exists() => Some(PathBuf::from(DEFAULT_VAD)),
            None if require.is_some() => bail!(
                "--require-speech needs the voice activity detector: {DEFAULT_VAD} is not \
                 here; give --vad PATH"
            ),
            None => {
                tracing::warn!(
                    "no voice activity detector ({DEFAULT_VAD} is not here; --vad PATH): \
                     events carry no speech_ratio"
                );
                None
            }
        };
        if let Some(path) = path {
            let detector = VoiceDetector::load(&path, &spec.backend, VadOptions::default())
                .with_context(|| {
                    format!("loading the voice activity detector {}", path.display())
                })?;
            pipeline = pipeline.with_speech(detector, require)?;
        }
    } else if args.vad.is_some() || args.require_speech.is_some() {
        bail!(
            "--vad and --require-speech are for models with an audio input; {} has none",
            model.display()
        );
    }

    let reloader = args.config.as_ref().map(|path| {
        Arc::new(Reloader::new(
            path.clone(),
            file.clone(),
            flag_adapters,
            args.active.is_some(),
            pipeline.switcher(),
            pipeline.status(),
        ))
    });
    let reload: Option<ReloadHandle> = reloader.as_ref().map(|r| {
        let r = Arc::clone(r);
        Arc::new(move || r.reload()) as ReloadHandle
    });
    let controller = Arc::new(Controller::new(
        pipeline.switcher(),
        pipeline.status_handle(),
        reload.clone(),
    ));
    if let Some(r) = &reloader {
        r.set_controller(Arc::clone(&controller));
    }
    let http_control: Option<ControlHandle> = match &control {
        Some(ControlSpec::Http) => {
            let c = Arc::clone(&controller);
            Some(Arc::new(move |request: &[u8]| c.handle(request)))
        }
        _ => None,
    };

    let outputs = if !args.outputs.is_empty() {
        args.outputs.clone()
    } else {
        file.outputs
            .clone()
            .unwrap_or_else(|| vec!["jsonl:-".into()])
    };
    let status = pipeline.status_handle();
    let specs = outputs
        .iter()
        .map(|o| Ok((o, OutputSpec::parse(o)?)))
        .collect::<Result<Vec<_>>>()?;
    if http_control.is_some()
        && !specs
            .iter()
            .any(|(_, s)| matches!(s, OutputSpec::Http { .. }))
    {
        bail!("--control http: add an http: output (e.g. --output http:8080) to serve it on");
    }
    let mut open_context = OpenContext::new(status.clone());
    open_context.control = http_control.clone();
    open_context.mqtt = file.mqtt.clone().unwrap_or_default();
    open_context.ros2 = file.ros2.clone().unwrap_or_default();
    open_context.frame_id = file.frame_id.clone().unwrap_or_else(|| "emogate".into());
    let ros2_control = open_context.ros2.control.unwrap_or(false);
    let sinks = specs
        .iter()
        .map(|(o, spec)| {
            let mut context = open_context.clone();
            if ros2_control && matches!(spec, OutputSpec::Ros2 { .. }) {
                let c = Arc::clone(&controller);
                context.control = Some(Arc::new(move |request: &[u8]| c.handle(request)));
            }
            let sink = spec.open_with(o, &context)?;
            tracing::info!(output = sink.name(), "output open");
            Ok(sink)
        })
        .collect::<Result<Vec<Box<dyn Sink>>>>()?;
    // Kept until the run ends; dropping it removes the socket file.
    let _control_socket = match &control {
        Some(ControlSpec::Unix(path)) => Some(ControlSocket::bind(path, Arc::clone(&controller))?),
        _ => None,
    };

    let ready = started.elapsed();
    let status_for_startup = pipeline.status();
    let stop = StopFlag::new();
    install_signal_handlers(stop.clone(), reload)?;
    // Under systemd (Type=notify): READY=1 after the first window,
    // WATCHDOG=1 while windows are served, STOPPING=1 at the end.
    let watchdog_stop = StopFlag::new();
    let watchdog = match Notifier::from_env() {
        Some(notifier) => {
            let status = pipeline.status();
            Some(
                Watchdog::new(notifier, move || status.health(), stall_limit)
                    .spawn(watchdog_stop.clone())
                    .context("starting the systemd watchdog thread")?,
            )
        }
        None => None,
    };
    release_freed_heap();
    let outcome = pipeline.run(sinks, stop);
    watchdog_stop.raise();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    let summary = outcome?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        model_ms = ms(model_loaded),
        ready_ms = ms(ready),
        first_event_ms = status_for_startup
            .first_event_at()
            .map(|t| ms(t.duration_since(started))),
        "startup: model loaded and planned, sources and outputs open, first event"
    );
    tracing::info!(
        events = summary.events,
        windows = summary.counters.windows,
        dropped = summary.counters.dropped,
        skipped = summary.counters.skipped,
        degraded = summary.counters.degraded,
        "done"
    );
    Ok(())
}

fn merge_source(
    flag: Option<&str>,
    file: Option<&SourceConfig>,
    args: &RunArgs,
) -> Option<SourceConfig> {
    let mut c = match (flag, file) {
        (Some(s), Some(f)) => SourceConfig {
            source: s.to_string(),
            ..f.clone()
        },
        (Some(s), None) => SourceConfig {
            source: s.to_string(),
            ..SourceConfig::default()
        },
        (None, Some(f)) => f.clone(),
        (None, None) => return None,
    };
    c.width = args.width.or(c.width);
    c.height = args.height.or(c.height);
    c.fps = args.fps.or(c.fps);
    Some(c)
}

/// Hands the heap's free pages back to the kernel once, before the run.
///
/// Reading and planning the models (protobuf decoding, tract's optimisation
/// passes) frees many allocations between ones that live on, and glibc keeps
/// those holes resident: 1.4 MB of the reference model's run on tract
/// (docs/benchmarks.md, "Memory"). The steady state then reuses the holes it
/// needs and never returns the rest.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_heap() {
    // SAFETY: malloc_trim only walks and madvises glibc's own free lists;
    // it takes no pointer and is safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "freed heap pages handed back");
}

/// Other allocators (musl's, macOS's) return freed pages themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_heap() {}
