//! Helpers shared by the engine's integration tests: realistic messages,
//! a raw HTTP/SSE client and a headless Chromium driver.
#![allow(dead_code)] // each test binary uses a different part

pub mod browser;
pub mod events;
pub mod fleet;
pub mod http;
pub mod proc;
