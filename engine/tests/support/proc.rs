//! A running `emogate` child for end-to-end tests: its JSON lines read on
//! a thread as they come, killed when dropped, every wait bounded.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf()
}

pub const MODEL: &str = "models/reference/emogate-ref.onnx";
/// The reference experiment's base: the model the bundled adapters belong to.
pub const BASE_MODEL: &str = "models/reference/base/emogate-base.onnx";
pub const VIDEO: &str = "tests/fixtures/sample/face.y4m";
pub const AUDIO: &str = "tests/fixtures/sample/voice.wav";
pub const AFFECT_GATE: &str = "affect-gate=models/reference/adapters/affect-gate";
pub const AFFECT_ALL: &str = "affect-all=models/reference/adapters/affect-all";

/// `emogate` from this build, run in the repository root, without the
/// environment's ONNX Runtime.
pub fn emogate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emogate"));
    c.current_dir(repo()).env_remove("ORT_DYLIB_PATH");
    c
}

/// A child whose stdout is JSON lines.
pub struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Spawns `command` (stdout and stderr captured).
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("emogate starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                    lines.lock().unwrap().push(value);
                }
            })
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Running {
            child,
            lines,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The messages printed so far.
    pub fn messages(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `done(messages)` holds; panics after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (panics after `timeout`, killing the child);
    /// returns its status once stdout is read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "emogate did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emotion events among `messages`.
pub fn emotions(messages: &[Value]) -> Vec<&Value> {
    messages.iter().filter(|m| m["type"] == "emotion").collect()
}

/// Waits until a file exists at `path` (a socket appearing).
pub fn wait_for_path(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
