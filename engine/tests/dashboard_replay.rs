//! The dashboard fed by a real run: `emogate run` replays the sample clip
//! in real time through the reference model with `--output http:…`, and
//! headless Chromium must render its live events, sources and status.
//! A screenshot is kept at `$CARGO_TARGET_TMPDIR/dashboard-replay.png`.
//!
//! Needs Chromium (`apt-get install chromium`); `EMOGATE_SKIP_BROWSER=1` skips.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::browser::{self, DASHBOARD_STATE, ROBOT_7IN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn dashboard_renders_live_events_from_a_replay_run() {
    if browser::skip() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
            "--pace",
            "realtime",
            "--loop",
            "--output",
            &format!("http:127.0.0.1:{port}"),
            "--output",
            "jsonl:-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let labels = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|m| m["type"] == "emotion")
            .filter_map(|m| m["expression"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    });
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-replay.png");
    let ready = format!(
        "(s => s.conn === 'live' && s.events >= 6 && s.points >= 6 && s.label.trim() !== '' && s)({DASHBOARD_STATE})"
    );
    let rendered = browser::render(
        &format!("http://127.0.0.1:{port}/"),
        ROBOT_7IN,
        &ready,
        Duration::from_secs(40),
        &png,
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    let published = labels.join().unwrap();
    let rendered = rendered.unwrap_or_else(|e| panic!("dashboard did not come up: {e}"));
    assert!(
        status.success(),
        "emogate exited with {status:?} after SIGTERM"
    );
    assert!(
        rendered.errors.is_empty(),
        "page errors: {:?}",
        rendered.errors
    );
    let shown = rendered.ready["label"].as_str().unwrap().trim().to_string();
    assert!(
        published.contains(&shown),
        "the dashboard shows `{shown}`, not a label the run published: {published:?}"
    );
    let sources = rendered.ready["sources"].as_str().unwrap();
    assert!(
        sources.contains("face.y4m") && sources.contains("voice.wav"),
        "{sources}"
    );
    assert!(
        rendered.text.contains("tract"),
        "backend shown: {}",
        rendered.text
    );
    let png_bytes = std::fs::metadata(&png).unwrap().len();
    assert!(png_bytes > 10_000, "screenshot of {png_bytes} bytes");
}
