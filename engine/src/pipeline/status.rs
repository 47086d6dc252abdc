//! Live pipeline state: counters the threads update with atomics, the
//! state of each source, recent latencies, the active adapter, and the
//! inference thread's heartbeat. `/status`, every event's `counters`, the
//! scheduler's stall check and the systemd watchdog read it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::Counters;

#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub windows: AtomicU64,
    pub dropped: AtomicU64,
    pub degraded: AtomicU64,
    pub skipped: AtomicU64,
    pub audio_overruns: AtomicU64,
    pub events: AtomicU64,
    pub sink_dropped: AtomicU64,
    /// CPU time of the inference thread inside forward passes, ns.
    pub model_cpu_ns: AtomicU64,
    pub nonfinite: AtomicU64,
    pub model_errors: AtomicU64,
}

impl AtomicCounters {
    pub(crate) fn snapshot(&self) -> Counters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            windows: get(&self.windows),
            dropped: get(&self.dropped),
            degraded: get(&self.degraded),
            skipped: get(&self.skipped),
            audio_overruns: get(&self.audio_overruns),
            nonfinite: get(&self.nonfinite),
            model_errors: get(&self.model_errors),
        }
    }
}

/// One source as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceState {
    pub modality: &'static str,
    pub name: String,
    /// `opening`, `running`, `failed`, `ended`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a failed source is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    pub opens: u64,
    pub failures: u64,
}

/// Fixed facts about the run.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub model: String,
    pub backend: String,
    /// Execution providers in use, best first (`cpu` for tract).
    pub ep: Vec<&'static str>,
    pub pacing: &'static str,
    pub hop_ms: f64,
    pub window_s: f64,
    pub stale_ms: f64,
    pub missing_policy: &'static str,
    pub labels: Vec<String>,
    /// Inference busy on one window for longer than this is a stall.
    pub stall_ms: f64,
    /// The same for the first window (see `FIRST_WINDOW_STALL`).
    pub first_window_stall_ms: f64,
    /// Failing windows in a row that stop the run.
    pub max_consecutive_errors: u32,
}

/// The inference thread's heartbeat (the marks the systemd watchdog
/// reads too), its error streak, and whether it has ended.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    pub(crate) beat: crate::notify::Heartbeat,
    /// Failing windows in a row now.
    pub(crate) consecutive_errors: AtomicU32,
    /// The inference thread has returned (or panicked).
    ended: AtomicBool,
}

/// What the inference thread is doing, as the stall check and the
/// watchdog see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Liveness {
    /// How long the current window has been running, if one is.
    pub busy_for: Option<Duration>,
    /// Since the last window finished; `None` before the first.
    pub since_last_window: Option<Duration>,
    /// Windows finished so far.
    pub windows_done: u64,
    /// The inference thread is gone: nothing will be served again.
    pub ended: bool,
}

/// Shared between the pipeline threads and the status handle.
pub struct PipelineStatus {
    pub(crate) info: RunInfo,
    pub(crate) counters: AtomicCounters,
    pub(crate) heartbeat: Heartbeat,
    started: Instant,
    /// The active adapter (`None`: the base model) and the loaded ones.
    adapters: Mutex<(Option<String>, Vec<String>)>,
    /// The outcome of the last config reload, as its reply said.
    last_reload: Mutex<Option<serde_json::Value>>,
    sources: Mutex<Vec<SourceState>>,
    /// (publish time, capture-to-event latency ms) of recent events.
    recent: Mutex<VecDeque<(Instant, f64)>>,
    /// Time to write recent emotion events to every sink, ms: the last
    /// stage of a consumer's latency, after `capture_to_event`.
    sink_write: Mutex<VecDeque<f64>>,
    /// When the first event was published (cold-start accounting).
    first_event: std::sync::OnceLock<Instant>,
}

const RECENT: usize = 256;

impl PipelineStatus {
    pub(crate) fn new(info: RunInfo, active: Option<String>, adapters: Vec<String>) -> Self {
        PipelineStatus {
            info,
            counters: AtomicCounters::default(),
            heartbeat: Heartbeat::default(),
            started: Instant::now(),
            adapters: Mutex::new((active, adapters)),
            last_reload: Mutex::new(None),
            sources: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            first_event: std::sync::OnceLock::new(),
            sink_write: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// Records how long the sinks took to write one emotion event.
    pub(crate) fn record_sink_write(&self, ms: f64) {
        let mut r = self.sink_write.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(ms);
    }

    /// When the run published its first emotion event, if it has.
    pub fn first_event_at(&self) -> Option<Instant> {
        self.first_event.get().copied()
    }

    pub(crate) fn update_source(
        &self,
        modality: &'static str,
        name: &str,
        f: impl FnOnce(&mut SourceState),
    ) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let i = match sources
            .iter()
            .position(|s| s.modality == modality && s.name == name)
        {
            Some(i) => i,
            None => {
                sources.push(SourceState {
                    modality,
                    name: name.to_string(),
                    state: "opening",
                    error: None,
                    retry_in_ms: None,
                    opens: 0,
                    failures: 0,
                });
                sources.len() - 1
            }
        };
        f(&mut sources[i]);
    }

    pub(crate) fn record_event(&self, latency_ms: f64) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let _ = self.first_event.set(Instant::now());
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back((Instant::now(), latency_ms));
    }

    /// The inference thread took a window.
    pub(crate) fn window_started(&self) {
        self.heartbeat.beat.window_started();
    }

    /// The inference thread finished a window (served or failed).
    pub(crate) fn window_done(&self) {
        self.heartbeat.beat.window_finished();
    }

    /// The inference thread returned.
    pub(crate) fn inference_ended(&self) {
        self.heartbeat.ended.store(true, Ordering::SeqCst);
    }

    /// What the inference thread is doing now.
    pub fn liveness(&self) -> Liveness {
        let health = self.heartbeat.beat.health(String::new());
        Liveness {
            busy_for: health.busy_for,
            since_last_window: health.since_last_window,
            windows_done: self.heartbeat.beat.windows(),
            ended: self.heartbeat.ended.load(Ordering::SeqCst),
        }
    }

    /// What the systemd watchdog needs: the heartbeat and the summary line.
    pub fn health(&self) -> crate::notify::Health {
        self.heartbeat.beat.health(self.summary())
    }

    /// The inference thread has been on one window for longer than the
    /// run's stall limit (the first window's, before one has finished).
    pub fn is_stalled(&self) -> bool {
        let live = self.liveness();
        let ms = if live.windows_done == 0 {
            self.info.first_window_stall_ms
        } else {
            self.info.stall_ms
        };
        // From a checked `Duration`, but a library caller's limit near
        // `Duration::MAX` can round up past it: `from_secs_f64` would panic.
        let limit = Duration::try_from_secs_f64(ms / 1e3).unwrap_or(Duration::MAX);
        live.busy_for.is_some_and(|b| b > limit)
    }

    /// The active adapter (`None`: the base model).
    pub fn adapter(&self) -> Option<String> {
        self.adapters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub(crate) fn set_adapter(&self, active: Option<String>) {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner()).0 = active;
    }

    /// Records the loaded adapters' names after a reload.
    pub fn set_adapter_names(&self, names: Vec<String>) {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner()).1 = names;
    }

    /// Records a reload's outcome for `/status`.
    pub fn set_last_reload(&self, outcome: serde_json::Value) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }

    /// A one-line summary (systemd's `STATUS=`, logs).
    pub fn summary(&self) -> String {
        let c = self.counters.snapshot();
        let adapter = self.adapter().unwrap_or_else(|| "base".into());
        format!(
            "{} events, {} windows ({} dropped, {} failed, {} non-finite), adapter {adapter}",
            self.counters.events.load(Ordering::Relaxed),
            c.windows,
            c.dropped,
            c.model_errors,
            c.nonfinite,
        )
    }

    /// Counters as published in events.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// CPU time spent inside the model's forward passes so far (the rest
    /// of the process's CPU time is the pipeline's own overhead).
    pub fn model_cpu(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.counters.model_cpu_ns.load(Ordering::Relaxed))
    }

    /// The `/status` document.
    pub fn to_json(&self) -> serde_json::Value {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (rate, p50, p99) = {
            let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let last10 = r
                .iter()
                .filter(|(t, _)| now.duration_since(*t).as_secs_f64() <= 10.0)
                .count();
            let span = now
                .duration_since(self.started)
                .as_secs_f64()
                .clamp(1e-3, 10.0);
            let mut lat: Vec<f64> = r.iter().map(|(_, l)| *l).collect();
            lat.sort_by(f64::total_cmp);
            let pick = |p: f64| {
                (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * p).round() as usize])
            };
            (last10 as f64 / span, pick(0.5), pick(0.99))
        };
        let (write_p50, write_p99) = {
            let mut w: Vec<f64> = self
                .sink_write
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect();
            w.sort_by(f64::total_cmp);
            let pick =
                |p: f64| (!w.is_empty()).then(|| w[((w.len() - 1) as f64 * p).round() as usize]);
            (pick(0.5), pick(0.99))
        };
        let mut doc = serde_json::json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "sources": sources,
            "counters": self.counters.snapshot(),
            "events": self.counters.events.load(Ordering::Relaxed),
            "events_per_s": rate,
            "latency_ms": {
                "capture_to_event_p50": p50,
                "capture_to_event_p99": p99,
                "sink_write_p50": write_p50,
                "sink_write_p99": write_p99,
            },
            "sink_dropped": self.counters.sink_dropped.load(Ordering::Relaxed),
        });
        let live = self.liveness();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let state = if live.ended {
            "ended"
        } else if self.is_stalled() {
            "stalled"
        } else if live.busy_for.is_some() {
            "busy"
        } else {
            "idle"
        };
        let (active, names) = self
            .adapters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(doc) = doc.as_object_mut() {
            doc.insert("adapter".into(), active.into());
            doc.insert("adapters".into(), names.into());
            doc.insert(
                "inference".into(),
                serde_json::json!({
                    "state": state,
                    "busy_ms": ms(live.busy_for),
                    "since_last_window_ms": ms(live.since_last_window),
                    "windows_done": live.windows_done,
                    "consecutive_errors":
                        self.heartbeat.consecutive_errors.load(Ordering::Relaxed),
                }),
            );
            doc.insert(
                "last_reload".into(),
                self.last_reload
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        // The run's fixed facts sit at the top level (`model`, `backend`,
        // `ep`, …), where dashboards look for them.
        if let (Some(doc), Ok(serde_json::Value::Object(info))) =
            (doc.as_object_mut(), serde_json::to_value(&self.info))
        {
            doc.extend(info);
        }
        doc
    }
}
