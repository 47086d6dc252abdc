//! Live pipeline state: counters the threads update with atomics, the
//! state of each source, and recent latencies. `/status` and every event's
//! `counters` read it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
    pub adapter: Option<String>,
    pub pacing: &'static str,
    pub hop_ms: f64,
    pub window_s: f64,
    pub stale_ms: f64,
    pub missing_policy: &'static str,
    pub labels: Vec<String>,
}

/// Shared between the pipeline threads and the status handle.
pub struct PipelineStatus {
    pub(crate) info: RunInfo,
    pub(crate) counters: AtomicCounters,
    started: Instant,
    sources: Mutex<Vec<SourceState>>,
    /// (publish time, capture-to-event latency ms) of recent events.
    recent: Mutex<VecDeque<(Instant, f64)>>,
}

const RECENT: usize = 256;

impl PipelineStatus {
    pub(crate) fn new(info: RunInfo) -> Self {
        PipelineStatus {
            info,
            counters: AtomicCounters::default(),
            started: Instant::now(),
            sources: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
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
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back((Instant::now(), latency_ms));
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
        let mut doc = serde_json::json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "sources": sources,
            "counters": self.counters.snapshot(),
            "events": self.counters.events.load(Ordering::Relaxed),
            "events_per_s": rate,
            "latency_ms": { "capture_to_event_p50": p50, "capture_to_event_p99": p99 },
            "sink_dropped": self.counters.sink_dropped.load(Ordering::Relaxed),
        });
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
