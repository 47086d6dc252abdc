//! `eval --dataset DIR`: labelled media, featurized exactly as `emogate run`
//! featurizes live capture, listed by a CSV or a JSON Lines manifest.
//!
//! `DIR/labels.csv` has a header row naming its columns, in any order:
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `id` | no | a name for the row, echoed in messages |
//! | `face` | if the model has a video input | a `.png` still or a `.y4m` clip, relative to DIR; a clip's **last** frame is used (the newest frame at the window's end) |
//! | `audio` | if the model has an audio input | a `.wav` file, relative to DIR; mixed to mono, resampled to the model's rate, and its **last** `window_s` seconds used (left-padded with zeros when shorter) |
//! | `label` | yes | a class name from the model's manifest `labels` (or its index) |
//! | `valence`, `arousal` | no (both or neither) | targets in the model's units |
//!
//! Fields may be double-quoted (`"a,b.wav"`).
//!
//! `DIR/labels.jsonl` (JSON Lines) says the same, one object per line:
//! `{"id": "clip-001", "face": "faces/001.png", "audio": "audio/001.wav",
//! "label": "happy", "valence": 0.61, "arousal": 0.40}`. The fields are
//! those of the CSV columns; `id`, `face` and `audio` are strings, `label` a
//! class name or index, `valence`/`arousal` numbers (both or neither, and
//! in every row or none). Blank lines are skipped. Any other field, or a
//! field of another type, is an error naming the file, line and field.
//! A folder must hold one of the two; `--dataset` may also name the
//! manifest file itself (media relative to its folder).
//!
//! In both, a row whose media file is missing or unreadable is reported
//! with its line number and skipped; the others are evaluated. A label
//! that is not a class is an error.
//!
//! Frames and windows go through [`emogate_infer::Featurizer`], the engine's
//! own preprocessing; a missing modality (`--zero-input`) is fed as zeros,
//! as the engine's `--missing zero` feeds it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use emogate_device::audio::read_wav;
use emogate_device::clip::{Clip, ClipReader};
use emogate_infer::{Featurizer, Tensor};
use emogate_models::manifest::Manifest;
use serde::Serialize;

use super::{LabelledSet, Modality};
use crate::error::{Error, Result};

/// A row left out, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SkippedRow {
    /// 1-based line of the manifest (`labels.csv` or `labels.jsonl`).
    pub line: usize,
    pub id: Option<String>,
    pub reason: String,
}

/// Splits one CSV line (RFC 4180 quoting, no embedded newlines).
fn split_csv(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field);
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

/// The two manifest formats `--dataset` reads.
pub const CSV_MANIFEST: &str = "labels.csv";
/// The JSON Lines manifest (one object per line).
pub const JSONL_MANIFEST: &str = "labels.jsonl";

/// The manifest file of `--dataset PATH`: PATH itself when it is a file
/// (`.csv` or `.jsonl`), else `PATH/labels.csv` or `PATH/labels.jsonl`
/// (exactly one of them).
///
/// # Errors
/// [`Error::Usage`] when the folder holds neither or both, or the file's
/// extension is neither.
pub fn manifest_path(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let (csv, jsonl) = (path.join(CSV_MANIFEST), path.join(JSONL_MANIFEST));
        return match (csv.exists(), jsonl.exists()) {
            (true, false) => Ok(csv),
            (false, true) => Ok(jsonl),
            (true, true) => Err(Error::usage(format!(
                "{} holds both {CSV_MANIFEST} and {JSONL_MANIFEST}; keep one, or pass the file",
                path.display()
            ))),
            (false, false) => Err(Error::usage(format!(
                "{} holds no {CSV_MANIFEST} or {JSONL_MANIFEST}",
                path.display()
            ))),
        };
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv" | "jsonl") => Ok(path.to_path_buf()),
        _ => Err(Error::usage(format!(
            "--dataset {}: expected a folder, a .csv or a .jsonl manifest",
            path.display()
        ))),
    }
}

/// One manifest row, before its media are read.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    /// 1-based line of the manifest.
    line: usize,
    id: Option<String>,
    face: Option<String>,
    audio: Option<String>,
    label: usize,
    targets: Option<[f32; 2]>,
}

/// A parsed manifest: its rows and which columns (fields) it has at all.
#[derive(Debug, Default)]
struct Rows {
    rows: Vec<Row>,
    has_face: bool,
    has_audio: bool,
    has_va: bool,
}

/// A label as a class name of `labels`, or its index.
fn class_of(text: &str, labels: &[String]) -> Option<usize> {
    labels
        .iter()
        .position(|l| l == text)
        .or_else(|| text.parse::<usize>().ok().filter(|k| *k < labels.len()))
}

fn not_a_class(text: &str, labels: &[String]) -> String {
    format!(
        "`{text}` is not a class of the model; expected one of {}",
        labels.join(", ")
    )
}

/// Parses a `labels.csv`: a header row naming its columns, then one row per sample.
fn read_csv(csv: &Path, text: &str, labels: &[String]) -> Result<Rows> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        Error::field(
            csv,
            "line 1",
            "empty; expected a header row: id,face,audio,label,valence,arousal",
        )
    })?;
    let header = split_csv(header).map_err(|m| Error::field(csv, "line 1", m))?;
    let col = |name: &str| header.iter().position(|h| h == name);
    let label_col = col("label").ok_or_else(|| {
        Error::field(
            csv,
            "header",
            format!("has no `label` column (columns: {})", header.join(",")),
        )
    })?;
    let (face_col, audio_col, id_col) = (col("face"), col("audio"), col("id"));
    let va_cols = match (col("valence"), col("arousal")) {
        (Some(v), Some(a)) => Some((v, a)),
        (None, None) => None,
        _ => {
            return Err(Error::field(
                csv,
                "header",
                "has one of `valence`/`arousal`; expected both or neither",
            ));
        }
    };
    let mut out = Rows {
        has_face: face_col.is_some(),
        has_audio: audio_col.is_some(),
        has_va: va_cols.is_some(),
        ..Rows::default()
    };
    for (i, line) in lines {
        let line_no = i + 1;
        let at = |c: &str| format!("line {line_no}, column `{c}`");
        let fields =
            split_csv(line).map_err(|m| Error::field(csv, format!("line {line_no}"), m))?;
        if fields.len() != header.len() {
            return Err(Error::field(
                csv,
                format!("line {line_no}"),
                format!(
                    "has {} fields; the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let label_text = &fields[label_col];
        let label = class_of(label_text, labels)
            .ok_or_else(|| Error::field(csv, at("label"), not_a_class(label_text, labels)))?;
        let targets = match va_cols {
            Some((v, a)) => {
                let num = |c: usize, name: &str| {
                    fields[c]
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| {
                            Error::field(
                                csv,
                                at(name),
                                format!("`{}` is not a finite number", fields[c]),
                            )
                        })
                };
                Some([num(v, "valence")?, num(a, "arousal")?])
            }
            None => None,
        };
        let media = |c: Option<usize>| c.map(|c| fields[c].clone()).filter(|f| !f.is_empty());
        out.rows.push(Row {
            line: line_no,
            id: id_col.map(|c| fields[c].clone()),
            face: media(face_col),
            audio: media(audio_col),
            label,
            targets,
        });
    }
    Ok(out)
}

/// Parses a `labels.jsonl`: one JSON object per line, fields `id`, `face`,
/// `audio` (strings), `label` (a class name or index), `valence` and
/// `arousal` (numbers); any other field, or a field of another type, is an
/// error naming the line and the field.
fn read_jsonl(path: &Path, text: &str, labels: &[String]) -> Result<Rows> {
    use serde_json::Value;
    let mut out = Rows::default();
    let mut first_va: Option<(usize, bool)> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |f: &str| format!("line {line_no}, field `{f}`");
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::field(path, format!("line {line_no}"), format!("not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(Error::field(
                path,
                format!("line {line_no}"),
                "is not a JSON object; expected {\"face\": ..., \"audio\": ..., \"label\": ...}",
            ));
        };
        let (mut id, mut face, mut audio, mut label, mut valence, mut arousal) =
            (None, None, None, None, None, None);
        for (key, v) in &object {
            let string = || match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(Error::field(
                    path,
                    at(key),
                    format!("is {other}; expected a string"),
                )),
            };
            let number = || match v.as_f64() {
                Some(x) if x.is_finite() => Ok(x as f32),
                _ => Err(Error::field(
                    path,
                    at(key),
                    format!("is {v}; expected a finite number"),
                )),
            };
            match key.as_str() {
                "id" => id = Some(string()?),
                "face" => face = Some(string()?),
                "audio" => audio = Some(string()?),
                "label" => {
                    let k = match v {
                        Value::String(s) => class_of(s, labels)
                            .ok_or_else(|| Error::field(path, at(key), not_a_class(s, labels)))?,
                        Value::Number(n) => n
                            .as_u64()
                            .and_then(|k| usize::try_from(k).ok())
                            .filter(|k| *k < labels.len())
                            .ok_or_else(|| {
                                Error::field(path, at(key), not_a_class(&n.to_string(), labels))
                            })?,
                        other => {
                            return Err(Error::field(
                                path,
                                at(key),
                                format!("is {other}; expected a class name or index"),
                            ));
                        }
                    };
                    label = Some(k);
                }
                "valence" => valence = Some(number()?),
                "arousal" => arousal = Some(number()?),
                other => {
                    return Err(Error::field(
                        path,
                        at(other),
                        "is not a field of the manifest; expected id, face, audio, label, valence, arousal",
                    ));
                }
            }
        }
        let label = label
            .ok_or_else(|| Error::field(path, at("label"), "is missing; every row needs one"))?;
        let targets = match (valence, arousal) {
            (Some(v), Some(a)) => Some([v, a]),
            (None, None) => None,
            _ => {
                return Err(Error::field(
                    path,
                    format!("line {line_no}"),
                    "has one of `valence`/`arousal`; expected both or neither",
                ));
            }
        };
        // As a CSV's header does, the first row decides whether the set has
        // valence/arousal targets; every row must agree.
        match first_va {
            None => first_va = Some((line_no, targets.is_some())),
            Some((first, has)) if has != targets.is_some() => {
                return Err(Error::field(
                    path,
                    format!("line {line_no}"),
                    format!(
                        "{} valence/arousal, but line {first} {}; expected all rows or none",
                        if targets.is_some() { "has" } else { "has no" },
                        if has { "has them" } else { "has none" }
                    ),
                ));
            }
            Some(_) => {}
        }
        out.has_face |= face.is_some();
        out.has_audio |= audio.is_some();
        out.has_va |= targets.is_some();
        out.rows.push(Row {
            line: line_no,
            id,
            face: face.filter(|f| !f.is_empty()),
            audio: audio.filter(|f| !f.is_empty()),
            label,
            targets,
        });
    }
    Ok(out)
}

/// Reads and featurizes a dataset's manifest (see [`manifest_path`]) for a
/// model described by `manifest`; media paths are relative to the
/// manifest's folder.
///
/// # Errors
/// [`Error::Io`] for an unreadable manifest; [`Error::Field`] naming the
/// line and column (or field) for a malformed row or an unknown label.
pub fn load(
    dataset: &Path,
    manifest: &Manifest,
    zero: Option<Modality>,
) -> Result<(LabelledSet, Vec<SkippedRow>)> {
    let path = manifest_path(dataset)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let parsed = if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(&path, &text, &manifest.labels)?
    } else {
        read_csv(&path, &text, &manifest.labels)?
    };
    let (what, fields) = if path.extension().is_some_and(|e| e == "jsonl") {
        ("field", "no row has")
    } else {
        ("column", "the header has no")
    };
    let mut featurizer = Featurizer::new(manifest).map_err(|source| Error::Features {
        what: "preparing the manifest's preprocessing".into(),
        source,
    })?;
    let audio_spec = featurizer.audio().cloned();
    if featurizer.wants_video() && !parsed.has_face {
        return Err(Error::field(
            &path,
            "face",
            format!("{fields} `face` {what}, but the model has a video input"),
        ));
    }
    if audio_spec.is_some() && !parsed.has_audio {
        return Err(Error::field(
            &path,
            "audio",
            format!("{fields} `audio` {what}, but the model has an audio input"),
        ));
    }
    let mut set = LabelledSet::default();
    let mut va = Vec::new();
    let mut skipped = Vec::new();
    for row in parsed.rows {
        let skip = |reason: String| SkippedRow {
            line: row.line,
            id: row.id.clone(),
            reason,
        };
        let face = if featurizer.wants_video() && zero != Some(Modality::Face) {
            match &row.face {
                Some(f) => match read_last_frame(&dir.join(f)) {
                    Ok(frame) => Some(frame),
                    Err(reason) => {
                        skipped.push(skip(reason));
                        continue;
                    }
                },
                None => {
                    skipped.push(skip(format!("the `face` {what} is empty")));
                    continue;
                }
            }
        } else {
            None
        };
        let audio = match &audio_spec {
            Some(spec) if zero != Some(Modality::Audio) => match &row.audio {
                Some(a) => match read_window(&dir.join(a), spec.sample_rate, spec.window_s) {
                    Ok(samples) => Some(samples),
                    Err(reason) => {
                        skipped.push(skip(reason));
                        continue;
                    }
                },
                None => {
                    skipped.push(skip(format!("the `audio` {what} is empty")));
                    continue;
                }
            },
            _ => None,
        };
        let tensors: Vec<Tensor> =
            featurizer
                .build(face.as_ref(), audio.as_deref())
                .map_err(|source| Error::Features {
                    what: format!("{}: line {}", path.display(), row.line),
                    source,
                })?;
        set.sets.push(tensors);
        set.labels.push(row.label);
        if let Some(t) = row.targets {
            va.push(t);
        }
    }
    if parsed.has_va {
        set.valence_arousal = Some(va);
    }
    set.names = manifest
        .inputs
        .iter()
        .map(|i| input_name(i).to_string())
        .collect();
    Ok((set, skipped))
}

fn input_name(spec: &emogate_models::manifest::InputSpec) -> &str {
    match spec {
        emogate_models::manifest::InputSpec::Video(v) => &v.name,
        emogate_models::manifest::InputSpec::Audio(a) => &a.name,
    }
}

/// The last frame of a still or clip.
fn read_last_frame(path: &Path) -> std::result::Result<emogate_media::Frame, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let clip = Clip::open(path, 1.0).map_err(|e| e.to_string())?;
    let last = clip.frame_count().saturating_sub(1);
    let mut reader = ClipReader::new(Arc::new(clip)).map_err(|e| e.to_string())?;
    reader
        .frame(last)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: holds no frame", path.display()))
}

/// The last `window_s` seconds of a WAV file at `rate`, mono.
fn read_window(path: &Path, rate: u32, window_s: f64) -> std::result::Result<Vec<f32>, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let wav = read_wav(path).map_err(|e| e.to_string())?;
    let mono = wav.to_mono();
    let samples = if wav.sample_rate == rate {
        mono
    } else {
        emogate_infer::pre::resample::resample(&mono, wav.sample_rate, rate)
            .map_err(|e| format!("{}: {e}", path.display()))?
    };
    let window = (window_s * f64::from(rate)).round() as usize;
    let mut out = vec![0f32; window];
    let n = samples.len().min(window);
    out[window - n..].copy_from_slice(&samples[samples.len() - n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_split_with_quotes() {
        assert_eq!(split_csv("a, b ,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_csv("\"x,y\",\"say \"\"hi\"\"\",").unwrap(),
            ["x,y", "say \"hi\"", ""]
        );
        assert!(split_csv("\"open").is_err());
    }

    fn labels() -> Vec<String> {
        ["angry", "happy", "sad"].map(String::from).to_vec()
    }

    #[test]
    fn jsonl_rows_read_as_the_csv_rows() {
        let csv = "id,face,audio,label,valence,arousal\n\
                   a,f.png,v.wav,happy,0.5,-0.25\n\
                   b,,w.wav,2,-1,1\n";
        let jsonl = "{\"id\": \"a\", \"face\": \"f.png\", \"audio\": \"v.wav\", \"label\": \"happy\", \"valence\": 0.5, \"arousal\": -0.25}\n\
                     \n\
                     {\"id\": \"b\", \"face\": \"\", \"audio\": \"w.wav\", \"label\": 2, \"valence\": -1, \"arousal\": 1}\n";
        let c = read_csv(Path::new("l.csv"), csv, &labels()).unwrap();
        let j = read_jsonl(Path::new("l.jsonl"), jsonl, &labels()).unwrap();
        assert_eq!(c.rows.len(), 2);
        // Same rows but for the line numbers (the JSONL has a blank line 2).
        for (a, b) in c.rows.iter().zip(&j.rows) {
            assert_eq!(
                Row {
                    line: 0,
                    ..a.clone()
                },
                Row {
                    line: 0,
                    ..b.clone()
                }
            );
        }
        assert_eq!((j.rows[0].line, j.rows[1].line), (1, 3));
        assert_eq!(j.rows[1].face, None);
        assert!(j.has_face && j.has_audio && j.has_va);
    }

    #[test]
    fn jsonl_errors_name_the_line_and_field() {
        let err = |text: &str| {
            read_jsonl(Path::new("set/labels.jsonl"), text, &labels())
                .unwrap_err()
                .to_string()
        };
        let ok = "{\"face\": \"f.png\", \"label\": \"sad\"}\n";
        let e = err(&format!(
            "{ok}{{\"face\": \"f.png\", \"label\": \"sad\", \"speaker\": \"x\"}}\n"
        ));
        assert!(
            e.contains("set/labels.jsonl") && e.contains("line 2, field `speaker`"),
            "{e}"
        );
        let e = err("{\"face\": 3, \"label\": \"sad\"}");
        assert!(
            e.contains("line 1, field `face`") && e.contains("expected a string"),
            "{e}"
        );
        let e =
            err("{\"face\": \"f.png\", \"label\": \"sad\", \"valence\": \"high\", \"arousal\": 1}");
        assert!(
            e.contains("field `valence`") && e.contains("finite number"),
            "{e}"
        );
        let e = err("{\"face\": \"f.png\", \"label\": \"calm\"}");
        assert!(
            e.contains("field `label`") && e.contains("not a class"),
            "{e}"
        );
        let e = err("{\"face\": \"f.png\", \"label\": 7}");
        assert!(e.contains("field `label`"), "{e}");
        let e = err("{\"face\": \"f.png\"}");
        assert!(e.contains("field `label`") && e.contains("missing"), "{e}");
        let e = err("[1, 2]");
        assert!(
            e.contains("line 1") && e.contains("not a JSON object"),
            "{e}"
        );
        let e = err("{\"face\": \"f.png\", \"label\": \"sad\", \"valence\": 1}");
        assert!(e.contains("both or neither"), "{e}");
        let e = err(&format!(
            "{ok}{{\"face\": \"f.png\", \"label\": \"sad\", \"valence\": 1, \"arousal\": 0}}"
        ));
        assert!(e.contains("line 2") && e.contains("line 1 has none"), "{e}");
        let e = err("{\"face\": \"f.png\", \"label\": \"sad\"");
        assert!(e.contains("line 1") && e.contains("not JSON"), "{e}");
    }
}
