//! Sinks: where published [`Message`]s go.
//!
//! Like ripgrep's `Sink`, a sink only receives; it never steers the
//! pipeline. Sinks run on their own thread behind a bounded queue, so a
//! slow disk or a stalled HTTP client can cost events (counted) but never
//! inference time.
//!
//! `--output` takes one of:
//! * `jsonl:-` — one JSON object per line on stdout;
//! * `jsonl:PATH[,rotate=SIZE][,keep=N]` — appended to `PATH`; with
//!   `rotate`, the file is renamed to `PATH.1` (… `PATH.N`) when it passes
//!   `SIZE` bytes (suffixes `k`, `M`, `G`);
//! * `udp:HOST:PORT` — one JSON datagram per message;
//! * `http:ADDR` — Server-Sent Events at `/events`, JSON at `/status` and a
//!   live dashboard at `/` (`ADDR` is `PORT` or `HOST:PORT`; the host
//!   defaults to 127.0.0.1);
//! * `mqtt://[USER@]HOST[:PORT]/PREFIX`, `mqtts://…` — JSON to an MQTT
//!   broker ([`mqtt`]; cargo feature `mqtt`);
//! * `ros2:[DOMAIN_ID]` — ROS 4 HRI messages over DDS ([`ros2`]; cargo
//!   feature `ros2`).

pub mod http;
pub mod jsonl;
pub mod mqtt;
pub mod ros2;
pub mod udp;

use std::sync::Arc;

use crate::event::Message;

/// Errors of sinks, naming the output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An `--output` value that does not parse.
    #[error("--output {spec}: {message}")]
    Spec { spec: String, message: String },
    /// Opening or writing the output failed.
    #[error("{target}: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// A network output could not be set up: a broker refused the
    /// credentials, TLS failed, DDS could not start.
    #[error("{target}: {message}")]
    Connect { target: String, message: String },
}

impl SinkError {
    pub(crate) fn spec(spec: &str, message: impl Into<String>) -> Self {
        SinkError::Spec {
            spec: spec.to_string(),
            message: message.into(),
        }
    }
    pub(crate) fn io(target: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            target: target.into(),
            source,
        }
    }
}

/// Receives every published message, in order, on the pipeline's sink
/// thread.
///
/// Every sink of a run shares that one thread, so an implementation should
/// return quickly: a sink that blocks delays the other sinks (never
/// inference, which hands messages over without waiting and counts what
/// the full queue cannot take as `sink_dropped`).
pub trait Sink: Send {
    /// The `--output` value this sink was made from, resolved where that
    /// matters (`http:` names the port really bound); logs name the sink
    /// by it. Cannot fail.
    fn name(&self) -> String;

    /// Publishes one message.
    ///
    /// # Errors
    /// * [`SinkError::Io`], naming the output, when writing failed: a full
    ///   disk, a closed stdout, a rotation that could not rename or reopen
    ///   the file. The pipeline logs it and carries on with the next
    ///   message, so a failed write costs that message, not the run.
    ///
    /// A sink whose losses are expected returns `Ok` and counts them
    /// instead: `udp:` (nobody listening) and `http:` (a client that cannot
    /// keep up). [`SinkError::Spec`] is never returned here: an `--output`
    /// value is checked when the sink is opened.
    fn publish(&mut self, message: &Message) -> Result<(), SinkError>;

    /// Pushes buffered messages out: called about once a second while
    /// messages flow, and once after the last message at shutdown.
    ///
    /// # Errors
    /// * [`SinkError::Io`], naming the output, when buffered messages could
    ///   not be written or synced. Logged; the run goes on, and at
    ///   shutdown still ends normally.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Live pipeline state for `/status` (sources, backend, fps, drops).
pub type StatusHandle = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Answers one control request (its raw bytes) with its JSON reply: what
/// `http:` serves at `POST /control` under `--control http`
/// ([`crate::control::Controller::handle`]).
pub type ControlHandle = Arc<dyn Fn(&[u8]) -> serde_json::Value + Send + Sync>;

/// A parsed `--output` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    Stdout,
    File {
        path: std::path::PathBuf,
        rotate_bytes: Option<u64>,
        keep: usize,
    },
    Udp {
        target: String,
    },
    Http {
        addr: std::net::SocketAddr,
    },
    Mqtt(mqtt::MqttSpec),
    Ros2 {
        domain_id: u16,
    },
}

/// What opening a sink may need besides its spec.
#[derive(Clone)]
pub struct OpenContext {
    /// Live pipeline state (`http:`'s `/status`, `ros2:`'s diagnostics).
    pub status: StatusHandle,
    /// Served by `http:` at `POST /control` and by `ros2:` on
    /// `/emogate/control` when given.
    pub control: Option<ControlHandle>,
    /// `[mqtt]` of the config file.
    pub mqtt: crate::config::MqttConfig,
    /// `[ros2]` of the config file.
    pub ros2: crate::config::Ros2Config,
    /// `frame_id` of the config file (`ros2:` diagnostics headers).
    pub frame_id: String,
}

impl OpenContext {
    /// A context with default settings and no control channel.
    pub fn new(status: StatusHandle) -> Self {
        OpenContext {
            status,
            control: None,
            mqtt: Default::default(),
            ros2: Default::default(),
            frame_id: "emogate".into(),
        }
    }
}

impl OutputSpec {
    /// Parses an `--output` value (see the module docs).
    ///
    /// # Errors
    /// [`SinkError::Spec`] naming the value and what was expected.
    pub fn parse(spec: &str) -> Result<Self, SinkError> {
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            SinkError::spec(
                spec,
                "expected jsonl:-, jsonl:PATH, udp:HOST:PORT, http:ADDR, \
                 mqtt://[USER@]HOST[:PORT]/PREFIX, mqtts://… or ros2:[DOMAIN_ID]",
            )
        })?;
        match kind {
            "mqtt" | "mqtts" => {
                let rest = rest.strip_prefix("//").ok_or_else(|| {
                    SinkError::spec(spec, format!("expected {kind}://[USER@]HOST[:PORT]/PREFIX"))
                })?;
                Ok(OutputSpec::Mqtt(mqtt::MqttSpec::parse(
                    spec,
                    kind == "mqtts",
                    rest,
                )?))
            }
            "ros2" => ros2::parse_spec(spec, rest),
            "jsonl" if rest == "-" => Ok(OutputSpec::Stdout),
            "jsonl" => jsonl::parse_file_spec(spec, rest),
            "udp" => {
                use std::net::ToSocketAddrs;
                rest.to_socket_addrs()
                    .map_err(|e| SinkError::spec(spec, format!("expected HOST:PORT ({e})")))?
                    .next()
                    .ok_or_else(|| SinkError::spec(spec, "HOST resolves to no address"))?;
                Ok(OutputSpec::Udp {
                    target: rest.to_string(),
                })
            }
            "http" => {
                let with_host = if rest.parse::<u16>().is_ok() {
                    format!("127.0.0.1:{rest}")
                } else {
                    rest.to_string()
                };
                let addr = with_host.parse().map_err(|_| {
                    SinkError::spec(
                        spec,
                        "expected PORT or IP:PORT (e.g. http:8080, http:0.0.0.0:8080)",
                    )
                })?;
                Ok(OutputSpec::Http { addr })
            }
            other => Err(SinkError::spec(
                spec,
                format!(
                    "unknown output kind `{other}`; expected jsonl, udp, http, mqtt, mqtts or ros2"
                ),
            )),
        }
    }

    /// Opens the sink. `status` feeds `http:`'s `/status`.
    ///
    /// # Errors
    /// [`SinkError::Io`] when the file cannot be opened or the address bound.
    pub fn open(&self, spec: &str, status: StatusHandle) -> Result<Box<dyn Sink>, SinkError> {
        self.open_with_control(spec, status, None)
    }

    /// As [`OutputSpec::open`]; an `http:` output also serves
    /// `POST /control` with `control` when given (other kinds ignore it).
    ///
    /// # Errors
    /// As [`OutputSpec::open`].
    pub fn open_with_control(
        &self,
        spec: &str,
        status: StatusHandle,
        control: Option<ControlHandle>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        let mut context = OpenContext::new(status);
        context.control = control;
        self.open_with(spec, &context)
    }

    /// Opens the sink with everything it may need.
    ///
    /// # Errors
    /// As [`OutputSpec::open`]; [`SinkError::Connect`] when a broker
    /// refused the connection or DDS could not start; [`SinkError::Spec`]
    /// for `mqtt`/`ros2` outputs in a build without their cargo feature.
    pub fn open_with(&self, spec: &str, context: &OpenContext) -> Result<Box<dyn Sink>, SinkError> {
        let status = context.status.clone();
        let control = context.control.clone();
        Ok(match self {
            OutputSpec::Mqtt(m) => open_mqtt(spec, m, context)?,
            OutputSpec::Ros2 { domain_id } => ros2::open(spec, *domain_id, context)?,
            OutputSpec::Stdout => Box::new(jsonl::JsonlSink::stdout()),
            OutputSpec::File {
                path,
                rotate_bytes,
                keep,
            } => Box::new(jsonl::JsonlSink::file(path, *rotate_bytes, *keep)?),
            OutputSpec::Udp { target } => Box::new(udp::UdpSink::connect(spec, target)?),
            OutputSpec::Http { addr } => {
                let sink = http::HttpSink::bind(*addr, status)?;
                if let Some(control) = control {
                    sink.serve_control(control);
                }
                Box::new(sink)
            }
        })
    }
}

#[cfg(feature = "mqtt")]
fn open_mqtt(
    spec: &str,
    m: &mqtt::MqttSpec,
    context: &OpenContext,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(mqtt::MqttSink::connect(spec, m, &context.mqtt)?))
}

#[cfg(not(feature = "mqtt"))]
fn open_mqtt(spec: &str, _: &mqtt::MqttSpec, _: &OpenContext) -> Result<Box<dyn Sink>, SinkError> {
    Err(SinkError::spec(
        spec,
        "this emogate was built without MQTT support (cargo feature `mqtt` of emogate-engine)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_output_kind() {
        assert_eq!(OutputSpec::parse("jsonl:-").unwrap(), OutputSpec::Stdout);
        assert_eq!(
            OutputSpec::parse("jsonl:/tmp/e.jsonl,rotate=2M,keep=3").unwrap(),
            OutputSpec::File {
                path: "/tmp/e.jsonl".into(),
                rotate_bytes: Some(2 << 20),
                keep: 3
            }
        );
        assert!(matches!(
            OutputSpec::parse("udp:127.0.0.1:9000").unwrap(),
            OutputSpec::Udp { .. }
        ));
        assert_eq!(
            OutputSpec::parse("http:8080").unwrap(),
            OutputSpec::Http {
                addr: "127.0.0.1:8080".parse().unwrap()
            }
        );
        assert_eq!(
            OutputSpec::parse("http:0.0.0.0:9").unwrap(),
            OutputSpec::Http {
                addr: "0.0.0.0:9".parse().unwrap()
            }
        );
    }

    #[test]
    fn bad_specs_name_the_value() {
        for (spec, needle) in [
            ("stdout", "expected jsonl:-"),
            ("mqtt:x", "expected mqtt://"),
            ("mqtt://h/a/#", "wildcard"),
            ("ftp:x", "unknown output kind `ftp`"),
            ("udp:nohost", "HOST:PORT"),
            ("http:localhost:x", "PORT or IP:PORT"),
            ("jsonl:/tmp/x,rotate=lots", "rotate"),
        ] {
            let e = OutputSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(spec) && e.contains(needle), "{spec}: {e}");
        }
    }
}
