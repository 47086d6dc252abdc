//! systemd's notify protocol: readiness, status and the watchdog.
//!
//! Under `Type=notify` systemd hands the service a datagram socket in
//! `NOTIFY_SOCKET` and waits for `READY=1` before it counts the service as
//! started; with `WatchdogSec=` it also sets `WATCHDOG_USEC` and kills and
//! restarts the service (`Restart=on-failure`) when no `WATCHDOG=1` arrives
//! within that time. Each message is one datagram of newline-separated
//! `KEY=VALUE` assignments (sd_notify(3)).
//!
//! * [`Notifier`] sends those datagrams. It never panics and never waits
//!   on the socket; a failed send is logged once per run of failures.
//! * [`Watchdog`] is the policy, on its own thread: `READY=1` once the first
//!   window has been served, `WATCHDOG=1` only while windows keep being
//!   served (so a stalled pipeline goes quiet and systemd restarts it),
//!   `STATUS=` when the one-line summary changes, `STOPPING=1` when the run's
//!   [`StopFlag`] is raised. The decisions are a pure step,
//!   [`WatchdogState::decide`], tested without threads or sockets.
//! * [`Heartbeat`] is what the inference thread marks around each window,
//!   so that [`Health`] can tell how long ago the last one finished.
//!
//! Why not the `sd-notify` crate (0.5.0, MIT OR Apache-2.0, which was the
//! first choice): it reads `NOTIFY_SOCKET` again on every call and opens a
//! fresh, blocking socket each time, so a notifier cannot own its address,
//! a send can block while systemd's queue is full, and tests cannot aim it
//! at a socket of their own without the process-wide environment; and it
//! treats an abstract address (`@name`, which systemd documents and
//! containers use) as a file path. Its `watchdog_enabled()` (which honours
//! `WATCHDOG_PID`) would do, but is a few lines, no reason for a dependency
//! on its own. The protocol is a datagram on a Unix socket, which std does
//! well, so it is written here.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emogate_media::StopFlag;

/// The longest `STATUS=` text sent, in bytes. systemd reads a notification
/// into a buffer of a few KiB and drops longer ones whole; a status line is
/// for `systemctl status`, which shows one line anyway.
const STATUS_MAX: usize = 1024;

/// Errors of the notify protocol, naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A `NOTIFY_SOCKET` value this notifier cannot send to.
    #[error("NOTIFY_SOCKET={address}: {reason}")]
    Address { address: String, reason: String },
    /// Creating the socket or sending a datagram failed (no listener, a full
    /// queue: the socket never waits).
    #[error("NOTIFY_SOCKET={address}: {source}")]
    Io {
        address: String,
        #[source]
        source: io::Error,
    },
}

/// One assignment of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `READY=1`: start-up is finished.
    Ready,
    /// `WATCHDOG=1`: the keep-alive ping.
    Watchdog,
    /// `STATUS=...`: a one-line summary for `systemctl status`. Newlines
    /// become spaces and text past 1 KiB is cut when it is sent, since a
    /// newline would start another assignment.
    Status(String),
    /// `STOPPING=1`: shutdown has begun.
    Stopping,
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notification::Ready => f.write_str("READY=1"),
            Notification::Watchdog => f.write_str("WATCHDOG=1"),
            Notification::Status(text) => write!(f, "STATUS={}", one_line(text)),
            Notification::Stopping => f.write_str("STOPPING=1"),
        }
    }
}

/// `text` with line breaks and other control characters as spaces, cut to
/// [`STATUS_MAX`] bytes on a character boundary.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(STATUS_MAX));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > STATUS_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// A sender of notifications to systemd (or any manager that speaks the
/// protocol). `Send + Sync`: the watchdog thread and others may share it.
#[derive(Debug)]
pub struct Notifier {
    /// As given, for logs and errors.
    address: String,
    addr: SocketAddr,
    /// Unbound and non-blocking. Unconnected on purpose: each datagram is
    /// addressed anew, so a manager that recreated its socket (a systemd
    /// re-exec) is still reached.
    socket: UnixDatagram,
    watchdog_timeout: Option<Duration>,
    /// Set while sends fail, so a dead socket costs one warning, not one per
    /// ping.
    failing: AtomicBool,
}

impl Notifier {
    /// The notifier systemd asked for, from `NOTIFY_SOCKET`, with the
    /// watchdog timeout from `WATCHDOG_USEC` (ignored when `WATCHDOG_PID`
    /// names another process, as sd_watchdog_enabled(3) says).
    ///
    /// `None` when `NOTIFY_SOCKET` is unset or empty (not started by systemd,
    /// or not as `Type=notify`), and when it cannot be used (logged as a
    /// warning): notifying is a service nicety, never a reason not to run.
    ///
    /// The variables are left set: removing them is `unsafe` once threads
    /// exist, and a child that inherits them (GStreamer's plugin scanner)
    /// sends nothing, which `NotifyAccess=main` would ignore anyway.
    pub fn from_env() -> Option<Notifier> {
        let address = std::env::var_os("NOTIFY_SOCKET").filter(|a| !a.is_empty())?;
        let watchdog = watchdog_timeout_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match Notifier::connect(&address) {
            Ok(n) => Some(n.with_watchdog_timeout(watchdog)),
            Err(e) => {
                tracing::warn!(error = %e, "systemd notifications are off");
                None
            }
        }
    }

    /// A notifier for `address`: an absolute path of a Unix datagram socket,
    /// or `@name` for a Linux abstract socket; no watchdog timeout. Nothing
    /// is sent yet, so a socket with no listener is not an error here.
    ///
    /// # Errors
    /// [`NotifyError::Address`] for a relative path, a path too long for a
    /// socket address, or a `vsock:` address (systemd 253+ for VMs, which a
    /// capture device does not run in); [`NotifyError::Io`] when no socket
    /// can be created.
    pub fn connect(address: impl AsRef<OsStr>) -> Result<Notifier, NotifyError> {
        let raw = address.as_ref();
        let shown = raw.to_string_lossy().into_owned();
        let addr = parse_address(raw).map_err(|reason| NotifyError::Address {
            address: shown.clone(),
            reason,
        })?;
        let io_err = |source| NotifyError::Io {
            address: shown.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(io_err)?;
        // Non-blocking: a send to a full queue (the manager busy or hung)
        // fails at once instead of stalling the caller; the next ping is
        // only an interval away, and the watchdog re-sends READY and STATUS.
        socket.set_nonblocking(true).map_err(io_err)?;
        Ok(Notifier {
            address: shown,
            addr,
            socket,
            watchdog_timeout: None,
            failing: AtomicBool::new(false),
        })
    }

    /// The same notifier with the watchdog timeout `timeout` (what
    /// `WATCHDOG_USEC` says; `None`: no watchdog).
    pub fn with_watchdog_timeout(mut self, timeout: Option<Duration>) -> Notifier {
        self.watchdog_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The socket address as given (`/run/systemd/notify`, `@name`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long systemd waits for a `WATCHDOG=1` before it kills the
    /// service (`WatchdogSec=`); `None` without a watchdog.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog_timeout
    }

    /// How often to send `WATCHDOG=1`: half the timeout, as
    /// sd_watchdog_enabled(3) recommends, so one late ping is not fatal.
    /// `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_timeout.map(|t| t / 2)
    }

    /// Sends `batch` as one datagram (systemd applies all of it or, when the
    /// datagram is lost, none). Never blocks and never panics.
    ///
    /// # Errors
    /// [`NotifyError::Io`] when the datagram did not go out. It is already
    /// logged: a warning for the first failure, then nothing until a send
    /// succeeds again (logged at info); the error is for callers that retry.
    pub fn send(&self, batch: &[Notification]) -> Result<(), NotifyError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut message = String::new();
        for n in batch {
            message.push_str(&n.to_string());
            message.push('\n');
        }
        let result = match self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            Ok(sent) if sent == message.len() => Ok(()),
            Ok(sent) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            )),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::trace!(address = %self.address, message = %message.trim_end(), "sd_notify");
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(address = %self.address, "systemd notifications are delivered again");
                }
                Ok(())
            }
            Err(source) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        address = %self.address,
                        error = %source,
                        "systemd notification not delivered; further failures are not logged until one succeeds"
                    );
                }
                Err(NotifyError::Io {
                    address: self.address.clone(),
                    source,
                })
            }
        }
    }

    /// Sends `READY=1`; a failure is only logged (see [`Notifier::send`]).
    pub fn ready(&self) {
        let _ = self.send(&[Notification::Ready]);
    }

    /// Sends `WATCHDOG=1`; a failure is only logged.
    pub fn watchdog(&self) {
        let _ = self.send(&[Notification::Watchdog]);
    }

    /// Sends `STATUS=text` (made one line); a failure is only logged.
    pub fn status(&self, text: &str) {
        let _ = self.send(&[Notification::Status(text.to_string())]);
    }

    /// Sends `STOPPING=1`; a failure is only logged.
    pub fn stopping(&self) {
        let _ = self.send(&[Notification::Stopping]);
    }
}

/// The socket address of a `NOTIFY_SOCKET` value, or why it cannot be used.
fn parse_address(raw: &OsStr) -> Result<SocketAddr, String> {
    let bytes = raw.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(Path::new(raw)).map_err(|e| e.to_string()),
        Some(b'@') => abstract_address(&bytes[1..]),
        _ if bytes.starts_with(b"vsock:") => {
            Err("vsock addresses are not supported (only Unix sockets)".to_string())
        }
        _ => Err("not an absolute socket path or @abstract name".to_string()),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(|e| e.to_string())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> Result<SocketAddr, String> {
    Err("abstract socket names exist on Linux only".to_string())
}

/// The watchdog timeout that `WATCHDOG_USEC` and `WATCHDOG_PID` give
/// process `own_pid`: none when unset, zero or unparsable, or when
/// `WATCHDOG_PID` is set to anything but `own_pid` (the variables were
/// inherited from a parent the watchdog is meant for).
fn watchdog_timeout_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// What the pipeline tells the watchdog each time it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the first window has been served. `READY=1` waits for it, so
    /// `systemctl start` returns once the model really runs (a model that
    /// fails to load or a source that never delivers fails the start after
    /// `TimeoutStartSec=` instead).
    pub first_window_served: bool,
    /// Time since the inference thread last finished a window; `None`
    /// before the first.
    pub since_last_window: Option<Duration>,
    /// `Some(d)` while the inference thread has been working on one window
    /// for `d`, `None` while it waits for one. Only tells a stuck model from
    /// a scheduler or sources that deliver nothing, in the log and STATUS.
    pub busy_for: Option<Duration>,
    /// One line for `systemctl status`, e.g. `serving: 1234 windows, 4.0/s`.
    pub summary: String,
}

impl Health {
    /// Whether the pipeline is stalled: windows were served once, but none
    /// finished within `stall_limit` (or, inconsistently, none ever did).
    /// Never before the first window: start-up has its own limit.
    pub fn is_stalled(&self, stall_limit: Duration) -> bool {
        self.first_window_served && self.since_last_window.is_none_or(|d| d > stall_limit)
    }
}

/// Where the [`Watchdog`] gets [`Health`] from; any `Fn() -> Health` is one.
pub trait HealthSource {
    /// The pipeline's health now. Called on the watchdog thread every poll,
    /// so it should be cheap (atomics, a short lock).
    fn health(&self) -> Health;
}

impl<F: Fn() -> Health> HealthSource for F {
    fn health(&self) -> Health {
        self()
    }
}

/// The progress of the inference thread, marked with two atomic stores per
/// window and read from any thread. Share it in an `Arc`.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Nanoseconds after `origin` (at least 1; 0: never) of the last
    /// start and finish of a window.
    started_ns: AtomicU64,
    finished_ns: AtomicU64,
    windows: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

impl Heartbeat {
    /// No window started yet.
    pub fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            started_ns: AtomicU64::new(0),
            finished_ns: AtomicU64::new(0),
            windows: AtomicU64::new(0),
        }
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The inference thread took a window.
    pub fn window_started(&self) {
        self.started_ns.store(self.stamp(), Ordering::Relaxed);
    }

    /// The inference thread finished (served) a window.
    pub fn window_finished(&self) {
        self.finished_ns.store(self.stamp(), Ordering::Relaxed);
        self.windows.fetch_add(1, Ordering::Relaxed);
    }

    /// Windows finished so far.
    pub fn windows(&self) -> u64 {
        self.windows.load(Ordering::Relaxed)
    }

    /// [`Health`] from these marks: served once a window finished, with
    /// `summary` as the status line. The two stamps are read separately
    /// (relaxed), so a read racing a mark can be one window off, which moves
    /// a stall verdict by at most one poll.
    pub fn health(&self, summary: impl Into<String>) -> Health {
        let now = self.stamp();
        let started = self.started_ns.load(Ordering::Relaxed);
        let finished = self.finished_ns.load(Ordering::Relaxed);
        let ago = |t: u64| Duration::from_nanos(now.saturating_sub(t));
        Health {
            first_window_served: self.windows() > 0,
            since_last_window: (finished > 0).then(|| ago(finished)),
            busy_for: (started > finished).then(|| ago(started)),
            summary: summary.into(),
        }
    }
}

/// The watchdog's memory between polls, and its one decision step.
#[derive(Debug, Clone)]
pub struct WatchdogState {
    stall_limit: Duration,
    ping_every: Option<Duration>,
    ready_sent: bool,
    status_sent: Option<String>,
    last_ping: Option<Instant>,
    stalled: bool,
}

impl WatchdogState {
    /// Nothing sent yet. `stall_limit`: how long without a finished window
    /// counts as stalled; `ping_every`: the `WATCHDOG=1` interval
    /// ([`Notifier::watchdog_interval`]; `None`: no watchdog, no pings).
    pub fn new(stall_limit: Duration, ping_every: Option<Duration>) -> WatchdogState {
        WatchdogState {
            stall_limit,
            ping_every,
            ready_sent: false,
            status_sent: None,
            last_ping: None,
            stalled: false,
        }
    }

    /// What to send now, given `health` at time `now`; records it as sent.
    ///
    /// * `READY=1` the first time `health` says a window has been served;
    /// * `STATUS=` when the status line differs from the last one sent: the
    ///   summary, or, while stalled, `stalled: ...` followed by it;
    /// * `WATCHDOG=1` after `READY=1`, at most every `ping_every`, and only
    ///   while not [stalled](Health::is_stalled): once windows stop, pings
    ///   stop, and systemd restarts the service `WatchdogSec=` after the
    ///   last one. They resume if windows do before that.
    ///
    /// A stall and its end are logged here (warning, info), once each.
    pub fn decide(&mut self, health: &Health, now: Instant) -> Vec<Notification> {
        let mut out = Vec::new();
        let stalled = health.is_stalled(self.stall_limit);
        let waiting = if health.busy_for.is_some() {
            "inference busy on one window"
        } else {
            "no window reached inference"
        };
        if stalled != self.stalled {
            self.stalled = stalled;
            if stalled {
                tracing::warn!(
                    since_last_window = ?health.since_last_window,
                    busy_for = ?health.busy_for,
                    stall_limit = ?self.stall_limit,
                    "pipeline stalled ({waiting}): watchdog pings stop, systemd restarts the service unless windows resume"
                );
            } else {
                tracing::info!("pipeline serves windows again: watchdog pings resume");
            }
        }
        if health.first_window_served && !self.ready_sent {
            self.ready_sent = true;
            out.push(Notification::Ready);
        }
        let status = if stalled {
            // Fixed wording while stalled (no counting seconds), so the line
            // is sent once, not every poll.
            format!(
                "stalled: no window finished within {:?} ({waiting}); {}",
                self.stall_limit, health.summary
            )
        } else {
            health.summary.clone()
        };
        if self.status_sent.as_deref() != Some(status.as_str()) {
            self.status_sent = Some(status.clone());
            out.push(Notification::Status(status));
        }
        if let Some(every) = self.ping_every
            && self.ready_sent
            && !stalled
            && self
                .last_ping
                .is_none_or(|last| now.saturating_duration_since(last) >= every)
        {
            self.last_ping = Some(now);
            out.push(Notification::Watchdog);
        }
        out
    }

    /// Forgets that `batch` (from [`WatchdogState::decide`]) was sent, since
    /// its datagram was lost: `READY=1` and the status go again next poll,
    /// and so does a ping if still healthy.
    pub fn undelivered(&mut self, batch: &[Notification]) {
        for n in batch {
            match n {
                Notification::Ready => self.ready_sent = false,
                Notification::Status(_) => self.status_sent = None,
                Notification::Watchdog => self.last_ping = None,
                Notification::Stopping => {}
            }
        }
    }
}

/// The driver: polls a [`HealthSource`] and notifies systemd, on its own
/// thread, until a [`StopFlag`] is raised.
pub struct Watchdog<H> {
    notifier: Notifier,
    health: H,
    state: WatchdogState,
    poll: Duration,
}

impl<H: HealthSource> Watchdog<H> {
    /// A watchdog that calls a stall `stall_limit` without a finished
    /// window and pings at the notifier's [`watchdog_interval`]. It polls
    /// every second, or every half interval when that is shorter, so that
    /// `READY=1` and a new status follow the pipeline within a second.
    ///
    /// systemd restarts a stalled pipeline between `stall_limit` +
    /// `WatchdogSec/2` and `stall_limit` + `WatchdogSec` after its last
    /// window.
    ///
    /// [`watchdog_interval`]: Notifier::watchdog_interval
    pub fn new(notifier: Notifier, health: H, stall_limit: Duration) -> Watchdog<H> {
        let ping_every = notifier.watchdog_interval();
        let poll = ping_every.map_or(Duration::from_secs(1), |i| {
            (i / 2).clamp(Duration::from_millis(1), Duration::from_secs(1))
        });
        Watchdog {
            notifier,
            health,
            state: WatchdogState::new(stall_limit, ping_every),
            poll,
        }
    }

    /// The same watchdog polling every `poll` (at least 1 ms).
    pub fn with_poll(mut self, poll: Duration) -> Watchdog<H> {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Polls and notifies until `stop` is raised, then sends `STATUS=stopping`
    /// and `STOPPING=1` and returns. Send failures are logged by the
    /// [`Notifier`] and retried as [`WatchdogState::undelivered`] says.
    pub fn run(mut self, stop: &StopFlag) {
        while !stop.is_raised() {
            let health = self.health.health();
            let batch = self.state.decide(&health, Instant::now());
            if self.notifier.send(&batch).is_err() {
                self.state.undelivered(&batch);
            }
            sleep_unless(stop, self.poll);
        }
        let _ = self.notifier.send(&[
            Notification::Status("stopping".to_string()),
            Notification::Stopping,
        ]);
    }

    /// [`Watchdog::run`] on a new thread named `sd-watchdog`.
    ///
    /// # Errors
    /// When the thread cannot be created.
    pub fn spawn(self, stop: StopFlag) -> io::Result<JoinHandle<()>>
    where
        H: Send + 'static,
    {
        std::thread::Builder::new()
            .name("sd-watchdog".to_string())
            .spawn(move || self.run(&stop))
    }
}

/// Sleeps `total`, in slices, returning early once `stop` is raised, so
/// that `STOPPING=1` follows a stop within a few tens of milliseconds.
fn sleep_unless(stop: &StopFlag, total: Duration) {
    let deadline = Instant::now() + total;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.is_raised() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);
    const PING: Duration = Duration::from_secs(15);

    fn health(served: bool, since: Option<u64>, summary: &str) -> Health {
        Health {
            first_window_served: served,
            since_last_window: since.map(Duration::from_secs),
            busy_for: None,
            summary: summary.to_string(),
        }
    }

    fn status(text: &str) -> Notification {
        Notification::Status(text.to_string())
    }

    #[test]
    fn nothing_but_status_before_the_first_window() {
        let mut s = WatchdogState::new(LIMIT, Some(PING));
        let t0 = Instant::now();
        assert_eq!(
            s.decide(&health(false, None, "starting"), t0),
            [status("starting")]
        );
        // Long before the first window is not a stall: start-up has
        // TimeoutStartSec, and no ping goes out before READY=1.
        assert_eq!(
            s.decide(&health(false, None, "starting"), t0 + PING * 4),
            []
        );
    }

    #[test]
    fn ready_once_then_pings_every_interval_while_healthy() {
        let mut s = WatchdogState::new(LIMIT, Some(PING));
        let t0 = Instant::now();
        let h = health(true, Some(0), "serving");
        assert_eq!(
            s.decide(&h, t0),
            [
                Notification::Ready,
                status("serving"),
                Notification::Watchdog
            ]
        );
        // Polled again before the interval: nothing new.
        assert_eq!(s.decide(&h, t0 + Duration::from_secs(1)), []);
        assert_eq!(s.decide(&h, t0 + PING), [Notification::Watchdog]);
        assert_eq!(s.decide(&h, t0 + PING + Duration::from_secs(14)), []);
        assert_eq!(s.decide(&h, t0 + PING * 2), [Notification::Watchdog]);
    }

    #[test]
    fn status_only_when_it_changes() {
        let mut s = WatchdogState::new(LIMIT, None);
        let t0 = Instant::now();
        assert_eq!(
            s.decide(&health(true, Some(0), "a"), t0),
            [Notification::Ready, status("a")]
        );
        assert_eq!(s.decide(&health(true, Some(0), "a"), t0), []);
        assert_eq!(s.decide(&health(true, Some(0), "b"), t0), [status("b")]);
    }

    #[test]
    fn no_watchdog_no_pings() {
        let mut s = WatchdogState::new(LIMIT, None);
        let t0 = Instant::now();
        let h = health(true, Some(0), "x");
        s.decide(&h, t0);
        for k in 1..5 {
            assert!(
                !s.decide(&h, t0 + PING * k)
                    .contains(&Notification::Watchdog)
            );
        }
    }

    #[test]
    fn pings_stop_when_stalled_and_resume_with_windows() {
        let mut s = WatchdogState::new(LIMIT, Some(PING));
        let t0 = Instant::now();
        s.decide(&health(true, Some(0), "serving"), t0);
        // Exactly at the limit is still healthy; past it is stalled.
        assert_eq!(
            s.decide(&health(true, Some(10), "serving"), t0 + PING),
            [Notification::Watchdog]
        );
        let stalled = s.decide(&health(true, Some(11), "serving"), t0 + PING * 2);
        assert_eq!(
            stalled,
            [status(
                "stalled: no window finished within 10s (no window reached inference); serving"
            )]
        );
        for k in 3..8u32 {
            assert_eq!(
                s.decide(
                    &health(true, Some(11 + 15 * u64::from(k)), "serving"),
                    t0 + PING * k
                ),
                []
            );
        }
        assert_eq!(
            s.decide(&health(true, Some(1), "serving"), t0 + PING * 8),
            [status("serving"), Notification::Watchdog]
        );
    }

    #[test]
    fn a_busy_stall_says_so() {
        let mut s = WatchdogState::new(LIMIT, Some(PING));
        let t0 = Instant::now();
        s.decide(&health(true, Some(0), "s"), t0);
        let h = Health {
            busy_for: Some(Duration::from_secs(20)),
            ..health(true, Some(21), "s")
        };
        assert_eq!(
            s.decide(&h, t0 + PING),
            [status(
                "stalled: no window finished within 10s (inference busy on one window); s"
            )]
        );
    }

    #[test]
    fn served_without_a_finish_time_is_a_stall() {
        assert!(health(true, None, "").is_stalled(LIMIT));
        assert!(!health(false, None, "").is_stalled(LIMIT));
        assert!(!health(false, Some(100), "").is_stalled(LIMIT));
    }

    #[test]
    fn undelivered_batches_are_sent_again() {
        let mut s = WatchdogState::new(LIMIT, Some(PING));
        let t0 = Instant::now();
        let h = health(true, Some(0), "serving");
        let first = s.decide(&h, t0);
        s.undelivered(&first);
        assert_eq!(s.decide(&h, t0 + Duration::from_secs(1)), first);
    }

    #[test]
    fn status_lines_stay_one_line_and_short() {
        assert_eq!(
            Notification::Status("a\nREADY=1\r\tb".into()).to_string(),
            "STATUS=a READY=1  b"
        );
        let long = "é".repeat(STATUS_MAX);
        let sent = Notification::Status(long).to_string();
        let text = sent.strip_prefix("STATUS=").unwrap();
        assert!(text.len() <= STATUS_MAX && text.len() > STATUS_MAX - 2);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn watchdog_variables() {
        let me = 4242;
        let us = |u: &str, p: Option<&str>| watchdog_timeout_from(Some(u), p, me);
        assert_eq!(us("30000000", None), Some(Duration::from_secs(30)));
        assert_eq!(us("30000000", Some("4242")), Some(Duration::from_secs(30)));
        assert_eq!(
            us("30000000", Some("1")),
            None,
            "another process's watchdog"
        );
        assert_eq!(us("30000000", Some("x")), None);
        assert_eq!(us("0", None), None);
        assert_eq!(us("soon", None), None);
        assert_eq!(watchdog_timeout_from(None, None, me), None);

        let n = Notifier::connect("/run/x.sock")
            .unwrap()
            .with_watchdog_timeout(Some(Duration::from_secs(30)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let n = n.with_watchdog_timeout(Some(Duration::ZERO));
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn addresses() {
        assert!(Notifier::connect("/run/systemd/notify").is_ok());
        assert!(Notifier::connect("@emogate-test").is_ok());
        for bad in ["run/notify", "vsock:2:1234", ""] {
            let e = Notifier::connect(bad).unwrap_err();
            assert!(matches!(e, NotifyError::Address { .. }), "{bad}: {e}");
        }
        let too_long = format!("/{}", "x".repeat(200));
        assert!(Notifier::connect(too_long).is_err());
    }

    fn received(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn one_datagram_per_batch_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::connect(&path).unwrap();
        n.send(&[Notification::Ready, status("up")]).unwrap();
        assert_eq!(received(&rx), "READY=1\nSTATUS=up\n");
        n.watchdog();
        assert_eq!(received(&rx), "WATCHDOG=1\n");
        n.stopping();
        assert_eq!(received(&rx), "STOPPING=1\n");
    }

    #[test]
    fn abstract_socket() {
        let name = format!("emogate-notify-test-{}", std::process::id());
        let rx = match abstract_address(name.as_bytes())
            .and_then(|a| UnixDatagram::bind_addr(&a).map_err(|e| e.to_string()))
        {
            Ok(rx) => rx,
            Err(e) => panic!("binding an abstract socket: {e}"),
        };
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::connect(format!("@{name}")).unwrap();
        n.status("abstract");
        assert_eq!(received(&rx), "STATUS=abstract\n");
    }

    #[test]
    fn a_full_queue_or_no_listener_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        // Nobody listening: an error, not a panic.
        let n = Notifier::connect(&path).unwrap();
        assert!(matches!(
            n.send(&[Notification::Watchdog]),
            Err(NotifyError::Io { .. })
        ));
        // A listener that never reads: its queue fills, and sends fail
        // instead of waiting for room.
        let _rx = UnixDatagram::bind(&path).unwrap();
        let t0 = Instant::now();
        let mut failed = 0;
        for _ in 0..5000 {
            if n.send(&[Notification::Watchdog]).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "the queue never filled");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // The failure state clears on a success.
        drop(_rx);
        std::fs::remove_file(&path).unwrap();
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        n.send(&[Notification::Watchdog]).unwrap();
        assert!(!n.failing.load(Ordering::Relaxed));
    }

    #[test]
    fn heartbeat_tells_idle_busy_and_served() {
        let hb = Heartbeat::new();
        let h = hb.health("s");
        assert!(!h.first_window_served);
        assert_eq!((h.since_last_window, h.busy_for), (None, None));
        hb.window_started();
        std::thread::sleep(Duration::from_millis(5));
        let h = hb.health("s");
        assert!(!h.first_window_served && h.since_last_window.is_none());
        assert!(h.busy_for.unwrap() >= Duration::from_millis(5));
        hb.window_finished();
        let h = hb.health("s");
        assert!(h.first_window_served);
        assert!(h.since_last_window.unwrap() < Duration::from_secs(1));
        assert_eq!(h.busy_for, None);
        assert_eq!(hb.windows(), 1);
    }
}
