//! What the fleet-output tests (`mqtt://`, `ros2:`) run against: a real
//! Mosquitto broker and `mosquitto_sub` on loopback, and the rule for
//! skipping when those tools are absent.
//!
//! A test skips (printing why) only when its tools are missing AND
//! `EMOGATE_REQUIRE_FLEET` is unset; CI sets it, so there a missing tool
//! fails the test instead of letting it pass without running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether `program` runs (`--help`/`-h` exit status ignored).
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether the test may go on: true when every program in `tools` runs;
/// otherwise prints why it skips, or panics under `EMOGATE_REQUIRE_FLEET`.
pub fn tools_present(test: &str, tools: &[&str], install: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !runs(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: {} not found ({install})", missing.join(", "));
    if std::env::var_os("EMOGATE_REQUIRE_FLEET").is_some() {
        panic!("{why}; EMOGATE_REQUIRE_FLEET is set, so this is a failure");
    }
    skipped(&why);
    false
}

/// Prints why a test skipped, past libtest's capture (which swallows
/// `eprintln!` of passing tests), so the skip shows in every log.
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {why}; set EMOGATE_REQUIRE_FLEET=1 to make this a failure"
    );
}

/// Mosquitto on `127.0.0.1:port`, with a password file (users `kit` and
/// `watcher`, passwords `kit-pw`, `watcher-pw`) and optionally TLS.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Broker {
    pub fn start(dir: &Path, port: u16, tls: Option<&BrokerTls>) -> Self {
        let passwd = dir.join("passwd");
        if !passwd.exists() {
            for (i, (user, pw)) in [("kit", "kit-pw"), ("watcher", "watcher-pw")]
                .iter()
                .enumerate()
            {
                let mut c = Command::new("mosquitto_passwd");
                if i == 0 {
                    c.arg("-c");
                }
                let ok = c
                    .args(["-b", passwd.to_str().unwrap(), user, pw])
                    .status()
                    .expect("mosquitto_passwd runs")
                    .success();
                assert!(ok, "mosquitto_passwd failed");
            }
        }
        let mut conf = format!(
            "user root\npersistence false\nallow_anonymous false\npassword_file {}\nlistener {port} 127.0.0.1\n",
            passwd.display()
        );
        if let Some(t) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            ));
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// Stops the broker (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (retained messages are gone:
    /// persistence is off).
    pub fn restart(&mut self, tls: Option<&BrokerTls>) {
        self.stop();
        let again = Broker::start(&self.dir.clone(), self.port, tls);
        *self = again;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message `mosquitto_sub` received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retained: bool,
    pub payload: Value,
}

/// `mosquitto_sub` on `topic` as user `watcher`; lines collected on a
/// thread. `extra` adds arguments (TLS).
pub struct Subscriber {
    child: Child,
    got: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<Mutex<bool>>,
}

impl Subscriber {
    pub fn start(port: u16, topic: &str, extra: &[&str]) -> Self {
        assert!(
            super::fleet::tools_present("mqtt", &["stdbuf"], "coreutils"),
            "stdbuf (coreutils) is missing"
        );
        // Line-buffered: its stdout is a pipe, which stdio would otherwise
        // fill block by block.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", "watcher", "-P", "watcher-pw", "-q", "1", "-d"])
            .args(["-t", topic, "-F", "MSG\t%t\t%r\t%p"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts");
        let out = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        {
            let got = Arc::clone(&got);
            let subscribed = Arc::clone(&subscribed);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("received SUBACK") {
                        *subscribed.lock().unwrap() = true;
                    }
                    let Some(rest) = line.strip_prefix("MSG\t") else {
                        continue;
                    };
                    let mut parts = rest.splitn(3, '\t');
                    let (Some(topic), Some(r), Some(p)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let payload = serde_json::from_str(p)
                        .unwrap_or_else(|e| panic!("payload on {topic} is not JSON ({e}): {p}"));
                    got.lock().unwrap().push(Received {
                        topic: topic.to_string(),
                        retained: r == "1",
                        payload,
                    });
                }
            });
        }
        let s = Subscriber {
            child,
            got,
            subscribed,
        };
        s.wait_until("the SUBACK", Duration::from_secs(10), |_| {
            *s.subscribed.lock().unwrap()
        });
        s
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.got.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received within {timeout:?}; got {:?}",
                self.received()
                    .iter()
                    .map(|r| (&r.topic, &r.payload["type"], &r.payload["state"]))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
