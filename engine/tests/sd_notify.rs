//! The systemd notify protocol against a real socket, and the unit file
//! against `systemd-analyze verify`.
//!
//! The watchdog test plays systemd: it binds a Unix datagram socket in a
//! temporary folder, names it in `NOTIFY_SOCKET` (with `WATCHDOG_USEC`), and
//! reads what `Notifier::from_env` and the `Watchdog` thread send while a
//! fake inference thread serves windows and then hangs. It is a test binary
//! of its own because the environment is process-wide: every test here that
//! touches it, or starts a process that inherits it, holds `ENV`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use emogate_engine::notify::{Heartbeat, Notifier, Watchdog};
use emogate_media::StopFlag;

static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

const VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

fn set_env(vars: &[(&str, &str)]) {
    // SAFETY: every test of this binary that reads or writes the
    // environment, or spawns a process, holds ENV (the caller does), and
    // the library reads it only in `Notifier::from_env`, called under it.
    unsafe {
        for v in VARS {
            std::env::remove_var(v);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
    }
}

/// The datagrams that arrive within `within`, each with its arrival time.
fn collect(rx: &UnixDatagram, within: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while let Some(d) = next_until(rx, deadline) {
        out.push(d);
    }
    out
}

/// The next datagram, or `None` once `deadline` passed.
fn next_until(rx: &UnixDatagram, deadline: Instant) -> Option<(Instant, String)> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        rx.set_read_timeout(Some(left)).unwrap();
        match rx.recv(&mut buf) {
            Ok(n) => {
                return Some((
                    Instant::now(),
                    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 datagram"),
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Waits up to `within` for a datagram with the line `line`; returns it
/// and everything received before it.
fn wait_for(rx: &UnixDatagram, line: &str, within: Duration) -> (String, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    while let Some((_, d)) = next_until(rx, deadline) {
        if d.lines().any(|l| l == line) {
            return (d, before);
        }
        before.push(d);
    }
    panic!("no {line:?} within {within:?}; got {before:?}");
}

fn has(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| l == line)
}

#[test]
fn from_env_needs_notify_socket_and_honours_watchdog_pid() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let path = path.to_str().unwrap();

    set_env(&[]);
    assert!(
        Notifier::from_env().is_none(),
        "no NOTIFY_SOCKET, no notifier"
    );
    set_env(&[("NOTIFY_SOCKET", "")]);
    assert!(Notifier::from_env().is_none(), "an empty one neither");
    set_env(&[("NOTIFY_SOCKET", "relative/notify.sock")]);
    assert!(Notifier::from_env().is_none(), "a relative path is refused");

    set_env(&[("NOTIFY_SOCKET", path)]);
    let n = Notifier::from_env().unwrap();
    assert_eq!(n.address(), path);
    assert_eq!(n.watchdog_interval(), None, "no WATCHDOG_USEC, no watchdog");

    set_env(&[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "30000000")]);
    let n = Notifier::from_env().unwrap();
    assert_eq!(n.watchdog_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));

    let me = std::process::id().to_string();
    let other = (std::process::id() + 1).to_string();
    set_env(&[
        ("NOTIFY_SOCKET", path),
        ("WATCHDOG_USEC", "30000000"),
        ("WATCHDOG_PID", &me),
    ]);
    assert_eq!(
        Notifier::from_env().unwrap().watchdog_interval(),
        Some(Duration::from_secs(15))
    );
    set_env(&[
        ("NOTIFY_SOCKET", path),
        ("WATCHDOG_USEC", "30000000"),
        ("WATCHDOG_PID", &other),
    ]);
    assert_eq!(
        Notifier::from_env().unwrap().watchdog_interval(),
        None,
        "the watchdog belongs to process {other}"
    );
    set_env(&[]);
}

/// A fake inference thread: marks a window every 20 ms until `hang` is
/// set, then takes one more window and never finishes it.
fn fake_inference(heartbeat: Arc<Heartbeat>, hang: Arc<AtomicBool>, quit: StopFlag) {
    while !quit.is_raised() {
        heartbeat.window_started();
        if hang.load(Ordering::SeqCst) {
            while !quit.is_raised() {
                thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        thread::sleep(Duration::from_millis(5));
        heartbeat.window_finished();
        thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn watchdog_ready_pings_while_serving_and_goes_quiet_when_stalled() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();

    // WatchdogSec=400ms: pings every 200 ms.
    let me = std::process::id().to_string();
    set_env(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
        ("WATCHDOG_PID", &me),
    ]);
    let notifier = Notifier::from_env().expect("NOTIFY_SOCKET is set");
    set_env(&[]);
    let interval = notifier.watchdog_interval().unwrap();
    assert_eq!(interval, Duration::from_millis(200));

    let heartbeat = Arc::new(Heartbeat::new());
    let hang = Arc::new(AtomicBool::new(false));
    let stop = StopFlag::new();
    // Far above the fake windows' 20 ms, so a busy machine that delays a
    // thread is not taken for a stall.
    let stall_limit = Duration::from_secs(1);
    let health = {
        let hb = heartbeat.clone();
        move || hb.health(format!("serving: {} windows", hb.windows()))
    };
    let watchdog = Watchdog::new(notifier, health, stall_limit)
        .spawn(stop.clone())
        .unwrap();

    // Before the first window: a status, no READY=1, no WATCHDOG=1.
    let starting = collect(&rx, Duration::from_millis(500));
    assert!(!starting.is_empty(), "no status before the first window");
    for (_, d) in &starting {
        assert!(!has(d, "READY=1") && !has(d, "WATCHDOG=1"), "{d:?}");
        assert!(has(d, "STATUS=serving: 0 windows"), "{d:?}");
    }

    // Windows flow: READY=1 (once), then WATCHDOG=1 every interval.
    let inference = {
        let (hb, hang, quit) = (heartbeat.clone(), hang.clone(), stop.clone());
        thread::spawn(move || fake_inference(hb, hang, quit))
    };
    let (ready, _) = wait_for(&rx, "READY=1", Duration::from_secs(5));
    assert!(
        has(&ready, "WATCHDOG=1"),
        "the first ping comes with READY=1: {ready:?}"
    );
    let mut pings = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    while pings.len() < 4 {
        let (at, d) = next_until(&rx, deadline).expect("pings stopped while serving");
        assert!(!has(&d, "READY=1"), "READY=1 twice: {d:?}");
        assert!(
            !d.contains("STATUS=stalled"),
            "stalled while serving: {d:?}"
        );
        if has(&d, "WATCHDOG=1") {
            pings.push(at);
        }
    }
    // Periodic, not every poll (50 ms): on average at least most of an
    // interval apart (a loaded machine can delay one ping more than the
    // next, so single gaps are not held to it).
    let mean_gap = (pings[3] - pings[0]) / 3;
    assert!(mean_gap >= interval * 3 / 4, "pings {mean_gap:?} apart");

    // Inference hangs on a window: the status says so, and pings stop.
    hang.store(true, Ordering::SeqCst);
    // Pings may go on until the stall limit has passed; the datagram that
    // says "stalled" has none, and none follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stalled = loop {
        let (_, d) = next_until(&rx, deadline).expect("no stalled status");
        if d.contains("STATUS=stalled") {
            break d;
        }
    };
    assert!(
        stalled.contains(
            "STATUS=stalled: no window finished within 1s (inference busy on one window); serving: "
        ),
        "{stalled:?}"
    );
    assert!(!has(&stalled, "WATCHDOG=1"), "{stalled:?}");
    // Several watchdog intervals (systemd would have fired after two).
    let quiet = collect(&rx, interval * 5);
    for (_, d) in &quiet {
        assert!(!has(d, "WATCHDOG=1"), "a ping while stalled: {d:?}");
    }

    // Stop: STOPPING=1, and the thread ends.
    stop.raise();
    let (stopping, _) = wait_for(&rx, "STOPPING=1", Duration::from_secs(5));
    assert!(has(&stopping, "STATUS=stopping"), "{stopping:?}");
    watchdog.join().unwrap();
    inference.join().unwrap();
}

/// The unit in the repository, with `ExecStart=` pointed at `binary`
/// (`systemd-analyze verify` checks that the command is executable, and
/// /opt/emogate is not installed here).
fn unit_for(binary: &Path) -> String {
    let unit = std::fs::read_to_string(repo().join("deploy/emogate.service")).unwrap();
    let mut replaced = 0;
    let out: Vec<String> = unit
        .lines()
        .map(
            |l| match l.strip_prefix("ExecStart=/opt/emogate/emogate ") {
                Some(args) => {
                    replaced += 1;
                    format!("ExecStart={} {args}", binary.display())
                }
                None => l.to_string(),
            },
        )
        .collect();
    assert_eq!(replaced, 1, "one ExecStart= running /opt/emogate/emogate");
    out.join("\n") + "\n"
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn unit_is_type_notify_with_a_watchdog() {
    let unit = std::fs::read_to_string(repo().join("deploy/emogate.service")).unwrap();
    let set: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "RuntimeDirectory=emogate",
        "Restart=on-failure",
        "ExecStart=/opt/emogate/emogate run --config /etc/emogate/config.toml --control unix:/run/emogate/control.sock",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(set.contains(&line), "deploy/emogate.service lacks {line:?}");
    }
    // The config runs by hand too, where /run/emogate does not exist.
    let config = emogate_engine::config::RunConfig::load(&repo().join("deploy/config.toml"))
        .expect("deploy/config.toml parses");
    assert_eq!(config.control, None);
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// What `systemd-analyze verify` says about `unit` (written as
/// emogate.service in its own folder): `Ok` when it exits 0 and names the
/// unit in no complaint. Parse errors and unknown keys are only warnings
/// to systemd (exit 0, the line ignored), so the exit status alone would
/// pass a unit with a misspelt `Type=`.
fn verify(tool: &Path, unit: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("emogate.service");
    std::fs::write(&file, unit).unwrap();
    let out = Command::new(tool)
        .arg("verify")
        .arg("--man=no")
        .arg(&file)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = said.lines().filter(|l| l.contains("emogate")).collect();
    if out.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {said}", out.status))
    }
}

#[test]
fn systemd_analyze_verify_passes_the_unit_and_fails_broken_ones() {
    let _env = env_lock();
    let Some(tool) = on_path("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not on PATH (no systemd here)");
        return;
    };
    let unit = unit_for(Path::new(env!("CARGO_BIN_EXE_emogate")));
    if let Err(e) = verify(&tool, &unit) {
        panic!("systemd-analyze verify deploy/emogate.service: {e}\n{unit}");
    }

    // The check is not vacuous: each of these breaks the unit, in the ways
    // systemd reports (a warning and exit 0, or an error).
    let broken = [
        ("Type=notify", "Type=notifyy"),
        ("WatchdogSec=30s", "WatchdogSec=half a minute"),
        ("NotifyAccess=main", "NotifyAcess=main"),
        ("RuntimeDirectory=emogate", "RuntimeDirectory=../emogate"),
        (env!("CARGO_BIN_EXE_emogate"), "/nonexistent/emogate"),
    ];
    for (good, bad) in broken {
        assert!(unit.contains(good), "{good:?} not in the unit");
        let result = verify(&tool, &unit.replacen(good, bad, 1));
        match result {
            Err(e) => assert!(e.contains("emogate"), "{bad:?}: {e}"),
            Ok(()) => panic!("systemd-analyze verify accepted {bad:?} for {good:?}"),
        }
    }
}

/// The real binary under a pretend systemd: `READY=1` after the first
/// window, `WATCHDOG=1` while windows are served, a status line with the
/// counts, and `STOPPING=1` on SIGTERM.
#[test]
fn emogate_run_speaks_the_protocol() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    let root = repo();
    let mut child = Command::new(env!("CARGO_BIN_EXE_emogate"))
        .current_dir(&root)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .args([
            "run",
            "--model",
            "models/reference/emogate-ref.onnx",
            "--video",
            "tests/fixtures/sample/face.y4m",
            "--audio",
            "tests/fixtures/sample/voice.wav",
            "--pace",
            "realtime",
            "--loop",
            "--hop-ms",
            "100",
            "--output",
            "jsonl:/dev/null",
        ])
        .spawn()
        .unwrap();
    let (ready, before) = wait_for(&rx, "READY=1", Duration::from_secs(30));
    assert!(
        before.iter().all(|d| !has(d, "WATCHDOG=1")),
        "no ping before READY: {before:?}"
    );
    // Pings every half WATCHDOG_USEC while windows are served.
    let got = collect(&rx, Duration::from_millis(1500));
    let pings = got.iter().filter(|(_, d)| has(d, "WATCHDOG=1")).count();
    assert!(pings >= 3, "{pings} pings in 1.5 s: {got:?}");
    let status = std::iter::once(ready.as_str())
        .chain(got.iter().map(|(_, d)| d.as_str()))
        .flat_map(str::lines)
        .rfind(|l| l.starts_with("STATUS="))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        status.contains("events") && status.contains("adapter base"),
        "{status}"
    );
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    wait_for(&rx, "STOPPING=1", Duration::from_secs(10));
    assert!(child.wait().unwrap().success());
}
