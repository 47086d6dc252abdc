//! `eval --dataset DIR`: labelled media, featurized exactly as `emogate run`
//! featurizes live capture.
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
//! Fields may be double-quoted (`"a,b.wav"`). A row whose media file is
//! missing or unreadable is reported with its line number and skipped; the
//! others are evaluated. A label that is not a class is an error.
//!
//! Frames and windows go through [`emogate_infer::Featurizer`], the engine's
//! own preprocessing; a missing modality (`--zero-input`) is fed as zeros,
//! as the engine's `--missing zero` feeds it.

use std::path::Path;
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
    /// 1-based line of `labels.csv`.
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

/// Reads and featurizes `dir/labels.csv` for a model described by `manifest`.
///
/// # Errors
/// [`Error::Io`] for an unreadable `labels.csv`; [`Error::Field`] naming the
/// line and column for a malformed row or an unknown label.
pub fn load(
    dir: &Path,
    manifest: &Manifest,
    zero: Option<Modality>,
) -> Result<(LabelledSet, Vec<SkippedRow>)> {
    let csv = dir.join("labels.csv");
    let text = std::fs::read_to_string(&csv).map_err(|e| Error::io("reading", &csv, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        Error::field(
            &csv,
            "line 1",
            "empty; expected a header row: id,face,audio,label,valence,arousal",
        )
    })?;
    let header = split_csv(header).map_err(|m| Error::field(&csv, "line 1", m))?;
    let col = |name: &str| header.iter().position(|h| h == name);
    let label_col = col("label").ok_or_else(|| {
        Error::field(
            &csv,
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
                &csv,
                "header",
                "has one of `valence`/`arousal`; expected both or neither",
            ));
        }
    };
    let mut featurizer = Featurizer::new(manifest).map_err(|source| Error::Features {
        what: "preparing the manifest's preprocessing".into(),
        source,
    })?;
    let audio_spec = featurizer.audio().cloned();
    if featurizer.wants_video() && face_col.is_none() {
        return Err(Error::field(
            &csv,
            "header",
            "has no `face` column, but the model has a video input",
        ));
    }
    if audio_spec.is_some() && audio_col.is_none() {
        return Err(Error::field(
            &csv,
            "header",
            "has no `audio` column, but the model has an audio input",
        ));
    }
    let mut set = LabelledSet::default();
    let mut va = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let at = |c: &str| format!("line {line_no}, column `{c}`");
        let fields =
            split_csv(line).map_err(|m| Error::field(&csv, format!("line {line_no}"), m))?;
        if fields.len() != header.len() {
            return Err(Error::field(
                &csv,
                format!("line {line_no}"),
                format!(
                    "has {} fields; the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let id = id_col.map(|c| fields[c].clone());
        let label_text = &fields[label_col];
        let label = manifest
            .labels
            .iter()
            .position(|l| l == label_text)
            .or_else(|| {
                label_text
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k < manifest.labels.len())
            })
            .ok_or_else(|| {
                Error::field(
                    &csv,
                    at("label"),
                    format!(
                        "`{label_text}` is not a class of the model; expected one of {}",
                        manifest.labels.join(", ")
                    ),
                )
            })?;
        let targets = match va_cols {
            Some((v, a)) => {
                let num = |c: usize, name: &str| {
                    fields[c]
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| {
                            Error::field(
                                &csv,
                                at(name),
                                format!("`{}` is not a finite number", fields[c]),
                            )
                        })
                };
                Some([num(v, "valence")?, num(a, "arousal")?])
            }
            None => None,
        };
        let media = |c: Option<usize>| {
            c.map(|c| &fields[c])
                .filter(|f| !f.is_empty())
                .map(|f| dir.join(f))
        };
        let face = if featurizer.wants_video() && zero != Some(Modality::Face) {
            match media(face_col).map(|p| read_last_frame(&p)) {
                Some(Ok(f)) => Some(f),
                Some(Err(reason)) => {
                    skipped.push(SkippedRow {
                        line: line_no,
                        id,
                        reason,
                    });
                    continue;
                }
                None => {
                    skipped.push(SkippedRow {
                        line: line_no,
                        id,
                        reason: "the `face` field is empty".into(),
                    });
                    continue;
                }
            }
        } else {
            None
        };
        let audio = match &audio_spec {
            Some(spec) if zero != Some(Modality::Audio) => {
                match media(audio_col).map(|p| read_window(&p, spec.sample_rate, spec.window_s)) {
                    Some(Ok(a)) => Some(a),
                    Some(Err(reason)) => {
                        skipped.push(SkippedRow {
                            line: line_no,
                            id,
                            reason,
                        });
                        continue;
                    }
                    None => {
                        skipped.push(SkippedRow {
                            line: line_no,
                            id,
                            reason: "the `audio` field is empty".into(),
                        });
                        continue;
                    }
                }
            }
            _ => None,
        };
        let tensors: Vec<Tensor> =
            featurizer
                .build(face.as_ref(), audio.as_deref())
                .map_err(|source| Error::Features {
                    what: format!("{}: line {line_no}", csv.display()),
                    source,
                })?;
        set.sets.push(tensors);
        set.labels.push(label);
        if let Some(t) = targets {
            va.push(t);
        }
    }
    if va_cols.is_some() {
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
}
