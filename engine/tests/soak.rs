//! Soak: 30 minutes of audio and video (the sample clip, looped) replayed
//! as fast as possible through `emogate run`. Peak RSS after the first
//! minute and at the end must differ by under 5 %: nothing grows per
//! window.
//!
//! Ignored in CI (it runs for minutes); run it with
//! `cargo test --release -p emogate-engine --test soak -- --ignored --nocapture`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `VmHWM` (peak RSS) and `VmRSS` of `pid`, in kB.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

#[test]
#[ignore = "30 minutes of media; run by hand and report (see the README)"]
fn thirty_minutes_replayed_fast_keeps_peak_rss_flat() {
    let minutes: f64 = std::env::var("EMOGATE_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30.0);
    let hop_s = 0.25;
    let windows = (minutes * 60.0 / hop_s) as u64;
    let mut child = Command::new(env!("CARGO_BIN_EXE_emogate"))
        .current_dir(repo())
        .args([
            "run",
            "--model",
            "models/reference/emogate-ref.onnx",
            "--video",
            "tests/fixtures/sample/face.y4m",
            "--audio",
            "tests/fixtures/sample/voice.wav",
            "--loop",
            "--pace",
            "fast",
            "--hop-ms",
            "250",
            "--max-windows",
            &windows.to_string(),
            "--output",
            "jsonl:-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let mut start_peak = None;
    let mut last = (0, 0);
    let mut events = 0u64;
    let mut last_seq = None;
    // One minute of media in, the pipeline is warm.
    let warm = (60.0 / hop_s) as u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if !line.contains("\"type\":\"emotion\"") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert!(last_seq.is_none_or(|s| seq == s + 1), "events in order");
        last_seq = Some(seq);
        events += 1;
        if let Some(m) = memory_kb(pid) {
            last = m;
        }
        if events == warm {
            start_peak = Some(last.0);
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let start = start_peak.expect("ran past the first minute");
    let end = last.0;
    let growth = (end as f64 - start as f64) / start as f64;
    eprintln!(
        "soak: {minutes} min of media in {:.1} s, {events} events; peak RSS {start} kB after 1 min, {end} kB at the end ({:+.2} %), RSS at the end {} kB",
        started.elapsed().as_secs_f64(),
        growth * 100.0,
        last.1
    );
    assert_eq!(events, windows);
    assert!(growth.abs() < 0.05, "peak RSS grew {:.2} %", growth * 100.0);
}
