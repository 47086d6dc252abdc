//! # emogate-fuzz
//!
//! Coverage-guided fuzz targets for every parser of emogate's inputs, run
//! by libFuzzer (`libfuzzer-sys`) on the stable toolchain: see
//! `docs/fuzzing.md` for why this engine, how to run it, and what each
//! target has been run for.
//!
//! * [`rule`] — what every input must satisfy (no panic, time and memory
//!   bounds, errors naming the file), with the bounded allocator;
//! * [`targets`] — one function per parser, bytes in;
//! * [`graph`] — the structure-aware ONNX target;
//! * `fuzz_targets/*.rs` — one libFuzzer binary per target.
//!
//! The regression test `tests/tests/fuzz_regressions.rs` includes `rule.rs`,
//! `targets.rs` and `graph.rs` and replays every input under
//! `regressions/` without the fuzzer, in the normal test suite.

use std::path::Path;
use std::sync::OnceLock;

pub mod graph;
pub mod rule;
pub mod targets;

#[global_allocator]
static ALLOCATOR: rule::Bounded = rule::Bounded;

/// The process's scratch folder (one fuzzer process runs one input at a
/// time, so the files in it are reused from input to input).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("emogate-fuzz")
            .tempdir()
            .expect("a scratch folder")
    })
    .path()
}

/// Runs one input through `target` under the memory bound.
pub fn run(target: targets::Target, data: &[u8]) {
    rule::bounded(data.len(), || target(scratch_dir(), data));
}
