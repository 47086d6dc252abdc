//! Headless Chromium, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages separated by NUL on fds 3
//! and 4), so no WebSocket client, Node or WebDriver is needed.
//!
//! [`render`] is the one-call form: open a URL at a viewport, wait until a
//! JavaScript condition holds, and return the page's text, the condition's
//! value, console errors and a PNG screenshot.
//!
//! Chromium is found as `$EMOGATE_CHROMIUM`, else `chromium`,
//! `chromium-browser`, `google-chrome` on `PATH`. Tests call [`skip`]
//! first: only `EMOGATE_SKIP_BROWSER=1` skips them; a missing browser is
//! an error that says what to install.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// True (and says so) when `EMOGATE_SKIP_BROWSER=1`.
pub fn skip() -> bool {
    let skip = std::env::var("EMOGATE_SKIP_BROWSER").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("EMOGATE_SKIP_BROWSER=1: skipping the headless Chromium test");
    }
    skip
}

/// The Chromium binary to run.
pub fn chromium() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("EMOGATE_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err("no Chromium found: `apt-get install chromium` (Debian), set EMOGATE_CHROMIUM=/path/to/chrome, \
         or set EMOGATE_SKIP_BROWSER=1 to skip the browser tests"
        .into())
}

/// A viewport in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

/// A 7-inch robot screen (1024×600).
pub const ROBOT_7IN: Viewport = Viewport {
    width: 1024,
    height: 600,
    scale: 1.0,
};
/// The other common 7-inch panel (800×480, e.g. the Raspberry Pi display).
pub const ROBOT_7IN_SMALL: Viewport = Viewport {
    width: 800,
    height: 480,
    scale: 1.0,
};
/// A laptop (1440×900).
pub const LAPTOP: Viewport = Viewport {
    width: 1440,
    height: 900,
    scale: 1.0,
};

/// A JavaScript expression for the emogate dashboard's state, for
/// `ready` conditions: `{label, points, events, conn, sources, text}`
/// (the label shown, chart points drawn, emotion events received, the
/// connection pill's state, the sources card's text, the page's text).
/// E.g. `format!("(s => s.conn === 'live' && s.points >= 20 && s)({DASHBOARD_STATE})")`.
pub const DASHBOARD_STATE: &str = r#"(() => ({
    label: document.getElementById("label").textContent,
    labelFits: document.getElementById("label").scrollWidth <= document.getElementById("label").clientWidth + 1,
    points: +document.getElementById("chart").dataset.points,
    events: (window.emogate && window.emogate.events) || 0,
    conn: document.body.dataset.conn,
    sources: document.getElementById("sources").innerText,
    text: document.body.innerText
}))()"#;

/// A JavaScript expression for the dashboard's face view, for `ready`
/// conditions: `{faceMode, nowShown, events, conn, rows, boxes, frame}`:
/// whether the page is in face mode and still shows the single-stream
/// "now" card, emotion events received, the connection pill's state; each
/// face row (`id`, `label`, `conf`, `meta` text, `points` in its chart,
/// `labelFits`, `rect`); each box of the schematic (`id`, its `x`, `y`,
/// `w`, `h` attributes in frame pixels, its `screen` rectangle in CSS
/// pixels, `stroke`, `text`); the frame rectangle on screen (`frame`,
/// `[x, y, width, height]`) and its size in source pixels (`frameSize`).
pub const FACES_STATE: &str = r##"(() => {
    const rect = (el) => { const r = el.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
    const rows = [...document.querySelectorAll("#faces li.face")].map((li) => {
        const label = li.querySelector(".flabel");
        return { id: li.dataset.face, label: label.textContent, conf: li.querySelector(".fconf b").textContent,
                 meta: li.querySelector(".fmeta").innerText, points: +li.querySelector("canvas.fspark").dataset.points,
                 labelFits: label.scrollWidth <= label.clientWidth, rect: rect(li) };
    });
    const boxes = [...document.querySelectorAll("#boxes g.box")].map((g) => {
        const r = g.querySelector("rect");
        return { id: g.dataset.face, x: +r.getAttribute("x"), y: +r.getAttribute("y"),
                 w: +r.getAttribute("width"), h: +r.getAttribute("height"), screen: rect(r),
                 stroke: r.getAttribute("stroke"), text: g.querySelector("text").textContent };
    });
    const frame = document.getElementById("frame");
    return { faceMode: document.body.classList.contains("has-faces"),
             nowShown: document.querySelector(".now").offsetParent !== null,
             events: (window.emogate && window.emogate.events) || 0, conn: document.body.dataset.conn,
             rows, boxes, frame: rect(frame),
             frameSize: [+frame.getAttribute("width"), +frame.getAttribute("height")] };
})()"##;

/// What [`render`] saw.
#[derive(Debug)]
pub struct Rendered {
    /// The value of the `ready` expression when it became truthy.
    pub ready: Value,
    /// `document.body.innerText`.
    pub text: String,
    /// `document.documentElement.outerHTML`.
    pub dom: String,
    /// Where the PNG screenshot went.
    pub screenshot: PathBuf,
    /// Console errors and uncaught exceptions, in order.
    pub errors: Vec<String>,
}

/// Opens `url` at `viewport`, waits (up to `timeout`) until the JavaScript
/// expression `ready` is truthy, then takes a screenshot to `png`.
pub fn render(
    url: &str,
    viewport: Viewport,
    ready: &str,
    timeout: Duration,
    png: &Path,
) -> Result<Rendered, String> {
    let mut browser = Browser::launch()?;
    let page = browser.open(url, viewport)?;
    let ready = browser.wait_for(&page, ready, timeout)?;
    // Let pending animation frames paint.
    browser.eval(
        &page,
        "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
    )?;
    let text = browser.eval(&page, "document.body.innerText")?;
    let dom = browser.eval(&page, "document.documentElement.outerHTML")?;
    browser.screenshot(&page, png)?;
    Ok(Rendered {
        ready,
        text: text.as_str().unwrap_or_default().to_string(),
        dom: dom.as_str().unwrap_or_default().to_string(),
        screenshot: png.to_path_buf(),
        errors: browser.errors.clone(),
    })
}

/// A page: a DevTools session attached to one tab.
pub struct Page {
    session: String,
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: Receiver<Value>,
    next_id: u64,
    profile: tempfile::TempDir,
    /// Console errors and uncaught exceptions seen so far.
    pub errors: Vec<String>,
}

impl Browser {
    pub fn launch() -> Result<Browser, String> {
        let exe = chromium()?;
        let profile = tempfile::tempdir().map_err(|e| format!("profile dir: {e}"))?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))
            .map_err(|e| format!("chromium log: {e}"))?;
        let (ours_r, theirs_w) = std::io::pipe().map_err(|e| e.to_string())?; // browser → us (fd 4)
        let (theirs_r, ours_w) = std::io::pipe().map_err(|e| e.to_string())?; // us → browser (fd 3)
        let (r, w) = (theirs_r.as_raw_fd(), theirs_w.as_raw_fd());
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-color-profile=srgb",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: between fork and exec this only calls async-signal-safe
        // functions (fcntl, dup2, close) on descriptors we own.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above 4 first, so that neither dup2 below
                // can clobber the other.
                let r2 = libc::fcntl(r, libc::F_DUPFD, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r2);
                libc::close(w2);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {}: {e} (`apt-get install chromium`, or EMOGATE_SKIP_BROWSER=1)",
                exe.display()
            )
        })?;
        drop((theirs_r, theirs_w));
        let (tx, from_browser) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(ours_r);
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(0, &mut buf) {
                if n == 0 {
                    break;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        Ok(Browser {
            child,
            to_browser: ours_w,
            from_browser,
            next_id: 0,
            profile,
            errors: Vec::new(),
        })
    }

    /// The tail of Chromium's stderr, for error messages.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// One DevTools command; the browser's own when `session` is `None`.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .map_err(|e| format!("{method}: chromium is gone ({e})\n{}", self.log_tail()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    if let Some(e) = v.get("error") {
                        return Err(format!("{method}: {e}"));
                    }
                    return Ok(v["result"].clone());
                }
                Ok(v) => self.note_event(&v),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{method}: no answer in 60 s\n{}", self.log_tail()));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{method}: chromium exited\n{}", self.log_tail()));
                }
            }
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    d["text"].as_str().unwrap_or_default(),
                    d["exception"]["description"].as_str().unwrap_or_default()
                ));
            }
            Some("Runtime.consoleAPICalled") if p["type"] == "error" || p["type"] == "assert" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| a["description"].to_string())
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", args.join(" ")));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "log: {} {}",
                    p["entry"]["text"].as_str().unwrap_or_default(),
                    p["entry"]["url"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }

    /// Opens a tab at `viewport` and navigates it to `url`.
    pub fn open(&mut self, url: &str, viewport: Viewport) -> Result<Page, String> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or("no targetId")?
            .to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_string();
        let s = Some(session.as_str());
        self.call(s, "Runtime.enable", json!({}))?;
        self.call(s, "Log.enable", json!({}))?;
        self.call(s, "Page.enable", json!({}))?;
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": viewport.width, "height": viewport.height,
                   "deviceScaleFactor": viewport.scale, "mobile": false}),
        )?;
        let nav = self.call(s, "Page.navigate", json!({"url": url}))?;
        if let Some(e) = nav.get("errorText").and_then(Value::as_str) {
            return Err(format!("{url}: {e}"));
        }
        Ok(Page { session })
    }

    /// Brings `page`'s tab to the front: a background tab gets no
    /// animation frames, so a page that draws on them waits for this.
    pub fn activate(&mut self, page: &Page) -> Result<(), String> {
        self.call(Some(&page.session), "Page.bringToFront", json!({}))
            .map(drop)
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value.
    pub fn eval(&mut self, page: &Page, expression: &str) -> Result<Value, String> {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {d}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy; its value.
    pub fn wait_for(
        &mut self,
        page: &Page,
        expression: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            // Errors while the page loads (document not ready) are retried.
            if let Ok(v) = self.eval(page, expression) {
                let truthy = match &v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return Ok(v);
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = self
            .eval(page, "document.body ? document.body.innerText : ''")
            .unwrap_or_default();
        Err(format!(
            "`{expression}` not true within {timeout:?} (last: {last}); errors: {:?}; page text:\n{}",
            self.errors,
            text.as_str().unwrap_or_default()
        ))
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) -> Result<(), String> {
        let r = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        )?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data).ok_or("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding), as DevTools sends binary data.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}
