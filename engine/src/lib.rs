//! # emogate-engine
//!
//! The runtime: live media in, emotion events out. A brief overview, in
//! the order data moves through it (Source → Model → Sink):
//!
//! * [`pipeline::Pipeline`] — capture sources (`emogate-device`) feed one
//!   scheduler that cuts windows (the newest frame and the last
//!   `window_s` of audio) every hop, hands each to the inference thread,
//!   and publishes what comes back; bounded latency and memory, real-time
//!   or replayed as fast as possible.
//! * The model side is `emogate-infer`: its `Featurizer` turns a window
//!   into tensors and its `AffectModel` runs them.
//! * [`post`] — output kinds, smoothing, confidence floor, change
//!   hysteresis: model outputs become an emotion, valence and arousal.
//! * [`event::Message`] — what is published: emotion events (fields of
//!   `hri_msgs/Expression` plus a capture `header.stamp`) and source notices.
//! * [`sink::Sink`] — where messages go: JSON lines, UDP datagrams, HTTP
//!   (Server-Sent Events, `/status`, a live dashboard).
//! * [`config`] — the TOML file `emogate run --config` reads.
//!
//! The `emogate` binary (`src/bin/emogate`) is the CLI over these.

pub mod backend_choice;
pub mod config;
pub mod event;
pub mod pipeline;
pub mod post;
pub mod sink;
