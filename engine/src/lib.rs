//! # emogate-engine
//!
//! The runtime: live media in, emotion events out. Data moves through it
//! in one direction, Source → Model → Sink, each stage on its own threads
//! behind a bounded hand-over, so that on the real clock a slow stage
//! costs counted drops and never stalls the one before it (a replay on a
//! virtual clock waits instead, and drops nothing):
//!
//! ```text
//! sources ──ring/feed──► scheduler ──one-slot──► model + post ──queue──► sinks
//! (one thread each)      (caller's thread)       (inference thread)      (sink thread)
//! ```
//!
//! * **Source** — capture devices and files (`emogate-device`), each under
//!   a supervisor that reopens it when it fails. They fill an audio ring
//!   and a video feed stamped with capture time.
//! * [`pipeline`] — [`pipeline::Pipeline`] wires the threads. Its scheduler
//!   cuts a window every hop (the newest frame and the last `window_s` of
//!   audio, aligned by capture time), applies the missing/stale policy and
//!   hands the window to inference: on the real clock the newest window
//!   wins, on a replay's virtual clock none is dropped.
//! * **Model** — `emogate-infer`: its `Featurizer` turns a window into
//!   tensors, its `AffectModel` runs them (tract or ONNX Runtime, chosen by
//!   [`backend_choice`]).
//! * [`post`] — output kinds, smoothing, confidence floor, change
//!   hysteresis: model outputs become an emotion, valence and arousal.
//! * [`event::Message`] — what is published: emotion events (fields of
//!   `hri_msgs/Expression` plus a capture `header.stamp`) and source notices.
//! * **Sink** — [`sink::Sink`]: where messages go: JSON lines, UDP
//!   datagrams, HTTP (Server-Sent Events, `/status`, a live dashboard),
//!   MQTT brokers and ROS 2 over DDS (cargo features `mqtt`, `ros2`).
//!   Sinks only receive; they never steer the pipeline.
//! * [`config`] — the TOML file `emogate run --config` reads.
//! * [`control`] — steering a run from outside (switch the adapter, read
//!   the status, reload the config) over a Unix socket or `POST /control`;
//!   the pipeline's [`pipeline::Switcher`] prepares and installs adapters.
//! * [`notify`] — systemd's notify protocol for `Type=notify` units:
//!   `READY=1` after the first window, `WATCHDOG=1` only while windows keep
//!   being served, `STATUS=` and `STOPPING=1`.
//!
//! The `emogate` binary (`src/bin/emogate`) is the CLI over these: it
//! builds a [`pipeline::Pipeline`] from flags and `--config`, opens the
//! sinks and the control channel, reloads on SIGHUP, stops the run
//! cleanly on SIGINT/SIGTERM, and exits 3 when the model keeps failing
//! and 4 when inference stalls; `emogate ctl` is the control client. Errors in this
//! library are typed (`thiserror`), each naming the setting, source or
//! output at fault; the binaries add context with `anyhow`.

pub mod backend_choice;
pub mod config;
pub mod control;
pub mod event;
pub mod notify;
pub mod pipeline;
pub mod post;
pub mod sink;
