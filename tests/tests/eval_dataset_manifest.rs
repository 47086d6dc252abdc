//! `eval --dataset` with a JSON Lines manifest reads the same samples as
//! the equivalent `labels.csv`: identical featurized inputs and scores, and
//! a row whose media file is missing is skipped and reported with its line
//! in both; a folder with both manifests, or neither, is refused.

use std::path::{Path, PathBuf};

use emogate_tests::{fixtures, repo_root};
use emogate_tools::eval::{EvalOptions, EvalReport, EvalSource, eval};
use emogate_tools::verify::running::BackendKind;

fn run(source: &Path, save: &Path) -> emogate_tools::Result<EvalReport> {
    eval(&EvalOptions {
        model: repo_root().join("models/reference/emogate-ref.onnx"),
        compare: None,
        source: EvalSource::Dataset(source.to_path_buf()),
        zero_input: None,
        backend: BackendKind::Tract,
        threads: 1,
        save_inputs: Some(save.to_path_buf()),
        min_acc: None,
    })
}

/// A folder with three faces and two voices from the prep fixtures.
fn media(dir: &Path) {
    for f in [
        "face0.png",
        "face1.png",
        "face2.png",
        "voice0.wav",
        "voice1.wav",
    ] {
        std::fs::copy(fixtures().join("prep").join(f), dir.join(f)).unwrap();
    }
}

// (id, face, audio, label, valence, arousal); row c's audio does not exist.
const ROWS: [(&str, &str, &str, &str, f32, f32); 4] = [
    ("a", "face0.png", "voice0.wav", "happy", 0.8, 0.5),
    ("b", "face1.png", "voice1.wav", "sad", -0.6, -0.3),
    ("c", "face2.png", "missing.wav", "angry", -0.5, 0.7),
    ("d", "face2.png", "voice0.wav", "neutral", 0.0, 0.0),
];

#[test]
fn jsonl_manifest_reads_as_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    media(d);
    let mut csv = String::from("id,face,audio,label,valence,arousal\n");
    let mut jsonl = String::new();
    for (id, face, audio, label, v, a) in ROWS {
        csv += &format!("{id},{face},{audio},{label},{v},{a}\n");
        jsonl += &serde_json::json!({
            "id": id, "face": face, "audio": audio, "label": label, "valence": v, "arousal": a
        })
        .to_string();
        jsonl += "\n";
    }
    std::fs::write(d.join("labels.csv"), csv).unwrap();
    std::fs::write(d.join("set.jsonl"), jsonl).unwrap();
    let (csv_npz, jsonl_npz): (PathBuf, PathBuf) = (d.join("csv.npz"), d.join("jsonl.npz"));
    let from_csv = run(&d.join("labels.csv"), &csv_npz).unwrap();
    let from_jsonl = run(&d.join("set.jsonl"), &jsonl_npz).unwrap();
    assert_eq!(from_csv.models[0].scores, from_jsonl.models[0].scores);
    assert_eq!(from_jsonl.models[0].scores.samples, 3);
    assert_eq!(
        std::fs::read(&csv_npz).unwrap(),
        std::fs::read(&jsonl_npz).unwrap()
    );
    // The CSV's header is line 1, so row c is line 4 there and line 3 here.
    let skipped = |r: &EvalReport| {
        r.skipped
            .iter()
            .map(|s| (s.line, s.id.clone(), s.reason.contains("missing.wav")))
            .collect::<Vec<_>>()
    };
    assert_eq!(skipped(&from_csv), [(4, Some("c".into()), true)]);
    assert_eq!(skipped(&from_jsonl), [(3, Some("c".into()), true)]);

    // A folder is read through its labels.jsonl when that is its only manifest...
    let only = d.join("only-jsonl");
    std::fs::create_dir(&only).unwrap();
    media(&only);
    std::fs::copy(d.join("set.jsonl"), only.join("labels.jsonl")).unwrap();
    let r = run(&only, &d.join("only.npz")).unwrap();
    assert_eq!(r.models[0].scores, from_csv.models[0].scores);
    // ...and refused when it holds both, or neither.
    std::fs::copy(d.join("labels.csv"), only.join("labels.csv")).unwrap();
    let e = run(&only, &d.join("x.npz")).unwrap_err().to_string();
    assert!(e.contains("both labels.csv and labels.jsonl"), "{e}");
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = run(&empty, &d.join("x.npz")).unwrap_err().to_string();
    assert!(e.contains("no labels.csv or labels.jsonl"), "{e}");

    // A bad row is an error naming the file, line and field.
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"face\": \"face0.png\", \"audio\": \"voice0.wav\", \"label\": \"happy\"}\n\
         {\"face\": \"face0.png\", \"audio\": \"voice0.wav\", \"label\": \"happy\", \"speaker\": 4}\n",
    )
    .unwrap();
    let e = run(&d.join("bad.jsonl"), &d.join("x.npz"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 2, field `speaker`"),
        "{e}"
    );
}
