//! Controlling a running `emogate run` end to end, through the real binary
//! with the reference model and its two adapters: switching over the Unix
//! socket and over HTTP mid-run (checked against runs started with each
//! adapter), latest-wins, bad requests, idle clients, and reloading the
//! config file by request and by SIGHUP.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use emogate_engine::control::Command;
use emogate_engine::control::client::Endpoint;
use serde_json::{Value, json};
use support::proc::{
    AFFECT_ALL, AFFECT_GATE, AUDIO, BASE_MODEL, Running, VIDEO, emogate, emotions, free_port, repo,
    wait_for_path,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Replay on the virtual clock (the same windows every run), no
/// smoothing (so each event's `probs` is that window's model output),
/// slowed to ~100 windows a second so that a switch lands mid-run.
fn replay_args(windows: u32) -> Vec<String> {
    [
        "run",
        "--model",
        BASE_MODEL,
        "--video",
        VIDEO,
        "--audio",
        AUDIO,
        "--pace",
        "fast",
        "--loop",
        "--half-life",
        "0",
        "--max-windows",
        &windows.to_string(),
        "--adapter",
        AFFECT_GATE,
        "--adapter",
        AFFECT_ALL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn send(endpoint: &Endpoint, command: Command) -> Value {
    endpoint.send(&command, TIMEOUT).expect("control reply")
}

/// Events of a whole run started with `active` (or the base model).
fn reference_run(windows: u32, active: Option<&str>) -> Vec<Value> {
    let mut args = replay_args(windows);
    if let Some(a) = active {
        args.extend(["--active".into(), a.into()]);
    }
    let mut run = Running::spawn({
        let mut c = emogate();
        c.args(&args);
        c
    });
    assert!(run.wait_exit(TIMEOUT).success(), "{}", run.stderr());
    run.messages()
}

fn max_prob_diff(a: &Value, b: &Value) -> f64 {
    let (a, b) = (
        a["probs"].as_object().unwrap(),
        b["probs"].as_object().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, v)| (v.as_f64().unwrap() - b[k].as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

/// The switch landed at `seq`: events before it match the base run, from
/// it on the `affect-all` run (to 1e-5), `seq` runs 0..n without a gap, and
/// each event names its adapter.
fn check_switched_run(messages: &[Value], seq: u64, windows: u32) {
    let events = emotions(messages);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..u64::from(windows)).collect::<Vec<_>>(),
        "gap or repeat"
    );
    assert!(
        seq > 0 && seq < u64::from(windows),
        "not mid-run: seq {seq}"
    );
    let base = reference_run(windows, None);
    let all_linear = reference_run(windows, Some("affect-all"));
    let (base, all_linear) = (emotions(&base), emotions(&all_linear));
    let mut differs = 0.0f64;
    for (i, e) in events.iter().enumerate() {
        let (want, adapter) = if (i as u64) < seq {
            (base[i], Value::Null)
        } else {
            (all_linear[i], json!("affect-all"))
        };
        assert_eq!(e["adapter"], adapter, "event {i}");
        let d = max_prob_diff(e, want);
        assert!(
            d <= 1e-5,
            "event {i}: probs differ by {d} from the reference run"
        );
        differs = differs.max(max_prob_diff(base[i], all_linear[i]));
    }
    // Otherwise the comparison above could not tell the adapters apart.
    assert!(differs > 1e-4, "base and all_linear agree to {differs}");
    let changes: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "adapter_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["to"], "affect-all");
    assert_eq!(changes[0]["from"], Value::Null);
    assert_eq!(changes[0]["seq"], seq);
}

#[test]
fn switch_through_the_socket_mid_run_matches_runs_started_with_each_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let windows = 120;
    let mut args = replay_args(windows);
    args.extend([
        "--control".into(),
        format!("unix:{}", socket.display()),
        "--debug-inference-delay-ms".into(),
        "15".into(),
    ]);
    let mut run = Running::spawn({
        let mut c = emogate();
        c.args(&args);
        c
    });
    wait_for_path(&socket, TIMEOUT);
    run.wait_for("10 events", TIMEOUT, |m| emotions(m).len() >= 10);
    let endpoint = Endpoint::Unix(socket.clone());
    let reply = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["active"], "affect-all");
    assert_eq!(reply["from"], Value::Null);
    assert!(reply["prepare_ms"].as_f64().unwrap() > 0.0);
    assert!(reply["switch_ms"].as_f64().unwrap() >= reply["prepare_ms"].as_f64().unwrap());
    let seq = reply["seq"].as_u64().unwrap();
    let status = send(&endpoint, Command::Status);
    assert_eq!(status["adapter"], "affect-all", "{status}");
    assert_eq!(status["adapters"], json!(["affect-all", "affect-gate"]));
    assert!(run.wait_exit(TIMEOUT).success(), "{}", run.stderr());
    assert!(!socket.exists(), "the socket file is removed at exit");
    check_switched_run(&run.messages(), seq, windows);
}

/// Raw HTTP/1.1 request; returns (status line, body).
fn http(port: u16, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn post(port: u16, extra_headers: &str, body: &str) -> (String, String) {
    http(
        port,
        &format!(
            "POST /control HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra_headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn switch_through_http_mid_run_and_the_route_refuses_what_it_should() {
    let windows = 120;
    let port = free_port();
    let mut args = replay_args(windows);
    args.extend([
        "--control".into(),
        "http".into(),
        "--output".into(),
        "jsonl:-".into(),
        "--output".into(),
        format!("http:127.0.0.1:{port}"),
        "--debug-inference-delay-ms".into(),
        "15".into(),
    ]);
    let mut run = Running::spawn({
        let mut c = emogate();
        c.args(&args);
        c
    });
    run.wait_for("10 events", TIMEOUT, |m| emotions(m).len() >= 10);
    let json_type = "Content-Type: application/json\r\n";
    // What a cross-site page could send, and other misuse.
    let (status, body) = post(port, "Content-Type: text/plain\r\n", r#"{"cmd":"status"}"#);
    assert!(status.contains("415"), "{status} {body}");
    let (status, body) = post(
        port,
        &format!("{json_type}Origin: http://evil.example\r\n"),
        r#"{"cmd":"status"}"#,
    );
    assert!(status.contains("403"), "{status} {body}");
    let (status, _) = http(
        port,
        &format!("GET /control HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    );
    assert!(status.contains("405"), "{status}");
    let (status, body) = post(port, json_type, r#"{"cmd":"adapter""#);
    assert!(status.contains("200"), "{status}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("JSON"), "{reply}");
    let big = format!(r#"{{"cmd":"status","x":"{}"}}"#, "x".repeat(70_000));
    let (status, body) = post(port, json_type, &big);
    assert!(status.contains("413"), "{status} {body}");
    // The switch itself, through the client `emogate ctl` uses.
    let endpoint = Endpoint::http(&format!("http://127.0.0.1:{port}")).unwrap();
    let reply = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    assert_eq!(reply["ok"], true, "{reply}");
    let seq = reply["seq"].as_u64().unwrap();
    let (_, body) = http(
        port,
        &format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    );
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["adapter"], "affect-all", "{status}");
    assert!(run.wait_exit(TIMEOUT).success(), "{}", run.stderr());
    check_switched_run(&run.messages(), seq, windows);
}

/// A live-paced run controlled on `socket`, until killed.
fn live_run(socket: &Path, extra: &[&str]) -> Running {
    let mut c = emogate();
    c.args([
        "run",
        "--model",
        BASE_MODEL,
        "--video",
        VIDEO,
        "--audio",
        AUDIO,
        "--pace",
        "realtime",
        "--loop",
        "--hop-ms",
        "100",
        "--control",
    ])
    .arg(format!("unix:{}", socket.display()))
    .args(extra);
    let run = Running::spawn(c);
    wait_for_path(socket, TIMEOUT);
    run
}

#[test]
fn latest_switch_wins_and_bad_requests_get_errors_without_blocking_others() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    // A prepared switch is installed between two windows: a 400 ms forward
    // pass keeps the first switch pending long enough for the second to
    // replace it, however fast the merge is on this machine.
    let run = live_run(
        &socket,
        &[
            "--adapter",
            AFFECT_GATE,
            "--adapter",
            AFFECT_ALL,
            "--debug-inference-delay-ms",
            "400",
        ],
    );
    run.wait_for("an event", TIMEOUT, |m| !emotions(m).is_empty());

    // A client that connects and says nothing holds nobody up.
    let _idle = UnixStream::connect(&socket).unwrap();
    let endpoint = Endpoint::Unix(socket.clone());
    let started = Instant::now();
    let status = send(&endpoint, Command::Status);
    assert!(status["uptime_s"].as_f64().is_some(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Two switches back to back: the first is superseded by the second
    // (sent while the first is still pending, as /status shows).
    let first = {
        let endpoint = endpoint.clone();
        std::thread::spawn(move || send(&endpoint, Command::Adapter(Some("affect-gate".into()))))
    };
    wait_status(&endpoint, "gate pending", |s| {
        s["switch_pending"]["to"] == "affect-gate"
    });
    let second = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    let first = first.join().unwrap();
    assert_eq!(first["ok"], false, "{first}");
    assert_eq!(first["superseded_by"], "affect-all", "{first}");
    assert_eq!(second["ok"], true, "{second}");
    assert_eq!(second["replaced"], "affect-gate", "{second}");
    assert_eq!(second["active"], "affect-all");
    run.wait_for("adapter_changed", TIMEOUT, |m| {
        m.iter().any(|m| m["type"] == "adapter_changed")
    });
    let changes: Vec<Value> = run
        .messages()
        .into_iter()
        .filter(|m| m["type"] == "adapter_changed")
        .collect();
    assert_eq!(changes.len(), 1, "gate was never installed: {changes:?}");
    assert_eq!(changes[0]["to"], "affect-all");

    // The same adapter again changes nothing; then back to the base model.
    let again = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    assert_eq!(again["unchanged"], true, "{again}");
    let base = send(&endpoint, Command::Adapter(None));
    assert_eq!((&base["ok"], &base["active"]), (&json!(true), &Value::Null));

    // An unknown name, by path or not, lists the loaded ones.
    for name in ["nope", "models/reference/adapters/affect-gate"] {
        let reply = send(&endpoint, Command::Adapter(Some(name.into())));
        assert_eq!(reply["ok"], false);
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains("loaded: affect-all, affect-gate"), "{error}");
    }

    // Malformed lines get an error; the connection stays usable.
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut replies = BufReader::new(conn.try_clone().unwrap()).lines();
    for bad in [
        "not json",
        r#"{"cmd":"adapter","active":"affect-gate","dir":"/tmp"}"#,
        "[]",
    ] {
        writeln!(conn, "{bad}").unwrap();
        let reply: Value = serde_json::from_str(&replies.next().unwrap().unwrap()).unwrap();
        assert_eq!(reply["ok"], false, "{bad}: {reply}");
    }
    writeln!(conn, r#"{{"cmd":"status"}}"#).unwrap();
    let reply: Value = serde_json::from_str(&replies.next().unwrap().unwrap()).unwrap();
    assert!(reply["counters"].is_object(), "{reply}");

    // A request over 64 KiB: an error, then the connection is closed.
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let big = format!(r#"{{"cmd":"status","x":"{}"}}"#, "x".repeat(100_000));
    let _ = conn.write_all(big.as_bytes());
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert!(
        reply["error"].as_str().unwrap().contains("65536"),
        "{reply}"
    );

    // And `emogate ctl` is the same client.
    let out = emogate()
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["adapter", "affect-gate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["active"], "affect-gate");
    let out = emogate()
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["adapter", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    drop(run);
}

fn write_config(path: &Path, adapters: &[(&str, &str)], extra: &str) {
    let root = repo();
    let mut text = format!(
        "model = \"{}\"\n{extra}\n[adapters]\n",
        root.join(BASE_MODEL).display()
    );
    for (name, dir) in adapters {
        text.push_str(&format!("{name} = \"{}\"\n", root.join(dir).display()));
    }
    // Written whole, then renamed: the engine never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_adds_and_drops_adapters_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    let config = dir.path().join("config.toml");
    let gate = ("affect-gate", "models/reference/adapters/affect-gate");
    let all_linear = ("affect-all", "models/reference/adapters/affect-all");
    write_config(&config, &[gate], "");
    let run = live_run(&socket, &["--config", config.to_str().unwrap()]);
    let endpoint = Endpoint::Unix(socket.clone());
    let reply = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("loaded: affect-gate"),
        "{reply}"
    );

    // The file gains an adapter (and a setting that needs a restart).
    write_config(&config, &[gate, all_linear], "hop_ms = 50");
    let reply = send(&endpoint, Command::Reload);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["added"], json!(["affect-all"]));
    assert_eq!(reply["restart_needed"], json!(["hop_ms"]));
    let reply = send(&endpoint, Command::Adapter(Some("affect-all".into())));
    assert_eq!(reply["ok"], true, "{reply}");

    // Removing the active adapter is refused, and nothing changes.
    write_config(&config, &[gate], "");
    let reply = send(&endpoint, Command::Reload);
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("`affect-all` is active"),
        "{reply}"
    );
    assert_eq!(
        send(&endpoint, Command::Status)["adapters"],
        json!(["affect-all", "affect-gate"])
    );

    // SIGHUP: back to the base model, then drop `affect-all`.
    assert_eq!(send(&endpoint, Command::Adapter(None))["ok"], true);
    run.signal(libc::SIGHUP);
    wait_status(&endpoint, "the SIGHUP reload", |s| {
        s["adapters"] == json!(["affect-gate"]) && s["last_reload"]["ok"] == true
    });

    // A file that no longer parses: reported, the settings in force stay.
    std::fs::write(&config, "hop_ms = [oops\n").unwrap();
    let reply = send(&endpoint, Command::Reload);
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("config.toml"),
        "{reply}"
    );
    run.signal(libc::SIGHUP);
    wait_status(&endpoint, "the failed SIGHUP reload", |s| {
        s["last_reload"]["ok"] == false
    });
    let status = send(&endpoint, Command::Status);
    assert_eq!(status["adapters"], json!(["affect-gate"]));
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("config.toml")
    );
    // Still serving.
    let before = emotions(&run.messages()).len();
    run.wait_for("events after the failed reload", TIMEOUT, |m| {
        emotions(m).len() > before + 2
    });
}

fn wait_status(endpoint: &Endpoint, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = send(endpoint, Command::Status);
        if done(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: status {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
