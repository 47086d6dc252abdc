//! The dashboard in headless Chromium: fed by an `HttpSink` publishing a
//! scripted minute of emotions, it must show the last published label, a
//! chart with data, the sources, and no script or CSP errors; the
//! screenshots must not be blank. With two tracked faces it must show one
//! row per face and their boxes where their coordinates put them, and
//! drop a face on `face_lost` (for late clients too) or after 5 s of
//! stream time without news of it.
//!
//! Needs Chromium (`apt-get install chromium`); `EMOGATE_SKIP_BROWSER=1`
//! skips. Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard-WxH.png`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use emogate_engine::event::Message;
use emogate_engine::sink::Sink;
use emogate_engine::sink::http::HttpSink;
use serde_json::Value;
use support::browser::{self, FACES_STATE, LAPTOP, ROBOT_7IN, ROBOT_7IN_SMALL, Viewport};
use support::events::{
    emotion, face, face_appeared, face_emotion, face_lost, script, source_error, source_opened,
};

/// Emotion events published before the page opens (a minute at 4 Hz,
/// replayed from the backlog), then live ones.
const HISTORY: u64 = 240;
const LIVE: u64 = 100;
const HOP_S: f64 = 0.25;

/// The dashboard's colour for each example label (see dashboard.html).
fn label_rgb(label: &str) -> [u8; 3] {
    match label {
        "neutral" => [0x94, 0xa3, 0xb8],
        "happy" => [0xfa, 0xcc, 0x15],
        "sad" => [0x60, 0xa5, 0xfa],
        "angry" => [0xef, 0x44, 0x44],
        "surprised" => [0xfb, 0x92, 0x3c],
        other => panic!("no colour for {other}"),
    }
}

fn expression(m: &Message) -> String {
    match m {
        Message::Emotion(e) => e.expression.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Publishes the history at once, then live events every 40 ms, then the
/// last label again every 250 ms until `stop`.
fn publisher(mut sink: HttpSink, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<HttpSink> {
    std::thread::spawn(move || {
        let messages = script(HISTORY + LIVE, HOP_S);
        sink.publish(&source_opened(
            0.0,
            "video",
            "file:tests/fixtures/sample/face.y4m",
        ))
        .unwrap();
        sink.publish(&source_opened(0.0, "audio", "alsa:hw:1,0"))
            .unwrap();
        let mut publish_error = true;
        for (i, m) in messages.iter().enumerate() {
            if i as u64 >= HISTORY {
                std::thread::sleep(Duration::from_millis(40));
            }
            if publish_error && i as u64 >= HISTORY + LIVE / 2 {
                sink.publish(&source_error(
                    (i as f64) * HOP_S,
                    "audio",
                    "alsa:hw:1,0",
                    "device unplugged (ENODEV)",
                    Some(2000),
                ))
                .unwrap();
                publish_error = false;
            }
            sink.publish(m).unwrap();
        }
        let last = expression(messages.last().unwrap());
        let mut seq = HISTORY + LIVE;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            seq += 1;
            sink.publish(&emotion(seq, seq as f64 * HOP_S, &last, 0.86))
                .unwrap();
        }
        sink
    })
}

fn run(viewport: Viewport) {
    if browser::skip() {
        return;
    }
    let status: emogate_engine::sink::StatusHandle = Arc::new(|| {
        serde_json::json!({
            "backend": "tract",
            "ep": ["cpu"],
            "model": "emogate-ref",
            "fps": 4.0,
            "uptime_s": 61.5,
        })
    });
    let sink = HttpSink::bind("127.0.0.1:0".parse().unwrap(), status).unwrap();
    let url = format!("http://{}/", sink.local_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let expected = expression(script(HISTORY + LIVE, HOP_S).last().unwrap());
    let total = HISTORY + LIVE;
    let thread = publisher(sink, Arc::clone(&stop));

    let png = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dashboard-{}x{}.png",
        viewport.width, viewport.height
    ));
    let ready = format!(
        r#"(() => {{
            const l = document.getElementById("label"), c = document.getElementById("chart");
            if (l.textContent !== {expected:?} || l.scrollWidth > l.clientWidth + 1 || (window.emogate.events || 0) < {total}
                || +c.dataset.points < 200 || document.body.dataset.conn !== "live"
                || !document.getElementById("sources").innerText.includes("unplugged")
                || document.getElementById("extra").innerText === ""
                || document.getElementById("ep").textContent !== "cpu") return null;
            const r = l.getBoundingClientRect();
            return {{ label: l.textContent, points: +c.dataset.points, events: window.emogate.events,
                      conn: document.body.dataset.conn, rect: [r.x, r.y, r.width, r.height] }};
        }})()"#
    );
    let rendered = browser::render(&url, viewport, &ready, Duration::from_secs(90), &png);
    stop.store(true, Ordering::SeqCst);
    let sink = thread.join().expect("publisher");
    let rendered = rendered.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("screenshot: {}", rendered.screenshot.display());

    assert_eq!(rendered.ready["label"], expected.as_str());
    assert!(
        rendered.ready["points"].as_u64().unwrap() >= 200,
        "{}",
        rendered.ready
    );
    assert!(
        rendered.errors.is_empty(),
        "page errors: {:?}",
        rendered.errors
    );
    // The page shows the sources, their error and the status fields.
    for needle in [
        "face.y4m",
        "alsa:hw:1,0",
        "device unplugged",
        "retry in 2.0 s",
        "tract",
        "emogate-ref",
        "cpu",
    ] {
        assert!(
            rendered.text.contains(needle),
            "{needle} not in page text:\n{}",
            rendered.text
        );
    }
    assert!(sink.stats().clients >= 1 || sink.stats().clients_total >= 1);

    let rect: Vec<f64> = rendered.ready["rect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    check_screenshot(&rendered.screenshot, viewport, &rect, label_rgb(&expected));
}

/// The PNG has the viewport's size, is not blank, and the label is drawn
/// in its colour.
fn check_screenshot(path: &Path, viewport: Viewport, label_rect: &[f64], rgb: [u8; 3]) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (viewport.width, viewport.height),
        "screenshot size"
    );
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let px = |x: u32, y: u32| {
        let i = (y as usize * info.width as usize + x as usize) * channels;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    // Not blank: luminance varies and many colours appear.
    let mut colours = std::collections::HashSet::new();
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0f64);
    for y in (0..info.height).step_by(2) {
        for x in (0..info.width).step_by(2) {
            let [r, g, b] = px(x, y);
            let l = 0.2126 * r as f64 + 0.7152 * g as f64 + 0.0722 * b as f64;
            sum += l;
            sum2 += l * l;
            n += 1.0;
            colours.insert([r >> 3, g >> 3, b >> 3]);
        }
    }
    let sd = (sum2 / n - (sum / n).powi(2)).max(0.0).sqrt();
    assert!(sd > 8.0, "screenshot looks blank (luminance sd {sd:.1})");
    assert!(
        colours.len() > 40,
        "screenshot has {} colours",
        colours.len()
    );
    // The big label is in the label's colour.
    let [x0, y0, w, h] =
        [label_rect[0], label_rect[1], label_rect[2], label_rect[3]].map(|v| v.max(0.0) as u32);
    let (mut hits, mut area) = (0u32, 0u32);
    for y in y0..(y0 + h).min(info.height) {
        for x in x0..(x0 + w).min(info.width) {
            area += 1;
            let p = px(x, y);
            let d: i32 = (0..3).map(|c| (p[c] as i32 - rgb[c] as i32).abs()).sum();
            if d < 40 {
                hits += 1;
            }
        }
    }
    assert!(
        area > 0 && hits * 100 > area * 5,
        "label region {label_rect:?}: {hits} of {area} pixels in {rgb:?}"
    );
}

#[test]
fn dashboard_shows_live_events_on_a_7_inch_screen() {
    run(ROBOT_7IN);
}

#[test]
fn dashboard_shows_live_events_on_a_small_7_inch_screen() {
    run(ROBOT_7IN_SMALL);
}

#[test]
fn dashboard_shows_live_events_on_a_laptop() {
    run(LAPTOP);
}

#[test]
fn dashboard_reconnects_to_a_restarted_engine_and_starts_over() {
    if browser::skip() {
        return;
    }
    let status: emogate_engine::sink::StatusHandle = Arc::new(|| serde_json::json!({}));
    let mut sink = HttpSink::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&status)).unwrap();
    let addr = sink.local_addr();
    for i in 1..=40u64 {
        sink.publish(&emotion(i, i as f64 * HOP_S, "sad", 0.8))
            .unwrap();
    }
    let mut chrome = browser::Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    let page = chrome
        .open(&format!("http://{addr}/"), ROBOT_7IN)
        .unwrap_or_else(|e| panic!("{e}"));
    let state = browser::DASHBOARD_STATE;
    let wait = |chrome: &mut browser::Browser, cond: &str| {
        chrome
            .wait_for(&page, cond, Duration::from_secs(45))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let v = wait(
        &mut chrome,
        &format!(
            "(s => s.label === 'sad' && s.points === 40 && s.conn === 'live' && s.label)({state})"
        ),
    );
    eprintln!("first run: {v}");

    // The engine goes away: the page notices.
    drop(sink);
    wait(&mut chrome, "document.body.dataset.conn !== 'live'");

    // A new run on the same port (its clock starts again): the page
    // reconnects by itself and drops the old run's chart.
    let mut sink = HttpSink::bind(addr, status).unwrap();
    for i in 1..=5u64 {
        sink.publish(&emotion(i, i as f64 * HOP_S, "surprised", 0.7))
            .unwrap();
    }
    let v = wait(
        &mut chrome,
        &format!(
            "(s => s.label === 'surprised' && s.points === 5 && s.conn === 'live' && s.label)({state})"
        ),
    );
    eprintln!("second run: {v}");
    assert_eq!(sink.stats().clients, 1);
}

#[test]
fn dashboard_shows_uncertain_and_degraded_windows() {
    if browser::skip() {
        return;
    }
    let status: emogate_engine::sink::StatusHandle = Arc::new(|| serde_json::json!({}));
    let mut sink = HttpSink::bind("127.0.0.1:0".parse().unwrap(), status).unwrap();
    // Below the confidence floor, audio missing, no valence/arousal output.
    for i in 1..=20u64 {
        let Message::Emotion(mut e) = emotion(i, i as f64 * HOP_S, "neutral", 0.3) else {
            unreachable!()
        };
        e.expression = None;
        e.confidence = None;
        e.valence = None;
        e.arousal = None;
        e.degraded = true;
        e.missing = vec!["audio"];
        e.counters.degraded = i;
        sink.publish(&Message::Emotion(e)).unwrap();
    }
    let png = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-degraded.png");
    let rendered = browser::render(
        &format!("http://{}/", sink.local_addr()),
        ROBOT_7IN,
        r#"+document.getElementById("chart").dataset.points === 20
           && document.getElementById("label").textContent === "uncertain"
           && document.getElementById("label").scrollWidth <= document.getElementById("label").clientWidth + 1
           && document.body.innerText"#,
        Duration::from_secs(45),
        &png,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rendered.errors.is_empty(),
        "page errors: {:?}",
        rendered.errors
    );
    for needle in [
        "degraded: audio missing",
        "best guess neutral 30%",
        "no valence/arousal output",
    ] {
        assert!(
            rendered.text.contains(needle),
            "{needle} not in:\n{}",
            rendered.text
        );
    }
}

/// A decoded screenshot.
struct Screenshot {
    width: u32,
    height: u32,
    channels: usize,
    buf: Vec<u8>,
}

impl Screenshot {
    fn read(path: &Path) -> Screenshot {
        let file = std::fs::File::open(path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        assert!(channels >= 3, "{:?}", info.color_type);
        Screenshot {
            width: info.width,
            height: info.height,
            channels,
            buf,
        }
    }

    fn px(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * self.channels;
        [self.buf[i], self.buf[i + 1], self.buf[i + 2]]
    }

    /// Whether a pixel within 2 px horizontally of `(x, y)` (CSS pixels at
    /// scale 1) has colour `rgb`.
    fn has_colour_near(&self, x: f64, y: f64, rgb: [u8; 3]) -> bool {
        let (x, y) = (x.round() as i64, y.round() as i64);
        (x - 2..=x + 2).any(|xx| {
            xx >= 0 && y >= 0 && (xx as u32) < self.width && (y as u32) < self.height && {
                let p = self.px(xx as u32, y as u32);
                (0..3)
                    .map(|c| (p[c] as i32 - rgb[c] as i32).abs())
                    .sum::<i32>()
                    < 40
            }
        })
    }
}

const FRAME: (u32, u32) = (1280, 720);

/// Where the two faces are in window `i`: f1 moves right, f2 moves down
/// and its box ends past the frame's right edge.
fn face_boxes(i: u64) -> [[f32; 4]; 2] {
    let i = i as f32;
    [
        [80.0 + 10.0 * i, 160.0, 240.0, 280.0],
        [900.0 + 5.0 * i, 60.0 + 4.0 * i, 220.0, 260.0],
    ]
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The row and box of face `id` in a [`FACES_STATE`] value.
fn face_parts<'a>(state: &'a Value, id: &str) -> (Option<&'a Value>, Option<&'a Value>) {
    let find = |key: &str| {
        state[key]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["id"] == id))
    };
    (find("rows"), find("boxes"))
}

/// The box of `id` is drawn where `bbox` (source pixels) lands in the
/// frame rectangle on screen, and the frame keeps the source's aspect.
fn assert_box_placed(state: &Value, id: &str, bbox: [f32; 4]) {
    let frame = numbers(&state["frame"]);
    let (fw, fh) = (FRAME.0 as f64, FRAME.1 as f64);
    assert!(
        ((frame[2] / frame[3]) - fw / fh).abs() < 0.01,
        "frame on screen {frame:?} is not {fw}:{fh}"
    );
    assert!(frame[2] > 150.0, "frame drawn {frame:?}: too small to read");
    let scale = frame[2] / fw;
    let (_, bx) = face_parts(state, id);
    let bx = bx.unwrap_or_else(|| panic!("no box for {id}: {state}"));
    let screen = numbers(&bx["screen"]);
    let want = [
        frame[0] + bbox[0] as f64 * scale,
        frame[1] + bbox[1] as f64 * scale,
        bbox[2] as f64 * scale,
        bbox[3] as f64 * scale,
    ];
    for k in 0..4 {
        assert!(
            (screen[k] - want[k]).abs() < 1.0,
            "box {id} at {screen:?} on screen, expected {want:?} (frame {frame:?})"
        );
    }
}

#[test]
fn dashboard_shows_a_row_and_a_box_per_tracked_face() {
    if browser::skip() {
        return;
    }
    let status: emogate_engine::sink::StatusHandle = Arc::new(|| serde_json::json!({}));
    let mut sink = HttpSink::bind("127.0.0.1:0".parse().unwrap(), status).unwrap();
    let url = format!("http://{}/", sink.local_addr());
    let mut seq = 0u64;
    let mut emotions = 0u64;
    // One event per face per window, same stamp, alternating: f1 neutral
    // then surprised (the longest label, to fit on a 7" row), f2 sad, f1 speaking.
    let mut window = |sink: &mut HttpSink, i: u64, faces: &[&str]| {
        let t = i as f64 * HOP_S;
        let [b1, b2] = face_boxes(i);
        for id in faces {
            seq += 1;
            emotions += 1;
            let m = match *id {
                "f1" => face_emotion(
                    seq,
                    t,
                    &face("f1", b1, FRAME, 0.97),
                    if i < 24 { "neutral" } else { "surprised" },
                    0.86,
                    Some(0.62),
                ),
                "f2" => face_emotion(seq, t, &face("f2", b2, FRAME, 0.91), "sad", 0.74, Some(0.0)),
                _ => face_emotion(
                    seq,
                    t,
                    &face(id, [600.0, 420.0, 150.0, 180.0], FRAME, 0.8),
                    "angry",
                    0.66,
                    None,
                ),
            };
            sink.publish(&m).unwrap();
        }
        emotions
    };
    let [b1, b2] = face_boxes(0);
    sink.publish(&face_appeared(0.0, &face("f1", b1, FRAME, 0.97)))
        .unwrap();
    sink.publish(&face_appeared(0.0, &face("f2", b2, FRAME, 0.91)))
        .unwrap();
    // Before any page opens: replayed from the backlog.
    for i in 1..=24 {
        window(&mut sink, i, &["f1", "f2"]);
    }

    let mut chrome = browser::Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    let viewports = [ROBOT_7IN_SMALL, ROBOT_7IN, LAPTOP];
    let pages: Vec<_> = viewports
        .iter()
        .map(|v| chrome.open(&url, *v).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let wait = |chrome: &mut browser::Browser, page: &browser::Page, cond: &str| {
        chrome
            .wait_for(
                page,
                &format!("(s => ({cond}) && s)({FACES_STATE})"),
                Duration::from_secs(45),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for page in &pages {
        wait(
            &mut chrome,
            page,
            "s.conn === 'live' && s.events === 48 && s.rows.length === 2 && s.boxes.length === 2",
        );
    }
    // Live: the boxes move, f1 turns surprised.
    let mut total = 0;
    for i in 25..=40 {
        total = window(&mut sink, i, &["f1", "f2"]);
        std::thread::sleep(Duration::from_millis(30));
    }
    let [b1, b2] = face_boxes(40);
    for (page, viewport) in pages.iter().zip(viewports) {
        chrome.activate(page).unwrap_or_else(|e| panic!("{e}"));
        let s = wait(
            &mut chrome,
            page,
            &format!(
                "s.events === {total} && s.rows.length === 2 && s.boxes.length === 2 \
                 && s.rows.every(r => r.points >= 40) \
                 && s.rows[0].label === 'surprised' && s.boxes[0].x === {} && s.boxes[1].y === {}",
                b1[0], b2[1]
            ),
        );
        let size = format!("{}x{}", viewport.width, viewport.height);
        assert_eq!(s["faceMode"], true, "{size}: {s}");
        assert_eq!(
            s["nowShown"], false,
            "{size}: the single-stream card stays hidden"
        );
        let (row1, _) = face_parts(&s, "f1");
        let (row2, _) = face_parts(&s, "f2");
        let (row1, row2) = (row1.unwrap(), row2.unwrap());
        assert_eq!(
            (&row1["label"], &row1["conf"]),
            (&Value::from("surprised"), &Value::from("86%")),
            "{size}: {row1}"
        );
        assert_eq!(
            (&row2["label"], &row2["conf"]),
            (&Value::from("sad"), &Value::from("74%")),
            "{size}: {row2}"
        );
        assert!(
            row1["meta"].as_str().unwrap().contains("speech 62%"),
            "{size}: {row1}"
        );
        for row in [row1, row2] {
            assert_eq!(row["labelFits"], true, "{size}: label cut: {row}");
            // The whole row is on screen.
            let r = numbers(&row["rect"]);
            assert!(
                r[0] >= 0.0
                    && r[1] >= 0.0
                    && r[0] + r[2] <= viewport.width as f64 + 0.5
                    && r[1] + r[3] <= viewport.height as f64 + 0.5,
                "{size}: row off screen {r:?}"
            );
        }
        assert_box_placed(&s, "f1", b1);
        assert_box_placed(&s, "f2", b2);
        let (_, box2) = face_parts(&s, "f2");
        assert_eq!(box2.unwrap()["text"], "f2 · sad", "{size}");
    }
    // The screenshots: each box's left edge is drawn in its label's colour.
    let shots: Vec<PathBuf> = viewports
        .iter()
        .map(|v| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("dashboard-faces-{}x{}.png", v.width, v.height))
        })
        .collect();
    let mut frames = Vec::new();
    for ((page, shot), viewport) in pages.iter().zip(&shots).zip(viewports) {
        chrome.activate(page).unwrap_or_else(|e| panic!("{e}"));
        chrome
            .eval(
                page,
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
            )
            .unwrap();
        let s = chrome.eval(page, FACES_STATE).unwrap();
        chrome.screenshot(page, shot).unwrap();
        eprintln!("screenshot: {}", shot.display());
        let png = Screenshot::read(shot);
        assert_eq!((png.width, png.height), (viewport.width, viewport.height));
        for (id, label) in [("f1", "surprised"), ("f2", "sad")] {
            let (_, bx) = face_parts(&s, id);
            let r = numbers(&bx.unwrap()["screen"]);
            assert!(
                png.has_colour_near(r[0], r[1] + r[3] / 2.0, label_rgb(label)),
                "{}: no {label} edge at the left of box {id} {r:?}",
                shot.display()
            );
        }
        // f2's box reaches past the frame's right edge: clipped there.
        let frame = numbers(&s["frame"]);
        let (_, bx) = face_parts(&s, "f2");
        let r = numbers(&bx.unwrap()["screen"]);
        assert!(
            !png.has_colour_near(
                frame[0] + frame[2] + 4.0,
                r[1] + r[3] / 2.0,
                label_rgb("sad")
            ),
            "{}: f2's box drawn outside the frame",
            shot.display()
        );
        frames.push((s, png));
    }
    assert!(chrome.errors.is_empty(), "page errors: {:?}", chrome.errors);

    // f2 is lost; f1 goes on.
    sink.publish(&face_lost(10.5, &face("f2", b2, FRAME, 0.91), 10.0))
        .unwrap();
    for i in 41..=44 {
        total = window(&mut sink, i, &["f1"]);
    }
    for (k, page) in pages.iter().enumerate() {
        chrome.activate(page).unwrap_or_else(|e| panic!("{e}"));
        let s = wait(
            &mut chrome,
            page,
            &format!(
                "s.events === {total} && s.rows.length === 1 && s.boxes.length === 1 \
                 && s.rows[0].id === 'f1' && s.boxes[0].id === 'f1'"
            ),
        );
        assert_box_placed(&s, "f1", face_boxes(44)[0]);
        if k == 0 {
            let shot =
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-faces-lost-800x480.png");
            chrome.screenshot(page, &shot).unwrap();
            eprintln!("screenshot: {}", shot.display());
            let png = Screenshot::read(&shot);
            let (before, _) = &frames[0];
            let (_, bx) = face_parts(before, "f2");
            let r = numbers(&bx.unwrap()["screen"]);
            assert!(
                !png.has_colour_near(r[0], r[1] + r[3] / 2.0, label_rgb("sad")),
                "{}: f2's box is still drawn",
                shot.display()
            );
        }
    }

    // A client that connects now is replayed f2's events and its loss:
    // f2 does not come back.
    let late = chrome
        .open(&url, ROBOT_7IN)
        .unwrap_or_else(|e| panic!("{e}"));
    let s = wait(
        &mut chrome,
        &late,
        &format!("s.conn === 'live' && s.events === {total}"),
    );
    let ids: Vec<&Value> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&Value::from("f1")], "late client: {s}");
    assert_eq!(s["boxes"].as_array().unwrap().len(), 1, "late client: {s}");

    // A face whose face_lost never comes: its row and box go once it has
    // had no message for 5 s of stream time (FACE_STALE_S), not before.
    total = window(&mut sink, 45, &["f1", "f3"]);
    wait(
        &mut chrome,
        &late,
        &format!("s.events === {total} && s.rows.length === 2 && s.boxes.length === 2"),
    );
    for i in 46..=64 {
        total = window(&mut sink, i, &["f1"]);
    }
    wait(
        &mut chrome,
        &late,
        &format!("s.events === {total} && s.rows.length === 2 && s.rows[1].id === 'f3'"),
    );
    total = window(&mut sink, 66, &["f1"]);
    wait(
        &mut chrome,
        &late,
        &format!(
            "s.events === {total} && s.rows.length === 1 && s.rows[0].id === 'f1' \
             && s.boxes.length === 1"
        ),
    );
    assert!(chrome.errors.is_empty(), "page errors: {:?}", chrome.errors);
}
