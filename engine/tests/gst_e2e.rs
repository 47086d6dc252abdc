//! The pipeline fed by GStreamer test sources (no hardware): a live
//! `videotestsrc` and `audiotestsrc` through `emogate run` with the
//! reference model. Built with `--features gstreamer`.
#![cfg(feature = "gstreamer")]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn gstreamer_test_sources_stream_through_the_model_until_they_end() {
    // 4 s of live audio (1600-sample buffers at 16 kHz) and 10 fps video.
    let video = "gst:videotestsrc is-live=true num-buffers=40 pattern=ball \
                 ! video/x-raw,width=160,height=120,framerate=10/1";
    let audio = "gst:audiotestsrc is-live=true num-buffers=40 samplesperbuffer=1600 wave=sine freq=440 \
                 ! audio/x-raw,rate=16000,channels=2";
    let out = Command::new(env!("CARGO_BIN_EXE_emogate"))
        .current_dir(repo())
        .args([
            "run",
            "--model",
            "models/reference/emogate-ref.onnx",
            "--video",
            video,
            "--audio",
            audio,
            "--hop-ms",
            "250",
            "--output",
            "jsonl:-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "source_opened").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "source_ended").count(),
        2,
        "{kinds:?}"
    );
    let ev: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "emotion").collect();
    // 4 s of audio, 2 s window, 250 ms hop: about 9 windows (start-up jitter).
    assert!((6..=10).contains(&ev.len()), "{} events", ev.len());
    for pair in ev.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_u64(),
            pair[0]["seq"].as_u64().map(|s| s + 1)
        );
        let dt = pair[1]["stamp_s"].as_f64().unwrap() - pair[0]["stamp_s"].as_f64().unwrap();
        assert!((dt - 0.25).abs() < 0.06, "stamps {dt:.3} s apart");
    }
    let full: Vec<&&Value> = ev.iter().filter(|e| e["degraded"] == false).collect();
    assert!(
        full.len() + 1 >= ev.len(),
        "both modalities present: {ev:?}"
    );
    for e in &ev {
        let sum: f64 = e["probs"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-3);
    }
}
