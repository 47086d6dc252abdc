//! Failing loudly, end to end through the `emogate` binary, with small
//! ONNX models built for the purpose (`tests/src/faulty_models.rs`): one
//! that outputs NaN for some windows, one whose every forward pass fails,
//! one that blocks. Each runs on the real clock (`--pace realtime`) and as
//! a fast replay, and every run has a time limit: none may hang.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use emogate_tests::faulty_models;
use serde_json::Value;
use support::proc::{Running, emogate, emotions};

/// Spawns `emogate run` on `model` with `wav`, `pace` and `extra` flags.
fn run(model: &Path, wav: &Path, pace: &str, extra: &[&str]) -> Running {
    let mut c = emogate();
    c.args(["run", "--model"])
        .arg(model)
        .arg("--audio")
        .arg(wav)
        .args(["--pace", pace, "--output", "jsonl:-"])
        .args(extra);
    Running::spawn(c)
}

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

/// Windows `k` (second `k`, ending at `k + 1` s) whose mean is negative.
const NAN_SECONDS: [bool; 6] = [false, true, false, true, true, false];

fn nan_windows_are_counted_and_the_rest_published(pace: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = faulty_models::write_nan_model(dir.path());
    let wav = faulty_models::write_nan_wav(dir.path(), &NAN_SECONDS);
    let mut child = run(&model, &wav, pace, &[]);
    let status = child.wait_exit(Duration::from_secs(60));
    let messages = child.messages();
    assert!(status.success(), "{status:?}\n{}", child.stderr());
    let events = emotions(&messages);
    // The window each event covers, by the second it ends on.
    let ends: Vec<i64> = events
        .iter()
        .map(|e| e["window"]["end_s"].as_f64().unwrap().round() as i64)
        .collect();
    let finite: Vec<i64> = (0..NAN_SECONDS.len())
        .filter(|k| !NAN_SECONDS[*k])
        .map(|k| k as i64 + 1)
        .collect();
    assert_eq!(ends, finite, "{pace}: published windows");
    for e in &events {
        for (label, p) in e["probs"].as_object().unwrap() {
            assert!(p.as_f64().is_some_and(f64::is_finite), "{label}: {p}");
        }
    }
    // Each event's counters are a snapshot: the last one has seen every
    // NaN window before it.
    let last = events.last().unwrap();
    let nan_before_last = NAN_SECONDS[..NAN_SECONDS.len() - 1]
        .iter()
        .filter(|n| **n)
        .count() as u64;
    assert_eq!(last["counters"]["nonfinite"], nan_before_last, "{last}");
    assert_eq!(last["counters"]["model_errors"], 0);
    assert!(of_type(&messages, "model_error").is_empty());
}

#[test]
fn nan_windows_are_counted_and_the_rest_published_in_replay() {
    nan_windows_are_counted_and_the_rest_published("fast");
}

#[test]
fn nan_windows_are_counted_and_the_rest_published_in_real_time() {
    nan_windows_are_counted_and_the_rest_published("realtime");
}

fn a_failing_model_exits_3_after_n_windows(pace: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = faulty_models::write_failing_model(dir.path());
    let wav = faulty_models::write_nan_wav(dir.path(), &[false; 8]);
    let started = Instant::now();
    let mut child = run(
        &model,
        &wav,
        pace,
        &["--hop-ms", "250", "--max-consecutive-errors", "4"],
    );
    let status = child.wait_exit(Duration::from_secs(60));
    let messages = child.messages();
    assert_eq!(status.code(), Some(3), "{pace}: {}", child.stderr());
    assert!(emotions(&messages).is_empty());
    let errors = of_type(&messages, "model_error");
    let consecutive: Vec<u64> = errors
        .iter()
        .map(|e| e["consecutive"].as_u64().unwrap())
        .collect();
    assert_eq!(consecutive, [1, 2, 3, 4], "{pace}: {errors:?}");
    for e in &errors {
        assert_eq!(e["stage"], "inference", "{e}");
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    let stderr = child.stderr();
    assert!(
        stderr.contains("4 windows in a row failed"),
        "{pace}: {stderr}"
    );
    // Stopped at the 4th window (1 s of audio, then 3 hops), not at the
    // end of the 8 s recording.
    if pace == "realtime" {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_failing_model_exits_3_after_n_windows_in_replay() {
    a_failing_model_exits_3_after_n_windows("fast");
}

#[test]
fn a_failing_model_exits_3_after_n_windows_in_real_time() {
    a_failing_model_exits_3_after_n_windows("realtime");
}

fn a_blocking_model_is_reported_stalled_and_exits_4(pace: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = faulty_models::write_blocking_model(dir.path());
    let wav = faulty_models::write_nan_wav(dir.path(), &[false; 30]);
    let started = Instant::now();
    let mut child = run(
        &model,
        &wav,
        pace,
        &["--hop-ms", "250", "--stall-ms", "1500"],
    );
    let status = child.wait_exit(Duration::from_secs(60));
    let messages = child.messages();
    assert_eq!(status.code(), Some(4), "{pace}: {}", child.stderr());
    assert!(emotions(&messages).is_empty());
    let errors = of_type(&messages, "model_error");
    assert_eq!(errors.len(), 1, "{pace}: {errors:?}");
    let error = errors[0]["error"].as_str().unwrap();
    assert!(error.contains("stalled"), "{error}");
    assert!(
        child.stderr().contains("inference stalled"),
        "{}",
        child.stderr()
    );
    // Load (about a second), the first window at 1 s, then the 1.5 s limit:
    // far from the minutes one forward pass takes.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_blocking_model_is_reported_stalled_and_exits_4_in_replay() {
    a_blocking_model_is_reported_stalled_and_exits_4("fast");
}

#[test]
fn a_blocking_model_is_reported_stalled_and_exits_4_in_real_time() {
    a_blocking_model_is_reported_stalled_and_exits_4("realtime");
}

#[test]
fn sigterm_is_honoured_within_the_stall_limit_while_inference_is_stuck() {
    use emogate_engine::control::{Command, client::Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let model = faulty_models::write_blocking_model(dir.path());
    let wav = faulty_models::write_nan_wav(dir.path(), &[false; 30]);
    let socket = dir.path().join("c.sock");
    let control = format!("unix:{}", socket.display());
    let mut child = run(
        &model,
        &wav,
        "realtime",
        &[
            "--hop-ms",
            "250",
            "--stall-ms",
            "3000",
            "--control",
            &control,
        ],
    );
    support::proc::wait_for_path(&socket, Duration::from_secs(30));
    let endpoint = Endpoint::Unix(socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = endpoint
            .send(&Command::Status, Duration::from_secs(5))
            .unwrap();
        if status["inference"]["state"] == "busy" {
            break;
        }
        assert!(Instant::now() < deadline, "never busy: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    // Not the minutes the forward pass takes: the stop waits for the
    // window in flight only up to the stall limit, then reports the stall.
    let status = child.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(4), "{}", child.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
}

/// The median of the events' `latency_ms.inference`.
fn median_inference_ms(events: &[&Value]) -> f64 {
    let mut v: Vec<f64> = events
        .iter()
        .map(|e| e["latency_ms"]["inference"].as_f64().unwrap())
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Outputs that fail (a UDP destination nobody listens on, so the kernel
/// refuses; a JSONL file on a full tmpfs) cost the pipeline nothing:
/// every window is still published on the working output, on time, and
/// the inference time is that of a run without them. The full-disk output
/// is named in a warning. Without root (no tmpfs) the JSONL part is
/// skipped with a printed reason; the UDP part always runs.
#[test]
fn failing_outputs_cost_no_windows_and_no_inference_time() {
    use support::proc::{AUDIO, MODEL, VIDEO};
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound, read, released.
    let refused = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = unsafe { libc::geteuid() } == 0
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(&full)
            .status()
            .is_ok_and(|s| s.success());
    if mounted {
        // Fill it: every write of the output then fails with ENOSPC.
        use std::io::Write;
        let mut filler = std::fs::File::create(full.join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
    } else {
        let why = "the full-disk JSONL output: cannot mount a tmpfs (not root, or no mount)";
        // CI runs as root and sets this: a hidden skip there would be a test that cannot fail.
        assert!(
            std::env::var_os("EMOGATE_REQUIRE_TMPFS").is_none(),
            "{why}; EMOGATE_REQUIRE_TMPFS is set, so this is a failure"
        );
        eprintln!("SKIPPED {why}; set EMOGATE_REQUIRE_TMPFS=1 to make this a failure");
    }
    let jsonl = format!("jsonl:{}", full.join("events.jsonl").display());
    let udp = format!("udp:{refused}");
    let run = |broken: bool| {
        let mut c = emogate();
        c.args(["run", "--model", MODEL, "--video", VIDEO, "--audio", AUDIO])
            .args(["--pace", "realtime", "--output", "jsonl:-"]);
        if broken {
            c.args(["--output", &udp]);
            if mounted {
                c.args(["--output", &jsonl]);
            }
        }
        let mut child = Running::spawn(c);
        let status = child.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{status:?}\n{}", child.stderr());
        (child.messages(), child.stderr())
    };
    let (plain, _) = run(false);
    let (broken, stderr) = run(true);
    if mounted {
        let _ = std::process::Command::new("umount").arg(&full).status();
    }
    let (plain, broken) = (emotions(&plain), emotions(&broken));
    assert_eq!(broken.len(), plain.len(), "windows published");
    // On the real clock, window ends carry the start's microseconds: compare hops.
    let ends = |e: &[&Value]| -> Vec<i64> {
        e.iter()
            .map(|e| (e["window"]["end_s"].as_f64().unwrap() * 4.0).round() as i64)
            .collect()
    };
    assert_eq!(ends(&broken), ends(&plain));
    let (a, b) = (median_inference_ms(&plain), median_inference_ms(&broken));
    eprintln!("inference p50: {a:.2} ms without the failing outputs, {b:.2} ms with them");
    // Generous: a shared 2-core machine; a blocked sink would cost a hop (250 ms).
    assert!(b <= a * 2.0 + 5.0, "inference p50 {a:.2} ms -> {b:.2} ms");
    if mounted {
        assert!(
            stderr.contains("events.jsonl") && stderr.contains("No space left on device"),
            "the full disk is not reported:\n{stderr}"
        );
    }
}
