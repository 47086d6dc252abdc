//! The dashboard in headless Chromium: fed by an `HttpSink` publishing a
//! scripted minute of emotions, it must show the last published label, a
//! chart with data, the sources, and no script or CSP errors; the
//! screenshots must not be blank.
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
use support::browser::{self, LAPTOP, ROBOT_7IN, ROBOT_7IN_SMALL, Viewport};
use support::events::{emotion, script, source_error, source_opened};

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
