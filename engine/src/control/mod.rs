//! Controlling a run from outside: switch the active adapter, read the
//! status, reload the config file.
//!
//! The protocol is one JSON object per request and one per reply, the same
//! on every transport:
//!
//! | request | reply |
//! |---|---|
//! | `{"cmd": "adapter", "active": "NAME"}` (`null`: the base model) | `{"ok": true, "active", "from", "seq", "prepare_ms", "switch_ms", "replanned"}` once the new adapter serves; `seq` is the first event it produced |
//! | `{"cmd": "status"}` | the `/status` object |
//! | `{"cmd": "reload"}` | what changed: `added`, `removed`, `restart_needed` |
//!
//! A failed request gets `{"ok": false, "error": "…"}`. Only adapters
//! named in flags or the config file can be activated: a request never
//! names a path. A switch asked for while another is pending replaces it
//! (latest wins): the replaced request's reply says `superseded_by`, the
//! new one's `replaced`.
//!
//! # Parts
//! * this file — [`Command`] (parsing, with errors naming the field) and
//!   [`Controller`], which answers a request;
//! * [`unix`] — `--control unix:PATH`: a Unix socket, one request per line
//!   (access is the file's permissions);
//! * [`client`] — the other end, for `emogate ctl`: the Unix socket or
//!   `POST /control` on an `http:` output (`--control http`, served by
//!   [`crate::sink::http`]).

pub mod client;
pub mod unix;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::pipeline::Switcher;
use crate::pipeline::switch::SwitchOutcome;
use crate::sink::StatusHandle;

/// The largest request accepted, in bytes (a line on the socket, a body
/// over HTTP).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make this adapter active (`None`: the base model).
    Adapter(Option<String>),
    Status,
    Reload,
}

impl Command {
    /// Parses one request.
    ///
    /// # Errors
    /// A message naming the field at fault and what was expected.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "request of {} bytes: expected at most {MAX_REQUEST_BYTES}",
                bytes.len()
            ));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("request: expected one JSON object: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("request: expected a JSON object such as {\"cmd\": \"status\"}".into());
        };
        let cmd = match fields.get("cmd") {
            Some(Value::String(cmd)) => cmd.as_str(),
            Some(other) => return Err(format!("`cmd` is {other}: expected a string")),
            None => return Err("request has no `cmd`: expected adapter, status or reload".into()),
        };
        let allowed: &[&str] = match cmd {
            "adapter" => &["cmd", "active"],
            "status" | "reload" => &["cmd"],
            other => {
                return Err(format!(
                    "`cmd` \"{other}\": expected adapter, status or reload"
                ));
            }
        };
        if let Some(extra) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "`{extra}` is not a field of `{cmd}` (fields: {})",
                allowed.join(", ")
            ));
        }
        Ok(match cmd {
            "adapter" => match fields.get("active") {
                Some(Value::String(name)) => Command::Adapter(Some(name.clone())),
                Some(Value::Null) => Command::Adapter(None),
                Some(other) => {
                    return Err(format!(
                        "`active` is {other}: expected an adapter name or null (the base model)"
                    ));
                }
                None => {
                    return Err(
                        "`adapter` needs `active`: an adapter name or null (the base model)".into(),
                    );
                }
            },
            "status" => Command::Status,
            _ => Command::Reload,
        })
    }

    /// The request as JSON (what `emogate ctl` sends).
    pub fn to_json(&self) -> Value {
        match self {
            Command::Adapter(active) => json!({"cmd": "adapter", "active": active}),
            Command::Status => json!({"cmd": "status"}),
            Command::Reload => json!({"cmd": "reload"}),
        }
    }
}

/// Re-reads the config file and applies what can change while running;
/// the reply's fields on success (see the binary's `reload`).
pub type ReloadHandle = Arc<dyn Fn() -> Result<Value, String> + Send + Sync>;

/// Answers control requests for one run. Cheap to share (`Arc`); every
/// transport calls [`Controller::handle`].
pub struct Controller {
    switcher: Switcher,
    status: StatusHandle,
    reload: Option<ReloadHandle>,
    /// How long a switch reply waits for the new adapter to serve.
    switch_timeout: Duration,
}

impl Controller {
    /// `reload` is `None` when the run has no config file to re-read.
    pub fn new(switcher: Switcher, status: StatusHandle, reload: Option<ReloadHandle>) -> Self {
        Controller {
            switcher,
            status,
            reload,
            switch_timeout: Duration::from_secs(60),
        }
    }

    /// Sets how long a switch reply waits for the new adapter to serve
    /// (default 60 s: a large model on a board takes seconds to plan).
    pub fn with_switch_timeout(mut self, timeout: Duration) -> Self {
        self.switch_timeout = timeout;
        self
    }

    /// Answers one request (raw bytes, as received). Never panics on any
    /// input; a bad request gets `{"ok": false, "error": …}`.
    pub fn handle(&self, request: &[u8]) -> Value {
        match Command::parse(request) {
            Ok(command) => self.run(&command),
            Err(error) => json!({"ok": false, "error": error}),
        }
    }

    /// Carries out a parsed request.
    pub fn run(&self, command: &Command) -> Value {
        match command {
            Command::Status => (self.status)(),
            Command::Reload => match &self.reload {
                None => json!({
                    "ok": false, "cmd": "reload",
                    "error": "this run has no --config file to reload",
                }),
                Some(reload) => match reload() {
                    Ok(Value::Object(mut fields)) => {
                        fields.insert("ok".into(), true.into());
                        fields.insert("cmd".into(), "reload".into());
                        Value::Object(fields)
                    }
                    Ok(other) => json!({"ok": true, "cmd": "reload", "result": other}),
                    Err(error) => json!({"ok": false, "cmd": "reload", "error": error}),
                },
            },
            Command::Adapter(target) => self.switch(target.clone()),
        }
    }

    fn switch(&self, target: Option<String>) -> Value {
        let ticket = match self.switcher.request(target.clone()) {
            Ok(ticket) => ticket,
            Err(e) => return json!({"ok": false, "cmd": "adapter", "error": e.to_string()}),
        };
        let mut reply = match self.switcher.wait(&ticket, self.switch_timeout) {
            Some(SwitchOutcome::Installed(i)) => json!({
                "ok": true, "cmd": "adapter",
                "active": i.to, "from": i.from, "seq": i.seq,
                "prepare_ms": i.prepare_ms, "switch_ms": i.switch_ms,
                "replanned": i.replanned,
            }),
            Some(SwitchOutcome::Unchanged { active }) => json!({
                "ok": true, "cmd": "adapter", "active": active, "unchanged": true,
            }),
            Some(SwitchOutcome::Superseded { by }) => json!({
                "ok": false, "cmd": "adapter",
                "error": format!("superseded by a later request for {}", name_of(&by)),
                "superseded_by": by,
            }),
            Some(SwitchOutcome::Failed { error }) => {
                json!({"ok": false, "cmd": "adapter", "error": error})
            }
            None => json!({
                "ok": false, "cmd": "adapter", "pending": true,
                "error": format!(
                    "{} not in effect after {} s: no window has been served since \
                     (it takes effect at the next window)",
                    name_of(&target),
                    self.switch_timeout.as_secs_f64()
                ),
            }),
        };
        if let (Some(replaced), Some(fields)) = (ticket.replaced, reply.as_object_mut()) {
            fields.insert("replaced".into(), replaced.into());
        }
        reply
    }
}

/// `adapter \`affect-gate\`` or `the base model`, for messages.
fn name_of(target: &Option<String>) -> String {
    match target {
        Some(name) => format!("adapter `{name}`"),
        None => "the base model".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_names_what_is_wrong() {
        let ok = |s: &str| Command::parse(s.as_bytes()).unwrap();
        let err = |s: &str| Command::parse(s.as_bytes()).unwrap_err();
        assert_eq!(
            ok(r#"{"cmd":"adapter","active":"affect-gate"}"#),
            Command::Adapter(Some("affect-gate".into()))
        );
        assert_eq!(
            ok(r#"{"cmd":"adapter","active":null}"#),
            Command::Adapter(None)
        );
        assert_eq!(ok(r#" {"cmd":"status"} "#), Command::Status);
        assert_eq!(ok(r#"{"cmd":"reload"}"#), Command::Reload);
        assert!(err("").contains("expected one JSON object"));
        assert!(err("[1]").contains("expected a JSON object"));
        assert!(err("{}").contains("no `cmd`"));
        assert!(err(r#"{"cmd":7}"#).contains("`cmd` is 7"));
        assert!(err(r#"{"cmd":"dance"}"#).contains("\"dance\""));
        assert!(err(r#"{"cmd":"adapter"}"#).contains("needs `active`"));
        assert!(err(r#"{"cmd":"adapter","active":3}"#).contains("`active` is 3"));
        assert!(err(r#"{"cmd":"status","path":"/x"}"#).contains("`path` is not a field"));
        assert!(
            err(r#"{"cmd":"adapter","active":"a","dir":"/tmp/a"}"#)
                .contains("`dir` is not a field")
        );
        let big = format!(
            r#"{{"cmd":"status","pad":"{}"}}"#,
            "x".repeat(MAX_REQUEST_BYTES)
        );
        assert!(err(&big).contains("at most 65536"));
        for c in [
            Command::Adapter(Some("x".into())),
            Command::Adapter(None),
            Command::Status,
            Command::Reload,
        ] {
            assert_eq!(ok(&c.to_json().to_string()), c);
        }
    }
}
