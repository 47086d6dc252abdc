//! Starting a workspace binary from an integration test, shared by the test
//! files of several crates (`#[path = ...] mod runner;`).
//!
//! Under emulation (`scripts/test-aarch64`) the test itself runs under
//! `qemu-aarch64`, and the kernel cannot run an aarch64 child without
//! binfmt_misc; the binary is then started through the command line in
//! `EMOGATE_TEST_RUNNER` (`qemu-aarch64 -L ... -E ...`), as cargo's target
//! runner starts the test.

use std::process::Command;

/// `bin` (a `CARGO_BIN_EXE_*` path) as a command, through
/// `EMOGATE_TEST_RUNNER` when it is set.
pub fn command(bin: &str) -> Command {
    let runner = std::env::var("EMOGATE_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    match runner.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(runner).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Whether binaries run under emulation (`EMOGATE_TEST_RUNNER` is set).
#[allow(dead_code)] // not every test file that includes this module asks
pub fn emulated() -> bool {
    std::env::var("EMOGATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}
