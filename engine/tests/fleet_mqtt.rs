//! `mqtt://` and `mqtts://` against a real Mosquitto broker on loopback:
//! every event in order with the retained status and the last will; an
//! outage mid-run (other outputs unaffected, counters add up); TLS with a
//! CA made here; a wrong password, a broker that never answers CONNECT,
//! malformed specs.
//!
//! Needs `mosquitto`, `mosquitto_sub`, `mosquitto_passwd` (Debian
//! `mosquitto`, `mosquitto-clients`) and `openssl`; see
//! `support::fleet::tools_present` for when the tests skip. About 40 s in
//! all, mostly real-time replay.
#![cfg(feature = "mqtt")]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::{Broker, BrokerTls, Received, Subscriber, tools_present};
use support::proc::{AUDIO, MODEL, Running, VIDEO, emogate, emotions, free_port};

const TOOLS: &[&str] = &["mosquitto", "mosquitto_sub", "mosquitto_passwd"];
const INSTALL: &str = "apt-get install mosquitto mosquitto-clients";
const T: Duration = Duration::from_secs(20);

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("[mqtt]\npassword_env = \"EMOGATE_TEST_MQTT_PW\"\ndevice_id = \"kit1\"\nqos = 1\n{extra}"),
    )
    .unwrap();
    path
}

/// `emogate run` replaying the sample clip in a loop, in real time at a
/// 100 ms hop (10 events a second), to stdout and `mqtt`.
fn looping_run(config: &Path, mqtt: &str) -> Command {
    let mut c = emogate();
    c.args(["run", "--model", MODEL, "--video", VIDEO, "--audio", AUDIO])
        .args(["--loop", "--pace", "realtime", "--hop-ms", "100"])
        .args(["--output", "jsonl:-", "--output", mqtt, "--config"])
        .arg(config)
        .env("EMOGATE_TEST_MQTT_PW", "kit-pw")
        .env("RUST_LOG", "info");
    c
}

/// `emogate run` on the sample clip once, as fast as it goes (6 events).
fn finite_run(config: &Path, mqtt: &str) -> Command {
    let mut c = emogate();
    c.args(["run", "--model", MODEL, "--video", VIDEO, "--audio", AUDIO])
        .args(["--pace", "fast", "--hop-ms", "200"])
        .args(["--output", "jsonl:-", "--output", mqtt, "--config"])
        .arg(config)
        .env("EMOGATE_TEST_MQTT_PW", "kit-pw")
        .env("RUST_LOG", "info");
    c
}

fn on<'a>(got: &'a [Received], suffix: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.topic.ends_with(suffix)).collect()
}

#[test]
fn every_event_arrives_in_order_with_retained_status_and_last_will() {
    if !tools_present("mqtt", TOOLS, INSTALL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), free_port(), None);
    let sub = Subscriber::start(broker.port, "emo/kit1/#", &[]);
    let url = format!("mqtt://kit@127.0.0.1:{}/emo", broker.port);
    let run = Running::spawn(looping_run(&config(dir.path(), ""), &url));
    run.wait_for("25 events", T, |m| emotions(m).len() >= 25);
    // The engine dies without a word: the broker publishes the last will.
    run.signal(libc::SIGKILL);
    sub.wait_until("the last will", T, |got| {
        on(got, "/status")
            .last()
            .is_some_and(|s| s.payload["reason"] == "connection lost")
    });
    let got = sub.received();
    let status = on(&got, "/status");
    assert_eq!(status[0].payload["state"], "online", "{:?}", status[0]);
    assert_eq!(status[0].payload["device_id"], "kit1");
    assert!(status[0].retained || status.len() > 1, "status is retained");
    let will = status.last().unwrap();
    assert_eq!(will.payload["state"], "offline");
    // Every message the engine printed before it died, in order, with
    // nothing missing or extra: MQTT gets a prefix of stdout (the sink
    // thread writes stdout first, and the kill may cut the last ones).
    let printed = run.messages();
    let events: Vec<&Value> = on(&got, "/events").iter().map(|r| &r.payload).collect();
    assert!(events.len() >= 20, "only {} events over MQTT", events.len());
    assert!(events.len() <= printed.len());
    for (i, (mqtt, stdout)) in events.iter().zip(&printed).enumerate() {
        assert_eq!(*mqtt, stdout, "message {i} differs");
    }
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "emotion")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq in order: {seqs:?}"
    );
}

#[test]
fn an_outage_costs_counted_messages_and_nothing_else() {
    if !tools_present("mqtt", TOOLS, INSTALL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), free_port(), None);
    // A small outbox so a 3 s outage (about 30 events) overflows it.
    let config = config(dir.path(), "buffer = 8\n");
    let url = format!("mqtt://kit@127.0.0.1:{}/emo", broker.port);
    let mut run = Running::spawn(looping_run(&config, &url));
    run.wait_for("10 events", T, |m| emotions(m).len() >= 10);

    broker.stop();
    let before = emotions(&run.messages()).len();
    std::thread::sleep(Duration::from_secs(3));
    let during = emotions(&run.messages()).len() - before;
    // stdout went on at 10 events a second while the broker was away.
    assert!(
        during >= 20,
        "only {during} events on stdout during the outage"
    );

    broker.restart(None);
    let sub = Subscriber::start(broker.port, "emo/kit1/status", &[]);
    // After reconnecting, the retained status counts what was dropped.
    sub.wait_until("the status after reconnecting", T, |got| {
        got.iter().any(|r| {
            r.payload["state"] == "online" && r.payload["counters"]["dropped"].as_u64() > Some(0)
        })
    });
    let online = sub
        .received()
        .into_iter()
        .find(|r| r.payload["state"] == "online")
        .unwrap();
    assert_eq!(online.payload["counters"]["reconnects"], 1);
    let dropped_then = online.payload["counters"]["dropped"].as_u64().unwrap();
    // The outbox kept the newest 8; everything older from the outage
    // (which lasts until the reconnect, after the 3 s measured) dropped.
    assert!(
        dropped_then + 8 + 2 >= during as u64,
        "{online:?}, {during} during"
    );
    let after = emotions(&run.messages()).len();
    run.wait_for("10 more events", T, |m| emotions(m).len() >= after + 10);

    // A clean stop: the final retained status accounts for every message.
    run.signal(libc::SIGINT);
    assert!(run.wait_exit(T).success(), "{}", run.stderr());
    sub.wait_until("the final status", T, |got| {
        got.iter().any(|r| r.payload["reason"] == "stopped")
    });
    let last = sub
        .received()
        .into_iter()
        .find(|r| r.payload["reason"] == "stopped")
        .unwrap();
    let c = &last.payload["counters"];
    let n = |k: &str| c[k].as_u64().unwrap();
    let printed = run.messages().len() as u64;
    assert_eq!(
        n("published"),
        printed,
        "every printed message reached the output: {c}"
    );
    assert_eq!(
        n("delivered") + n("dropped") + n("queued"),
        n("published"),
        "counters add up: {c}"
    );
    assert_eq!(n("queued"), 0, "drained at the stop: {c}");
    assert!(n("dropped") >= dropped_then);
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_ca(dir: &Path, name: &str) -> BrokerTls {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = format!("{name}-ca");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.pem"),
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{ca}.pem"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-out",
        &format!("{name}.pem"),
        "-days",
        "2",
        "-extfile",
        &format!("{name}.ext"),
    ]);
    BrokerTls {
        ca: dir.join(format!("{ca}.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

#[test]
fn tls_with_the_configured_ca_and_a_clear_error_with_another() {
    if !tools_present("mqtts", &[TOOLS, &["openssl"]].concat(), INSTALL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = make_ca(dir.path(), "broker");
    let broker = Broker::start(dir.path(), free_port(), Some(&tls));
    let ca = tls.ca.to_str().unwrap();
    let sub = Subscriber::start(broker.port, "emo/kit1/#", &["--cafile", ca]);
    let url = format!("mqtts://kit@127.0.0.1:{}/emo", broker.port);

    let good = config(dir.path(), &format!("ca_file = {ca:?}\n"));
    let out = finite_run(&good, &url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    sub.wait_until("the final status", T, |got| {
        got.iter().any(|r| r.payload["reason"] == "stopped")
    });
    let got = sub.received();
    let events: Vec<&Value> = on(&got, "/events").iter().map(|r| &r.payload).collect();
    assert_eq!(events.len(), printed.len());
    assert!(events.iter().zip(&printed).all(|(a, b)| *a == b));
    assert_eq!(emotions(&printed).len(), 6);

    // A CA that did not sign the broker's certificate: refused at start.
    let other = make_ca(dir.path(), "other");
    let bad = config(
        dir.path(),
        &format!("ca_file = {:?}\n", other.ca.to_str().unwrap()),
    );
    let t0 = Instant::now();
    let out = finite_run(&bad, &url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS") && stderr.contains(&url), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_wrong_password_is_a_clear_error_at_start() {
    if !tools_present("mqtt", TOOLS, INSTALL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), free_port(), None);
    let url = format!("mqtt://kit@127.0.0.1:{}/emo", broker.port);
    let t0 = Instant::now();
    let out = finite_run(&config(dir.path(), ""), &url)
        .env("EMOGATE_TEST_MQTT_PW", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains("refused the connection"),
        "{stderr}"
    );
    // One attempt, then a clean exit: no retry loop, no panic.
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(!stderr.contains("panicked"), "{stderr}");
    // An unset password variable is named before any connection.
    let out = finite_run(&config(dir.path(), ""), &url)
        .env_remove("EMOGATE_TEST_MQTT_PW")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("EMOGATE_TEST_MQTT_PW") && stderr.contains("not set"),
        "{stderr}"
    );
}

#[test]
fn a_broker_that_never_answers_costs_the_run_nothing() {
    // A TCP listener that accepts and stays silent: no tools needed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://kit@127.0.0.1:{port}/emo");
    let out = finite_run(&config(dir.path(), ""), &url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(emotions(&printed).len(), 6, "stdout unaffected");
    assert!(stderr.contains("no answer to CONNECT"), "{stderr}");
    drop(held);
}

#[test]
fn malformed_specs_are_refused_before_anything_starts() {
    for (spec, needle) in [
        (
            "mqtt://kit:secret@127.0.0.1/emo",
            "password on the command line",
        ),
        ("mqtt://127.0.0.1/emo/#", "wildcard"),
        ("mqtt://127.0.0.1/emo/+/x", "wildcard"),
        ("mqtt://127.0.0.1", "topic prefix is missing"),
        ("mqtt:127.0.0.1/emo", "expected mqtt://"),
        ("mqtt://127.0.0.1:70000/emo", "port `70000`"),
        ("ros2:abc", "domain id"),
        ("ros2:999", "domain id"),
    ] {
        let out = emogate()
            .args(["run", "--model", MODEL, "--video", VIDEO, "--audio", AUDIO])
            .args(["--output", spec])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec}");
        assert!(
            stderr.contains(spec) && stderr.contains(needle),
            "{spec}: {stderr}"
        );
    }
}
