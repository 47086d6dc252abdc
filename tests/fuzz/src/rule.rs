//! The rule every fuzz target checks, shared by the fuzz targets
//! (`tests/fuzz`) and the regression test that replays every input that
//! ever failed (`tests/tests/fuzz_regressions.rs`, which includes this file
//! with `#[path]`):
//!
//! * never a panic or an abort (the fuzzer and the test harness catch those);
//! * never a hang: each input must finish within [`TIME_BOUND`] (libFuzzer's
//!   `-timeout`, and [`check`] in the regression test);
//! * never memory beyond a bound proportional to the input: [`Bounded`], a
//!   counting global allocator, refuses any allocation that would take the
//!   bytes live since the input started past [`memory_bound`]; a refused
//!   allocation aborts (`memory allocation of N bytes failed`), which the
//!   fuzzer reports as a crash;
//! * bad input gets an error: file parsers' messages must name the file
//!   ([`expect_names_file`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long one input may take (libFuzzer runs with `-timeout` of this).
pub const TIME_BOUND: Duration = Duration::from_secs(10);

/// Memory any input may use regardless of its size.
pub const MEMORY_BASE: usize = 64 << 20;

/// Memory each input byte may add: deflate (PNG, `.npz`) expands at most
/// about 1032×, so a format with compression can legitimately need that.
pub const MEMORY_PER_BYTE: usize = 1032;

/// The bound for an input of `len` bytes.
pub fn memory_bound(len: usize) -> usize {
    MEMORY_BASE.saturating_add(len.saturating_mul(MEMORY_PER_BYTE))
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The system allocator, counting live bytes and refusing past [`LIMIT`].
pub struct Bounded;

impl Bounded {
    fn reserve(size: usize) -> bool {
        let before = LIVE.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; the
// counters only decide whether to forward.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as received.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Lifts the memory bound before any panic hook runs: printing a panic
/// and its backtrace allocates, and a refused allocation there would hide
/// the panic (found: it turned an overflow panic into a hang).
pub fn lift_bound_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LIMIT.store(usize::MAX, Ordering::Relaxed);
            previous(info);
        }));
    });
}

/// Runs `f` on one input of `len` bytes under the memory bound (lifted
/// again afterwards, also when `f` unwinds).
pub fn bounded<R>(len: usize, f: impl FnOnce() -> R) -> R {
    lift_bound_on_panic();
    struct Lift;
    impl Drop for Lift {
        fn drop(&mut self) {
            LIMIT.store(usize::MAX, Ordering::Relaxed);
        }
    }
    let start = LIVE.load(Ordering::Relaxed);
    LIMIT.store(start.saturating_add(memory_bound(len)), Ordering::Relaxed);
    let _lift = Lift;
    f()
}

/// With `EMOGATE_FUZZ_ERRORS=FILE` set, every error message a target
/// checks is appended to FILE, one a line (newlines escaped): the audit of
/// what the errors say (docs/fuzzing.md, "What the errors name").
pub fn record(message: &str) {
    static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os("EMOGATE_FUZZ_ERRORS")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("EMOGATE_FUZZ_ERRORS names a writable file");
        Some(Mutex::new(file))
    });
    if let Some(file) = log {
        let line = message.replace('\\', "\\\\").replace('\n', "\\n");
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A file parser's error must say which file it is about. Panics (a rule
/// violation the fuzzer reports) when `message` does not name `file`.
pub fn expect_names_file(message: &str, file: &Path) {
    record(message);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        message.contains(&name),
        "error does not name the file {name:?}: {message}"
    );
}

/// An error of a parser of strings (specs, requests) must say something.
pub fn expect_message(message: &str) {
    record(message);
    assert!(!message.trim().is_empty(), "empty error message");
}
