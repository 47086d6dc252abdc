//! `mqtt://[USER@]HOST[:PORT]/TOPIC_PREFIX` and `mqtts://…` (TLS): every
//! message as JSON to an MQTT broker, for fleets of robots and field kits.
//!
//! Topics, with `DEVICE` the `[mqtt] device_id` (default: the hostname):
//! * `PREFIX/DEVICE/events` — every message, as the JSONL line, at the
//!   configured QoS (`[mqtt] qos`, 0 or 1; default 1);
//! * `PREFIX/DEVICE/status` — retained: `online` with the delivery
//!   counters after every (re)connect, `offline` at a clean stop, and the
//!   broker publishes the last will (`offline`, `connection lost`) when the
//!   link dies.
//!
//! The password never appears on the command line: it comes from
//! `[mqtt] password` or the variable `[mqtt] password_env` names; a spec
//! with `USER:PASSWORD@` is refused.
//!
//! # Parts
//! * this file — [`MqttSpec`]: parsing and checking the `--output` value
//!   (always built, so a bad spec is named even where the client is not);
//! * `client` — the sink (cargo feature `mqtt`): a bounded outbox the sink
//!   thread fills without waiting, drained by a connection thread that
//!   reconnects with backoff and drops the oldest messages when full.

#[cfg(feature = "mqtt")]
mod client;
#[cfg(feature = "mqtt")]
pub use client::{MqttCounters, MqttSink};

use super::SinkError;

/// A parsed `mqtt://` or `mqtts://` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSpec {
    pub tls: bool,
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// Without a trailing `/`; may hold several levels (`fleet/site-3`).
    pub prefix: String,
}

impl MqttSpec {
    /// Parses `rest`, the part after `mqtt://` (or `mqtts://` when `tls`).
    ///
    /// # Errors
    /// [`SinkError::Spec`] naming `spec` and what was expected.
    pub fn parse(spec: &str, tls: bool, rest: &str) -> Result<Self, SinkError> {
        let form = if tls {
            "mqtts://[USER@]HOST[:PORT]/TOPIC_PREFIX"
        } else {
            "mqtt://[USER@]HOST[:PORT]/TOPIC_PREFIX"
        };
        let (authority, prefix) = rest.split_once('/').ok_or_else(|| {
            SinkError::spec(
                spec,
                format!("expected {form}: the topic prefix is missing"),
            )
        })?;
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((user, hostport)) => {
                if user.contains(':') {
                    return Err(SinkError::spec(
                        spec,
                        "a password on the command line is refused (it would show in ps and \
                         shell history): put it in the config file as [mqtt] password, or \
                         name an environment variable with [mqtt] password_env",
                    ));
                }
                if user.is_empty() {
                    return Err(SinkError::spec(spec, "the user name before @ is empty"));
                }
                (Some(user.to_string()), hostport)
            }
            None => (None, authority),
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = split_host_port(hostport).ok_or_else(|| {
            SinkError::spec(
                spec,
                format!("expected {form}: `{hostport}` is not HOST or HOST:PORT"),
            )
        })?;
        let port =
            match port {
                None => default_port,
                Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                    SinkError::spec(spec, format!("port `{p}`: expected 1 to 65535"))
                })?,
            };
        let prefix = prefix.trim_end_matches('/');
        check_topic_part(spec, "topic prefix", prefix)?;
        Ok(MqttSpec {
            tls,
            user,
            host: host.to_string(),
            port,
            prefix: prefix.to_string(),
        })
    }

    /// `PREFIX/DEVICE/events`.
    pub fn events_topic(&self, device_id: &str) -> String {
        format!("{}/{device_id}/events", self.prefix)
    }

    /// `PREFIX/DEVICE/status` (retained).
    pub fn status_topic(&self, device_id: &str) -> String {
        format!("{}/{device_id}/status", self.prefix)
    }
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    valid.then_some((host, port))
}

/// Refuses what would make the topic a filter or ambiguous: wildcards
/// (`+`, `#`), empty levels, a leading `/`, a `$` start (broker topics),
/// NUL. `what` names the part in the error.
pub(crate) fn check_topic_part(spec: &str, what: &str, s: &str) -> Result<(), SinkError> {
    let problem = if s.is_empty() {
        Some("is empty".to_string())
    } else if s.contains(['+', '#']) {
        Some("contains an MQTT wildcard (+ or #); a publisher needs a plain topic".into())
    } else if s.starts_with('$') {
        Some("starts with $, which brokers reserve for their own topics".into())
    } else if s.split('/').any(str::is_empty) {
        Some("has an empty level (a leading or doubled /)".into())
    } else if s.contains('\0') {
        Some("contains a NUL character".into())
    } else if s.len() > 1024 {
        Some("is longer than 1024 bytes".into())
    } else {
        None
    };
    match problem {
        Some(p) => Err(SinkError::spec(spec, format!("{what} `{s}` {p}"))),
        None => Ok(()),
    }
}

/// The device's name in topics: `configured`, else the hostname. One
/// topic level: no `/`, wildcards or `$`.
///
/// # Errors
/// [`SinkError::Spec`] when the name would not be a single plain level.
pub fn device_id(spec: &str, configured: Option<&str>) -> Result<String, SinkError> {
    let id = match configured {
        Some(id) => id.to_string(),
        None => hostname().ok_or_else(|| {
            SinkError::spec(
                spec,
                "the hostname could not be read: set [mqtt] device_id in the config file",
            )
        })?,
    };
    if id.contains('/') {
        return Err(SinkError::spec(
            spec,
            format!("device_id `{id}` contains /; it must be one topic level"),
        ));
    }
    check_topic_part(spec, "device_id", &id)?;
    Ok(id)
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_host_port_and_prefix() {
        let s = MqttSpec::parse("x", false, "robot7@broker.lan:1884/fleet/site-3/").unwrap();
        assert_eq!(
            s,
            MqttSpec {
                tls: false,
                user: Some("robot7".into()),
                host: "broker.lan".into(),
                port: 1884,
                prefix: "fleet/site-3".into()
            }
        );
        assert_eq!(s.events_topic("kit1"), "fleet/site-3/kit1/events");
        let s = MqttSpec::parse("x", true, "[::1]/emo").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.user), ("::1", 8883, None));
        assert_eq!(
            MqttSpec::parse("x", false, "10.0.0.2/e").unwrap().port,
            1883
        );
    }

    #[test]
    fn refuses_passwords_wildcards_and_malformed_parts() {
        for (rest, needle) in [
            ("u:secret@h/p", "password on the command line"),
            ("h", "topic prefix is missing"),
            ("h/", "topic prefix `` is empty"),
            ("h/fleet/+", "wildcard"),
            ("h/fleet/#", "wildcard"),
            ("h/a//b", "empty level"),
            ("h/$SYS", "starts with $"),
            ("h:0/p", "port `0`"),
            ("h:99999/p", "port `99999`"),
            ("h:x/p", "port `x`"),
            ("@h/p", "user name before @ is empty"),
            ("/p", "is not HOST"),
            ("h o/p", "is not HOST"),
            ("[::1/p", "is not HOST"),
        ] {
            let e = MqttSpec::parse("mqtt://SPEC", false, rest)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("mqtt://SPEC") && e.contains(needle),
                "{rest}: {e}"
            );
        }
    }

    #[test]
    fn device_id_is_one_plain_level() {
        assert_eq!(device_id("s", Some("kit-1")).unwrap(), "kit-1");
        assert!(!device_id("s", None).unwrap().is_empty());
        for bad in ["a/b", "a+", "#", "", "$x"] {
            assert!(device_id("s", Some(bad)).is_err(), "{bad}");
        }
    }
}
