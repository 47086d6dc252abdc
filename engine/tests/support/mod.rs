//! Helpers shared by the engine's integration tests: realistic messages
//! and a raw HTTP/SSE client.
#![allow(dead_code)] // each test binary uses a different part

pub mod events;
pub mod http;
