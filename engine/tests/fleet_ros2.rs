//! `ros2:` against an independent DDS implementation: Eclipse Cyclone DDS
//! (its Python binding, `support/ros2_listen.py`) subscribes to
//! `rt/emogate/expression` as `hri_msgs::msg::dds_::Expression_`, to
//! `rt/diagnostics` and `rt/emogate/events`, decodes the CDR samples, and
//! every field is checked against the run's JSON lines; a status request
//! on `/emogate/control` gets its reply on `/emogate/control/reply`.
//!
//! Discovery stays on loopback on both sides (`[ros2] interfaces` here,
//! `CYCLONEDDS_URI` there) in a domain derived from the process id. The
//! Python side comes from `scripts/ci-fleet-deps` (`target/fleet-py`) or
//! `EMOGATE_FLEET_PYTHONPATH`; see `support::fleet::tools_present` for
//! when the test skips. About 15 s.
#![cfg(feature = "ros2")]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::skipped;
use support::proc::{AUDIO, MODEL, Running, VIDEO, emogate, emotions, repo};

fn python_path() -> PathBuf {
    std::env::var_os("EMOGATE_FLEET_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/fleet-py"))
}

fn python() -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", python_path());
    c
}

/// Whether Cyclone DDS's Python binding imports (skip rules as for the
/// broker tools).
fn cyclone_present() -> bool {
    let ok = python()
        .args(["-c", "import cyclonedds.domain"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why = format!(
        "ros2: Cyclone DDS's Python binding not importable from {} (scripts/ci-fleet-deps installs it)",
        python_path().display()
    );
    if std::env::var_os("EMOGATE_REQUIRE_FLEET").is_some() {
        panic!("{why}; EMOGATE_REQUIRE_FLEET is set, so this is a failure");
    }
    skipped(&why);
    false
}

/// Cyclone on loopback only: no multicast, the peer found by unicast.
const CYCLONE_LOOPBACK: &str = r#"<CycloneDDS><Domain id="any"><General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces><AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>30</MaxAutoParticipantIndex><Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>"#;

fn f32_of(v: &Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

#[test]
fn cyclone_dds_decodes_expressions_diagnostics_and_events() {
    if !cyclone_present() {
        return;
    }
    let domain = 20 + std::process::id() % 200;
    let dir = tempfile::tempdir().unwrap();
    let out_json = dir.path().join("got.json");
    let listen_s = 9.0;
    let mut listener = python()
        .arg(repo().join("engine/tests/support/ros2_listen.py"))
        .args([&domain.to_string(), &listen_s.to_string()])
        .arg(&out_json)
        .env("CYCLONEDDS_URI", CYCLONE_LOOPBACK)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "READY", "the listener did not start");

    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "frame_id = \"test_cam\"\n[ros2]\ninterfaces = [\"127.0.0.1\"]\ncontrol = true\n",
    )
    .unwrap();
    let mut engine = emogate();
    engine
        .args(["run", "--model", MODEL, "--video", VIDEO, "--audio", AUDIO])
        .args(["--loop", "--pace", "realtime", "--hop-ms", "100"])
        .args(["--output", "jsonl:-", "--output", &format!("ros2:{domain}")])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    let mut run = Running::spawn(engine);

    // The listener ends by itself after `listen_s`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = listener.kill();
            panic!(
                "the Cyclone listener did not end; engine stderr:\n{}",
                run.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    run.signal(libc::SIGINT);
    assert!(
        run.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        run.stderr()
    );

    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let printed = run.messages();
    let events = emotions(&printed);
    eprintln!(
        "decoded by Cyclone DDS: {} expressions, {} events, {} diagnostics; the run printed {} emotion events",
        got["expression"].as_array().map_or(0, Vec::len),
        got["events"].as_array().map_or(0, Vec::len),
        got["diagnostics"].as_array().map_or(0, Vec::len),
        events.len()
    );

    // Expressions: each sample is one event (matched by its capture stamp),
    // every field equal, and none missing between the first and the last
    // (reliable QoS).
    let samples = got["expression"].as_array().unwrap();
    assert!(
        samples.len() >= 20,
        "only {} expressions decoded; engine stderr:\n{}",
        samples.len(),
        run.stderr()
    );
    let mut matched = Vec::new();
    for s in samples {
        let i = events
            .iter()
            .position(|e| {
                e["header"]["stamp"]["sec"] == s["sec"]
                    && e["header"]["stamp"]["nanosec"] == s["nanosec"]
            })
            .unwrap_or_else(|| panic!("no event has the stamp of {s}"));
        let e = events[i];
        assert_eq!(s["frame_id"], "test_cam");
        assert_eq!(e["header"]["frame_id"], "test_cam");
        assert_eq!(
            s["expression"].as_str().unwrap(),
            e["expression"].as_str().unwrap_or(""),
            "{s} vs {e}"
        );
        assert_eq!(f32_of(&s["valence"]), f32_of(&e["valence"]), "{s} vs {e}");
        assert_eq!(f32_of(&s["arousal"]), f32_of(&e["arousal"]), "{s} vs {e}");
        assert_eq!(
            f32_of(&s["confidence"]),
            Some(f32_of(&e["confidence"]).unwrap_or(0.0)),
            "{s} vs {e}"
        );
        matched.push(i);
    }
    assert!(
        matched.windows(2).all(|w| w[1] == w[0] + 1),
        "expressions in order without gaps: {matched:?}"
    );

    // Events: the JSON lines themselves, in order, without gaps.
    let texts = got["events"].as_array().unwrap();
    assert!(texts.len() >= samples.len());
    let first: Value = serde_json::from_str(texts[0].as_str().unwrap()).unwrap();
    let start = printed
        .iter()
        .position(|m| *m == first)
        .expect("first event printed");
    for (k, t) in texts.iter().enumerate() {
        let v: Value = serde_json::from_str(t.as_str().unwrap()).unwrap();
        assert_eq!(v, printed[start + k], "event {k}");
    }

    // Control: a status request over /emogate/control was answered.
    let replies = got["replies"].as_array().unwrap();
    assert!(!replies.is_empty(), "no reply on /emogate/control/reply");
    let reply: Value = serde_json::from_str(replies[0].as_str().unwrap()).unwrap();
    assert_eq!(reply["backend"], "tract", "{reply}");

    // Diagnostics: once a second, the pipeline's state and the sources.
    let diags = got["diagnostics"].as_array().unwrap();
    assert!(diags.len() >= 4, "only {} diagnostics", diags.len());
    let last = diags.last().unwrap();
    assert_eq!(last["frame_id"], "test_cam");
    let pipeline = &last["status"][0];
    assert_eq!(pipeline["name"], "emogate: pipeline");
    assert_eq!(pipeline["level"], 0, "{pipeline}");
    let v = &pipeline["values"];
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["execution_providers"], "cpu");
    let n: usize = v["events"].as_str().unwrap().parse().unwrap();
    assert!(
        n >= 10 && n <= events.len(),
        "events {n} of {}",
        events.len()
    );
    // Window drops depend on the machine's load: the count must be the
    // pipeline's (never more than the last event reports).
    let dropped: u64 = v["windows_dropped"].as_str().unwrap().parse().unwrap();
    assert!(
        dropped
            <= events.last().unwrap()["counters"]["dropped"]
                .as_u64()
                .unwrap()
    );
    for key in ["sink_dropped", "ros2_queue_dropped", "ros2_write_failed"] {
        assert_eq!(v[key], "0", "{key} in {v}");
    }
    let p99: f64 = v["latency_capture_to_event_p99_ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(p99 > 0.0);
    let sources: Vec<&Value> = last["status"].as_array().unwrap()[1..].iter().collect();
    assert_eq!(sources.len(), 2, "{last}");
    assert!(
        sources.iter().any(|s| s["name"] == "emogate: video source"
            && s["hardware_id"].as_str().unwrap().contains("face.y4m")),
        "{last}"
    );
}

/// REP-155 per face: a model on face crops publishes each tracked face's
/// expressions on `/humans/faces/<id>/expression` and the ids on
/// `/humans/faces/tracked`, decoded here by Cyclone DDS.
#[test]
fn cyclone_dds_decodes_per_face_expressions_and_the_tracked_ids() {
    if !cyclone_present() {
        return;
    }
    let domain = 20 + (std::process::id() + 101) % 200;
    let dir = tempfile::tempdir().unwrap();
    let out_json = dir.path().join("got.json");
    let mut listener = python()
        .arg(repo().join("engine/tests/support/ros2_listen.py"))
        .args([&domain.to_string(), "6"])
        .arg(&out_json)
        .env("CYCLONEDDS_URI", CYCLONE_LOOPBACK)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "READY", "the listener did not start");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[ros2]\ninterfaces = [\"127.0.0.1\"]\n").unwrap();
    let mut engine = emogate();
    engine
        .args(["run", "--model", "models/fer/fer-mini-xception.onnx"])
        .args(["--manifest", "models/fer/fer-mini-xception.json"])
        .args([
            "--video",
            "tests/fixtures/face/two-faces.png",
            "--faces",
            "all",
        ])
        .args(["--pace", "realtime", "--hop-ms", "100"])
        .args(["--output", "jsonl:-", "--output", &format!("ros2:{domain}")])
        .arg("--config")
        .arg(&config);
    let mut run = Running::spawn(engine);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = listener.kill();
            panic!(
                "the Cyclone listener did not end; engine stderr:\n{}",
                run.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    run.signal(libc::SIGINT);
    assert!(
        run.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        run.stderr()
    );
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let printed = run.messages();
    let events = emotions(&printed);
    for id in ["f1", "f2"] {
        let samples = got[format!("face_{id}")].as_array().unwrap();
        assert!(
            samples.len() >= 10,
            "{id}: {} expressions; engine stderr:\n{}",
            samples.len(),
            run.stderr()
        );
        for s in samples {
            let e = events
                .iter()
                .find(|e| {
                    e["face"]["id"] == id
                        && e["header"]["stamp"]["sec"] == s["sec"]
                        && e["header"]["stamp"]["nanosec"] == s["nanosec"]
                })
                .unwrap_or_else(|| panic!("no event of {id} has the stamp of {s}"));
            assert_eq!(
                s["expression"].as_str().unwrap(),
                e["expression"].as_str().unwrap_or("")
            );
            assert_eq!(
                f32_of(&s["confidence"]),
                Some(f32_of(&e["confidence"]).unwrap_or(0.0)),
                "{s} vs {e}"
            );
        }
    }
    assert!(got["face_f3"].as_array().unwrap().is_empty());
    // Whole-frame expressions are not published for a face model.
    assert!(got["expression"].as_array().unwrap().is_empty());
    let tracked = got["tracked"].as_array().unwrap();
    assert!(!tracked.is_empty(), "nothing on /humans/faces/tracked");
    assert_eq!(
        tracked.last().unwrap()["ids"],
        serde_json::json!(["f1", "f2"])
    );
}
