//! The ROS 2 messages `ros2:` publishes, as serde structs whose field
//! order is the `.msg` definition's: RustDDS serializes them as CDR, so a
//! struct here is the wire format of its ROS type.
//!
//! Sources of the definitions: `hri_msgs/msg/Expression.msg` and
//! `IdsList.msg` of ROS 4 HRI (REP-155, github.com/ros4hri/hri_msgs);
//! `std_msgs/Header`, `builtin_interfaces/Time` and `diagnostic_msgs` of
//! ROS 2 (the same in Humble and Jazzy).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

impl Header {
    /// From an event's header. ROS time has an `int32` second: the stamp
    /// is clamped to its range (good until 2038, as in ROS itself).
    pub fn from_event(h: &crate::event::Header) -> Self {
        Header {
            stamp: Time {
                sec: h.stamp.sec.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                nanosec: h.stamp.nanosec,
            },
            frame_id: h.frame_id.clone(),
        }
    }

    /// Now, on the wall clock.
    pub fn now(frame_id: &str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Header {
            stamp: Time {
                sec: now.as_secs().min(i32::MAX as u64) as i32,
                nanosec: now.subsec_nanos(),
            },
            frame_id: frame_id.to_string(),
        }
    }
}

/// `hri_msgs/msg/Expression`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Expression {
    pub header: Header,
    /// The stable label; empty while no label passes the confidence floor.
    pub expression: String,
    /// -1 … 1; NaN when the model does not estimate it.
    pub valence: f32,
    /// -1 … 1; NaN when the model does not estimate it.
    pub arousal: f32,
    /// 0 … 1: the smoothed probability of `expression`; 0 when it is empty.
    pub confidence: f32,
}

impl Expression {
    pub fn from_event(e: &Event) -> Self {
        Expression {
            header: Header::from_event(&e.header),
            expression: e.expression.clone().unwrap_or_default(),
            valence: e.valence.unwrap_or(f32::NAN),
            arousal: e.arousal.unwrap_or(f32::NAN),
            confidence: e.confidence.unwrap_or(0.0),
        }
    }
}

/// `hri_msgs/msg/IdsList`: the faces being tracked (`/humans/faces/tracked`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IdsList {
    pub header: Header,
    pub ids: Vec<String>,
}

/// `diagnostic_msgs/msg/KeyValue`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `diagnostic_msgs/msg/DiagnosticStatus` (`level` is a `byte`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<KeyValue>,
}

pub const OK: u8 = 0;
pub const WARN: u8 = 1;
pub const ERROR: u8 = 2;

/// `diagnostic_msgs/msg/DiagnosticArray`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiagnosticArray {
    pub header: Header,
    pub status: Vec<DiagnosticStatus>,
}

#[cfg(feature = "ros2")]
mod message_impls {
    use super::*;
    impl ros2_client::Message for Time {}
    impl ros2_client::Message for Header {}
    impl ros2_client::Message for Expression {}
    impl ros2_client::Message for IdsList {}
    impl ros2_client::Message for KeyValue {}
    impl ros2_client::Message for DiagnosticStatus {}
    impl ros2_client::Message for DiagnosticArray {}
}

/// A JSON value as a diagnostic value string (strings unquoted, `null`
/// empty).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The `/status` document as diagnostics: one status for the pipeline
/// (backend, execution providers, counters, drops, latency) and one per
/// capture source. `extra` adds values to the pipeline's (this output's
/// own drops).
pub fn diagnostics(
    status: &Value,
    frame_id: &str,
    hardware_id: &str,
    extra: &[(&str, String)],
) -> DiagnosticArray {
    let kv = |key: &str, value: String| KeyValue {
        key: key.to_string(),
        value,
    };
    let get = |path: &[&str]| {
        let mut v = status;
        for p in path {
            v = v.get(p).unwrap_or(&Value::Null);
        }
        text(v)
    };
    let inference_state = get(&["inference", "state"]);
    let sources = status
        .get("sources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let any_failed = sources
        .iter()
        .any(|s| s.get("state").and_then(Value::as_str) == Some("failed"));
    let (level, message) = if inference_state == "stalled" {
        (ERROR, "inference stalled".to_string())
    } else if any_failed {
        (WARN, "a capture source failed".to_string())
    } else {
        (OK, format!("inference {inference_state}"))
    };
    let mut values = vec![
        kv("backend", get(&["backend"])),
        kv("execution_providers", get(&["ep"])),
        kv("model", get(&["model"])),
        kv("adapter", get(&["adapter"])),
        kv("inference_state", inference_state),
        kv("events", get(&["events"])),
        kv("events_per_s", get(&["events_per_s"])),
        kv("windows", get(&["counters", "windows"])),
        kv("windows_dropped", get(&["counters", "dropped"])),
        kv("windows_degraded", get(&["counters", "degraded"])),
        kv("windows_skipped", get(&["counters", "skipped"])),
        kv("model_errors", get(&["counters", "model_errors"])),
        kv("nonfinite", get(&["counters", "nonfinite"])),
        kv("audio_overruns", get(&["counters", "audio_overruns"])),
        kv("sink_dropped", get(&["sink_dropped"])),
        kv(
            "latency_capture_to_event_p50_ms",
            get(&["latency_ms", "capture_to_event_p50"]),
        ),
        kv(
            "latency_capture_to_event_p99_ms",
            get(&["latency_ms", "capture_to_event_p99"]),
        ),
        kv("uptime_s", get(&["uptime_s"])),
    ];
    values.extend(extra.iter().map(|(k, v)| kv(k, v.clone())));
    let mut out = vec![DiagnosticStatus {
        level,
        name: "emogate: pipeline".into(),
        message,
        hardware_id: hardware_id.to_string(),
        values,
    }];
    for s in &sources {
        let field = |k: &str| text(s.get(k).unwrap_or(&Value::Null));
        let state = field("state");
        let level = match state.as_str() {
            "running" | "ended" => OK,
            "failed" => ERROR,
            _ => WARN,
        };
        let error = field("error");
        out.push(DiagnosticStatus {
            level,
            name: format!("emogate: {} source", field("modality")),
            message: if error.is_empty() {
                state.clone()
            } else {
                format!("{state}: {error}")
            },
            hardware_id: field("name"),
            values: vec![
                kv("state", state),
                kv("opens", field("opens")),
                kv("failures", field("failures")),
                kv("retry_in_ms", field("retry_in_ms")),
            ],
        });
    }
    DiagnosticArray {
        header: Header::now(frame_id),
        status: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_carry_backend_drops_latency_and_sources() {
        let status = serde_json::json!({
            "backend": "tract", "ep": ["cpu"], "model": "m.onnx", "adapter": null,
            "events": 12, "events_per_s": 4.0, "sink_dropped": 0, "uptime_s": 3.0,
            "counters": {"windows": 13, "dropped": 1, "degraded": 0, "skipped": 0,
                         "model_errors": 0, "nonfinite": 0, "audio_overruns": 0},
            "latency_ms": {"capture_to_event_p50": 2.5, "capture_to_event_p99": 7.0},
            "inference": {"state": "idle"},
            "sources": [{"modality": "video", "name": "v4l:0", "state": "failed",
                         "error": "gone", "opens": 1, "failures": 2, "retry_in_ms": 500}]
        });
        let d = diagnostics(&status, "cam", "emogate", &[("ros2_dropped", "0".into())]);
        assert_eq!(d.header.frame_id, "cam");
        let p = &d.status[0];
        assert_eq!((p.level, p.name.as_str()), (WARN, "emogate: pipeline"));
        let value = |k: &str| p.values.iter().find(|v| v.key == k).unwrap().value.clone();
        assert_eq!(value("backend"), "tract");
        assert_eq!(value("execution_providers"), "cpu");
        assert_eq!(value("windows_dropped"), "1");
        assert_eq!(value("latency_capture_to_event_p99_ms"), "7.0");
        assert_eq!(value("adapter"), "");
        assert_eq!(value("ros2_dropped"), "0");
        let s = &d.status[1];
        assert_eq!(s.level, ERROR);
        assert_eq!(s.name, "emogate: video source");
        assert_eq!(s.message, "failed: gone");
        assert_eq!(s.hardware_id, "v4l:0");
    }
}
