//! # emogate-engine
//!
//! The runtime side of emogate. A brief overview of the principal types:
//!
//! * [`backend::Backend`] — one loaded model that runs on named tensors;
//!   [`backend::tract::TractBackend`] is the pure-Rust default.
//! * [`backend::Tensor`] — the dense tensors that cross the backend seam.

pub mod backend;
pub mod model;
pub mod offline;
pub mod post;
pub mod pre;
