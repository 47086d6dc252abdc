//! `eval`: how well a model classifies labelled inputs, with intervals.
//!
//! Inputs come from a labelled `.npz` ([`load_npz`]: one array per model
//! input, named after it, `[N, ...input shape]`, plus `labels`, int64 `[N]`,
//! class indices, and optionally `valence_arousal`, float32 `[N, 2]`) or a
//! dataset folder ([`dataset`]: a `labels.csv` of media files featurized by
//! the engine's own preprocessing). Featurizing happens once per invocation;
//! `--save-inputs` writes the featurized set as such an `.npz`, so a script
//! featurizes once and evaluates many models.
//!
//! Each model runs every sample on tract or ONNX Runtime. The class output
//! is the manifest's `probabilities`/`logits` output (else the first
//! output); the prediction is its argmax. The `valence_arousal` output, when
//! the model has one and the set has targets, is scored too. Scores and
//! their bootstrap intervals: [`metrics`].

pub mod dataset;
pub mod metrics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use emogate_infer::{Tensor, TensorData};
use emogate_models::manifest::{InputSpec, Manifest, OutputKind};
use emogate_models::onnx::OnnxModel;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::npz::{NpyArray, NpyData, read_npz, write_npz};
use crate::verify::inputs::{InputDesc, model_inputs, npz_sets};
use crate::verify::output_names;
use crate::verify::running::{BackendKind, load_backend, run_all};
pub use dataset::SkippedRow;
pub use metrics::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Scores};

/// The label array of a labelled `.npz`.
pub const LABELS_ARRAY: &str = "labels";
/// The valence/arousal target array of a labelled `.npz`.
pub const VA_ARRAY: &str = "valence_arousal";

/// An input modality `--zero-input` can blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Face,
    Audio,
}

/// Featurized samples with their labels.
#[derive(Debug, Clone, Default)]
pub struct LabelledSet {
    /// The model input names, in the order of each set's tensors.
    pub names: Vec<String>,
    pub sets: Vec<Vec<Tensor>>,
    pub labels: Vec<usize>,
    pub valence_arousal: Option<Vec<[f32; 2]>>,
}

/// Where `eval`'s samples come from.
#[derive(Debug, Clone)]
pub enum EvalSource {
    Npz(PathBuf),
    Dataset(PathBuf),
}

/// `eval`'s options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub compare: Option<PathBuf>,
    pub source: EvalSource,
    pub zero_input: Option<Modality>,
    pub backend: BackendKind,
    pub threads: usize,
    pub save_inputs: Option<PathBuf>,
    pub min_acc: Option<f64>,
}

/// One model's scores.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScores {
    pub model: PathBuf,
    pub scores: Scores,
}

/// What `eval` prints and `--report` writes.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub inputs: String,
    pub backend: BackendKind,
    pub zero_input: Option<Modality>,
    pub labels: Vec<String>,
    pub bootstrap_seed: u64,
    pub bootstrap_resamples: usize,
    pub skipped: Vec<SkippedRow>,
    /// The model, then `--compare`'s.
    pub models: Vec<ModelScores>,
    /// False when the first model's accuracy is below `--min-acc`.
    pub passed: bool,
}

/// Reads a labelled `.npz` for a model with inputs `descs`.
///
/// # Errors
/// [`Error::Field`] naming the array: a missing `labels`, a count that
/// differs from the inputs', a label that is negative or not below
/// `classes`, a `valence_arousal` that is not `[N, 2]`.
pub fn load_npz(path: &Path, descs: &[InputDesc], classes: Option<usize>) -> Result<LabelledSet> {
    let arrays = read_npz(path)?;
    let sets = npz_sets(path, &arrays, descs)?;
    let find = |name: &str| arrays.iter().find(|a| a.name == name);
    let labels = find(LABELS_ARRAY).ok_or_else(|| {
        Error::field(
            path,
            "arrays",
            format!("no array named `{LABELS_ARRAY}`; expected int64 class indices [N]"),
        )
    })?;
    let NpyData::I64(values) = &labels.data else {
        return Err(Error::field(
            path,
            format!("array `{LABELS_ARRAY}`"),
            "is float; expected integer class indices",
        ));
    };
    if labels.shape.len() != 1 || values.len() != sets.len() {
        return Err(Error::field(
            path,
            format!("array `{LABELS_ARRAY}`"),
            format!(
                "has shape {:?}; the inputs hold {} samples, expected [{}]",
                labels.shape,
                sets.len(),
                sets.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match usize::try_from(*v) {
            Ok(k) if classes.is_none_or(|c| k < c) => out.push(k),
            _ => {
                return Err(Error::field(
                    path,
                    format!("array `{LABELS_ARRAY}`[{i}]"),
                    format!(
                        "is {v}; expected a class index in 0..{}",
                        classes.map(|c| c.to_string()).unwrap_or_else(|| "K".into())
                    ),
                ));
            }
        }
    }
    let valence_arousal = match find(VA_ARRAY) {
        None => None,
        Some(a) => match &a.data {
            NpyData::F32(v) if a.shape == [sets.len(), 2] => {
                Some(v.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
            }
            _ => {
                return Err(Error::field(
                    path,
                    format!("array `{VA_ARRAY}`"),
                    format!(
                        "has shape {:?}; expected float32 [{}, 2]",
                        a.shape,
                        sets.len()
                    ),
                ));
            }
        },
    };
    Ok(LabelledSet {
        names: descs.iter().map(|d| d.name.clone()).collect(),
        sets,
        labels: out,
        valence_arousal,
    })
}

/// Writes a labelled set as an `.npz` that [`load_npz`] reads.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn save_npz(path: &Path, set: &LabelledSet) -> Result<()> {
    let mut arrays = Vec::new();
    for (k, name) in set.names.iter().enumerate() {
        let first = set
            .sets
            .first()
            .map(|s| s[k].shape.clone())
            .unwrap_or_default();
        let mut shape = vec![set.sets.len()];
        shape.extend(&first);
        let data = match set.sets.first().map(|s| &s[k].data) {
            Some(TensorData::I64(_)) => NpyData::I64(
                set.sets
                    .iter()
                    .flat_map(|s| match &s[k].data {
                        TensorData::I64(v) => v.clone(),
                        TensorData::F32(v) => v.iter().map(|x| *x as i64).collect(),
                    })
                    .collect(),
            ),
            _ => NpyData::F32(
                set.sets
                    .iter()
                    .flat_map(|s| s[k].as_f32().map(<[f32]>::to_vec).unwrap_or_default())
                    .collect(),
            ),
        };
        arrays.push(NpyArray {
            name: name.clone(),
            shape,
            data,
        });
    }
    arrays.push(NpyArray {
        name: LABELS_ARRAY.into(),
        shape: vec![set.labels.len()],
        data: NpyData::I64(set.labels.iter().map(|l| *l as i64).collect()),
    });
    if let Some(va) = &set.valence_arousal {
        arrays.push(NpyArray {
            name: VA_ARRAY.into(),
            shape: vec![va.len(), 2],
            data: NpyData::F32(va.iter().flatten().copied().collect()),
        });
    }
    crate::atomic::create_parent_dir(path)?;
    write_npz(path, &arrays)
}

/// The input name of a modality, from the manifest.
fn modality_input(manifest: &Manifest, m: Modality) -> Option<&str> {
    manifest.inputs.iter().find_map(|i| match (i, m) {
        (InputSpec::Video(v), Modality::Face) => Some(v.name.as_str()),
        (InputSpec::Audio(a), Modality::Audio) => Some(a.name.as_str()),
        _ => None,
    })
}

/// Which outputs hold class scores and valence/arousal.
fn output_slots(model: &OnnxModel, manifest: Option<&Manifest>) -> (usize, Option<usize>) {
    let names = output_names(model);
    let by_kind = |kinds: &[OutputKind]| {
        manifest.and_then(|m| {
            m.outputs
                .iter()
                .find(|o| kinds.contains(&o.kind))
                .and_then(|o| names.iter().position(|n| *n == o.name))
        })
    };
    let class = by_kind(&[OutputKind::Probabilities, OutputKind::Logits]).unwrap_or(0);
    let va =
        by_kind(&[OutputKind::ValenceArousal]).or_else(|| names.iter().position(|n| n == VA_ARRAY));
    (class, va)
}

fn load_model(path: &Path) -> Result<(OnnxModel, Option<Manifest>)> {
    let model = OnnxModel::load(path)
        .map_err(|e| Error::model(format!("loading {}", path.display()), e))?;
    let manifest = Manifest::from_model(&model)
        .map_err(|e| Error::model(format!("reading the manifest of {}", path.display()), e))?;
    Ok((model, manifest))
}

/// Runs one model over the set and scores it.
fn evaluate(path: &Path, set: &LabelledSet, classes: usize, o: &EvalOptions) -> Result<Scores> {
    let (model, manifest) = load_model(path)?;
    let descs = model_inputs(&model, &HashMap::new())?;
    let names: Vec<&str> = descs.iter().map(|d| d.name.as_str()).collect();
    if names != set.names.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(Error::field(
            path,
            "graph inputs",
            format!("are {names:?}; the evaluation inputs are {:?}", set.names),
        ));
    }
    let (class_out, va_out) = output_slots(&model, manifest.as_ref());
    let mut backend = load_backend(o.backend, path, &descs, o.threads)?;
    let (outputs, _) = run_all(backend.as_mut(), &set.sets, &path.display().to_string())?;
    let mut predicted = Vec::with_capacity(outputs.len());
    let mut va_pred = Vec::new();
    for (i, out) in outputs.iter().enumerate() {
        let scores = out.get(class_out).and_then(Tensor::as_f32).ok_or_else(|| {
            Error::output(
                format!("#{class_out}"),
                format!("{}: missing or not float32 for sample {i}", path.display()),
            )
        })?;
        if scores.len() != classes {
            return Err(Error::output(
                format!("#{class_out}"),
                format!(
                    "{}: holds {} class scores; the labels name {classes} classes",
                    path.display(),
                    scores.len()
                ),
            ));
        }
        let best = scores
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (k, v)| if *v > b.1 { (k, *v) } else { b },
            )
            .0;
        predicted.push(best);
        if let Some(v) = va_out.and_then(|k| out.get(k)).and_then(Tensor::as_f32)
            && v.len() >= 2
        {
            va_pred.push([v[0], v[1]]);
        }
    }
    let va = match &set.valence_arousal {
        Some(t) if va_pred.len() == t.len() => Some((t.as_slice(), va_pred.as_slice())),
        _ => None,
    };
    Ok(metrics::score(&set.labels, &predicted, classes, va))
}

/// Runs `eval`.
///
/// # Errors
/// Loading and running errors naming the file; the label errors of
/// [`load_npz`] and [`dataset::load`]; [`Error::Usage`] for `--zero-input`
/// or `--dataset` on a model without a manifest.
pub fn eval(o: &EvalOptions) -> Result<EvalReport> {
    let (model, manifest) = load_model(&o.model)?;
    let descs = model_inputs(&model, &HashMap::new())?;
    let labels: Vec<String> = manifest
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    let classes = (!labels.is_empty()).then_some(labels.len());
    let (mut set, skipped, inputs) = match &o.source {
        EvalSource::Npz(p) => (
            load_npz(p, &descs, classes)?,
            Vec::new(),
            p.display().to_string(),
        ),
        EvalSource::Dataset(dir) => {
            let m = manifest.as_ref().ok_or_else(|| {
                Error::usage(format!(
                    "--dataset needs a model with an embedded manifest; {} has none",
                    o.model.display()
                ))
            })?;
            let (set, skipped) = dataset::load(dir, m, o.zero_input)?;
            (set, skipped, dir.display().to_string())
        }
    };
    if let (Some(z), EvalSource::Npz(_)) = (o.zero_input, &o.source) {
        let m = manifest.as_ref().ok_or_else(|| {
            Error::usage(format!(
                "--zero-input needs a model with an embedded manifest; {} has none",
                o.model.display()
            ))
        })?;
        let name = modality_input(m, z).ok_or_else(|| {
            Error::usage(format!("--zero-input {z:?}: the model has no such input"))
        })?;
        let k = set
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::input(name, "not among the model's inputs"))?;
        for s in &mut set.sets {
            if let TensorData::F32(v) = &mut s[k].data {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
    if set.sets.is_empty() {
        return Err(Error::usage(format!("{inputs}: no samples to evaluate")));
    }
    if let Some(p) = &o.save_inputs {
        save_npz(p, &set)?;
    }
    let classes = match classes {
        Some(c) => c,
        None => {
            // No manifest: the class output's width, from a first run.
            let (class_out, _) = output_slots(&model, None);
            let mut b = load_backend(o.backend, &o.model, &descs, o.threads)?;
            let (out, _) = run_all(b.as_mut(), &set.sets[..1], &o.model.display().to_string())?;
            let width = out[0]
                .get(class_out)
                .map(|t| t.shape.last().copied().unwrap_or(1))
                .unwrap_or(1);
            if let Some((i, l)) = set.labels.iter().enumerate().find(|(_, l)| **l >= width) {
                return Err(Error::field(
                    &inputs,
                    format!("array `{LABELS_ARRAY}`[{i}]"),
                    format!("is {l}; the model has {width} classes"),
                ));
            }
            width
        }
    };
    let mut models = vec![ModelScores {
        model: o.model.clone(),
        scores: evaluate(&o.model, &set, classes, o)?,
    }];
    if let Some(other) = &o.compare {
        models.push(ModelScores {
            model: other.clone(),
            scores: evaluate(other, &set, classes, o)?,
        });
    }
    let passed = o
        .min_acc
        .is_none_or(|min| models[0].scores.accuracy.value >= min);
    Ok(EvalReport {
        inputs,
        backend: o.backend,
        zero_input: o.zero_input,
        labels,
        bootstrap_seed: BOOTSTRAP_SEED,
        bootstrap_resamples: BOOTSTRAP_RESAMPLES,
        skipped,
        models,
        passed,
    })
}
