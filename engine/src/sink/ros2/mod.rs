//! `ros2:[DOMAIN_ID]`: ROS 4 HRI (REP-155) messages over DDS, with the
//! pure-Rust `ros2-client` over RustDDS: no ROS installation on the board.
//!
//! | topic (DDS name) | type | QoS | what |
//! |---|---|---|---|
//! | `/emogate/expression` (`rt/emogate/expression`) | `hri_msgs/msg/Expression` | reliable, volatile, keep-last 10 | every emotion event |
//! | `/emogate/events` | `std_msgs/msg/String` | reliable, volatile, keep-last 10 | every message as its JSON line |
//! | `/diagnostics` | `diagnostic_msgs/msg/DiagnosticArray` | reliable, volatile, keep-last 10 | once a second |
//! | `/emogate/control` → `/emogate/control/reply` | `std_msgs/msg/String` | reliable | control requests, with `[ros2] control = true` |
//!
//! With face tracking (a model on face crops: events carry a face id),
//! each face's expressions go to `/humans/faces/<id>/expression` (a writer
//! made when the face appears, dropped when it is lost) and the tracked ids
//! to `/humans/faces/tracked` (`hri_msgs/msg/IdsList`, on every appearance
//! and loss, and once a second while faces are tracked), as REP-155 lays out: [`expression_topic`] routes them.
//! Events without a face go to `/emogate/expression`.
//!
//! # Parts
//! * this file — the spec and topic names (always built);
//! * [`msgs`] — the message structs (their CDR wire format) and the
//!   `/status` → `DiagnosticArray` mapping;
//! * `node` — the sink (cargo feature `ros2`): a DDS participant and its
//!   writers on a thread of their own behind a bounded queue.

pub mod msgs;
#[cfg(feature = "ros2")]
mod node;

use super::{OpenContext, OutputSpec, Sink, SinkError};

/// ROS 2's default domain (also `ROS_DOMAIN_ID`'s default).
pub const DEFAULT_DOMAIN: u16 = 0;
/// The largest domain id whose RTPS ports fit in 16 bits (7400 + 250·232).
pub const MAX_DOMAIN: u16 = 232;

/// Depth of the keep-last history of every `ros2:` writer.
pub const HISTORY_DEPTH: usize = 10;

pub const EVENTS_TOPIC: &str = "/emogate/events";
pub const DIAGNOSTICS_TOPIC: &str = "/diagnostics";
pub const TRACKED_FACES_TOPIC: &str = "/humans/faces/tracked";
pub const CONTROL_TOPIC: &str = "/emogate/control";
pub const CONTROL_REPLY_TOPIC: &str = "/emogate/control/reply";

/// Where an expression goes: the face's REP-155 topic when the event
/// names a tracked face, else `/emogate/expression`.
pub fn expression_topic(face_id: Option<&str>) -> String {
    match face_id {
        Some(id) => format!("/humans/faces/{id}/expression"),
        None => "/emogate/expression".into(),
    }
}

/// Parses the part after `ros2:`: empty (domain 0) or a domain id.
pub(crate) fn parse_spec(spec: &str, rest: &str) -> Result<OutputSpec, SinkError> {
    if rest.is_empty() {
        return Ok(OutputSpec::Ros2 {
            domain_id: DEFAULT_DOMAIN,
        });
    }
    match rest.parse::<u16>() {
        Ok(d) if d <= MAX_DOMAIN => Ok(OutputSpec::Ros2 { domain_id: d }),
        _ => Err(SinkError::spec(
            spec,
            format!(
                "`{rest}`: expected ros2: or ros2:DOMAIN_ID with a domain id from 0 to {MAX_DOMAIN}"
            ),
        )),
    }
}

#[cfg(feature = "ros2")]
pub(crate) fn open(
    spec: &str,
    domain_id: u16,
    context: &OpenContext,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(node::Ros2Sink::start(spec, domain_id, context)?))
}

#[cfg(not(feature = "ros2"))]
pub(crate) fn open(spec: &str, _: u16, _: &OpenContext) -> Result<Box<dyn Sink>, SinkError> {
    Err(SinkError::spec(
        spec,
        "this emogate was built without ROS 2 support (cargo feature `ros2` of emogate-engine)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_domain_ids_and_refuses_the_rest() {
        assert_eq!(
            parse_spec("ros2:", "").unwrap(),
            OutputSpec::Ros2 { domain_id: 0 }
        );
        assert_eq!(
            parse_spec("ros2:42", "42").unwrap(),
            OutputSpec::Ros2 { domain_id: 42 }
        );
        for bad in ["233", "-1", "x", "1.5", "7 "] {
            let e = parse_spec("ros2:X", bad).unwrap_err().to_string();
            assert!(e.contains("ros2:X") && e.contains("0 to 232"), "{bad}: {e}");
        }
    }

    #[test]
    fn expressions_follow_rep_155_when_a_face_is_known() {
        assert_eq!(expression_topic(None), "/emogate/expression");
        assert_eq!(
            expression_topic(Some("f3k2")),
            "/humans/faces/f3k2/expression"
        );
    }
}
