//! `emogate-convert verify`: run a reference and a candidate model on the
//! same inputs and measure how far the candidate's outputs moved.
//!
//! Inputs come from an `.npz` file, or are generated with a seeded RNG:
//! from the model's manifest when it has one (random pixels normalized as
//! the manifest says; random tones and noise through the same log-mel as
//! the runtime), otherwise from the graph's input shapes (standard normal
//! floats; token ids below the vocabulary size of the embedding they index).
//!
//! Metrics per output: max absolute error, mean relative error (per
//! sample `‖c − r‖₂ / ‖r‖₂`, averaged), cosine similarity (mean and
//! minimum over samples), top-1 agreement (argmax of the last axis, for
//! class outputs) and KL divergence `KL(r ‖ c)` for probability outputs
//! (softmax applied to logits), plus the count of non-finite values.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use emogate_infer::Featurizer;
use emogate_infer::backend::tract::{TractBackend, TractOptions};
use emogate_infer::backend::{Backend, InputFact};
use emogate_infer::{Tensor, TensorData};
use emogate_models::manifest::{InputSpec as ManifestInput, Manifest, OutputKind};
use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::proto::{tensor_shape_proto, type_proto};
use serde::Serialize;

use crate::npz::{NpyData, read_npz};

/// Which runtime runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Tract,
    Ort,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

/// Element type of a model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

/// One graph input: name, type, concrete shape.
#[derive(Debug, Clone)]
pub struct InputDesc {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<usize>,
    /// For token ids: the row count of the embedding table they index.
    pub vocab: Option<usize>,
}

/// The graph's real inputs (not initializers) with concrete shapes:
/// symbolic dimensions take `dims[symbol]`, else 1 on the first axis and 8
/// elsewhere.
///
/// # Errors
/// An input of a type other than float32 or int64, or without a shape.
pub fn model_inputs(model: &OnnxModel, dims: &HashMap<String, usize>) -> Result<Vec<InputDesc>> {
    let graph = model.graph();
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let mut out = Vec::new();
    for input in graph.input.iter().filter(|i| !inits.contains(i.name())) {
        let name = input.name().to_string();
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            bail!(
                "{}: graph input `{name}` is not a tensor",
                model.path().display()
            );
        };
        let elem = match t.elem_type() {
            x if x == DataType::Float as i32 => Elem::F32,
            x if x == DataType::Int64 as i32 => Elem::I64,
            x => bail!(
                "{}: graph input `{name}` has element type {}; verify feeds float32 and int64 inputs",
                model.path().display(),
                emogate_models::onnx::onnx_type_name(x)
            ),
        };
        let shape_proto = t.shape.as_ref().with_context(|| {
            format!(
                "{}: graph input `{name}` has no shape",
                model.path().display()
            )
        })?;
        let shape = shape_proto
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => *v as usize,
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) if dims.contains_key(p) => {
                    dims[p]
                }
                _ => {
                    if i == 0 {
                        1
                    } else {
                        8
                    }
                }
            })
            .collect();
        // Token ids: the first Gather that indexes an initializer table with them.
        let vocab = graph
            .node
            .iter()
            .find(|n| n.op_type() == "Gather" && n.input.get(1) == Some(&name))
            .and_then(|n| {
                graph
                    .initializer
                    .iter()
                    .find(|t| Some(t.name()) == n.input.first().map(String::as_str))
            })
            .and_then(|t| t.dims.first().map(|d| *d as usize));
        out.push(InputDesc {
            name,
            elem,
            shape,
            vocab,
        });
    }
    Ok(out)
}

/// SplitMix64: small, seeded, reproducible everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `n` random input sets, seeded. With a manifest, inputs look like what
/// the runtime feeds; without, they follow the input shapes. Every float
/// input is multiplied by `scale` (large-activation tests).
///
/// # Errors
/// A manifest the featurizer refuses.
pub fn random_inputs(
    descs: &[InputDesc],
    manifest: Option<&Manifest>,
    n: usize,
    seed: u64,
    scale: f32,
) -> Result<Vec<Vec<Tensor>>> {
    let mut rng = Rng::new(seed);
    let mut featurizer = manifest
        .map(Featurizer::new)
        .transpose()
        .context("preparing the manifest's preprocessing")?;
    let mut sets = Vec::with_capacity(n);
    for _ in 0..n {
        // Manifest-driven: audio through the runtime's own features.
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        if let (Some(m), Some(f)) = (manifest, featurizer.as_mut()) {
            let audio = f.audio().map(|a| {
                let len = a.window_samples();
                let rate = a.sample_rate as f64;
                let gain = 10f64.powf(-3.0 + 3.0 * rng.uniform());
                let tones: Vec<(f64, f64, f64)> = (0..1 + (rng.next_u64() % 3) as usize)
                    .map(|_| {
                        (
                            80.0 + 3920.0 * rng.uniform(),
                            rng.uniform(),
                            std::f64::consts::TAU * rng.uniform(),
                        )
                    })
                    .collect();
                let noise = 0.3 * rng.uniform();
                (0..len)
                    .map(|t| {
                        let s: f64 = tones
                            .iter()
                            .map(|(f, a, ph)| {
                                a * (2.0 * std::f64::consts::PI * f * t as f64 / rate + ph).sin()
                            })
                            .sum();
                        (gain * (s + noise * rng.normal())) as f32
                    })
                    .collect::<Vec<f32>>()
            });
            let tensors = f
                .build(None, audio.as_deref())
                .context("computing manifest features")?;
            for (spec, mut t) in m.inputs.iter().zip(tensors) {
                if let ManifestInput::Video(v) = spec {
                    // Random pixels: a gradient plus noise, normalized as the manifest says.
                    let c = v.color.channels();
                    let (gx, gy, base) = (
                        rng.normal() * 60.0,
                        rng.normal() * 60.0,
                        128.0 + 40.0 * rng.normal(),
                    );
                    let len = t.shape.iter().product::<usize>();
                    let values: Vec<f32> = (0..len)
                        .map(|k| {
                            let ch = match v.layout {
                                emogate_models::manifest::VideoLayout::Nhwc => k % c,
                                emogate_models::manifest::VideoLayout::Nchw => {
                                    (k / (v.height * v.width)) % c
                                }
                            };
                            let pix = k / c;
                            let (y, x) = ((pix / v.width) % v.height, pix % v.width);
                            let p = (base
                                + gx * (x as f64 / v.width as f64 - 0.5)
                                + gy * (y as f64 / v.height as f64 - 0.5)
                                + 25.0 * rng.normal())
                            .clamp(0.0, 255.0);
                            let mean = v.mean.get(ch).or(v.mean.first()).copied().unwrap_or(0.0);
                            let std = v.std.get(ch).or(v.std.first()).copied().unwrap_or(1.0);
                            ((p / 255.0) as f32 - mean) / std
                        })
                        .collect();
                    t = Tensor::f32(t.shape.clone(), values);
                }
                by_name.insert(spec.name().to_string(), t);
            }
        }
        let mut set = Vec::with_capacity(descs.len());
        for d in descs {
            let len: usize = d.shape.iter().product();
            let mut t = match (by_name.remove(&d.name), d.elem) {
                (Some(t), _) => {
                    ensure!(
                        t.shape == d.shape,
                        "the manifest feeds input `{}` as {:?} but the graph wants {:?}",
                        d.name,
                        t.shape,
                        d.shape
                    );
                    t
                }
                (None, Elem::F32) => Tensor::f32(
                    d.shape.clone(),
                    (0..len).map(|_| rng.normal() as f32).collect(),
                ),
                (None, Elem::I64) => {
                    let vocab = d.vocab.unwrap_or(100).max(1) as u64;
                    Tensor::i64(
                        d.shape.clone(),
                        (0..len).map(|_| (rng.next_u64() % vocab) as i64).collect(),
                    )
                }
            };
            if scale != 1.0
                && let TensorData::F32(v) = &mut t.data
            {
                v.iter_mut().for_each(|x| *x *= scale);
            }
            set.push(t);
        }
        sets.push(set);
    }
    Ok(sets)
}

/// Input sets from an `.npz` file: one array per graph input, named after
/// it, shaped either as the input (one set) or with one extra leading axis
/// of N samples (N sets).
///
/// # Errors
/// A missing input, a wrong type or shape, disagreeing sample counts.
pub fn npz_inputs(path: &Path, descs: &[InputDesc]) -> Result<Vec<Vec<Tensor>>> {
    let arrays = read_npz(path)?;
    let mut n: Option<usize> = None;
    let mut per_input = Vec::new();
    for d in descs {
        let a = arrays.iter().find(|a| a.name == d.name).with_context(|| {
            format!(
                "{}: no array named `{}` (the model's input); it has: {}",
                path.display(),
                d.name,
                arrays
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let samples = if a.shape == d.shape {
            1
        } else if a.shape.len() == d.shape.len() + 1 && a.shape[1..] == d.shape[..] {
            a.shape[0]
        } else {
            bail!(
                "{}: array `{}` has shape {:?}; expected {:?} or [N, {}]",
                path.display(),
                d.name,
                a.shape,
                d.shape,
                d.shape
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if let Some(prev) = n {
            ensure!(
                prev == samples,
                "{}: array `{}` holds {samples} samples, others {prev}",
                path.display(),
                d.name
            );
        }
        n = Some(samples);
        match (&a.data, d.elem) {
            (NpyData::F32(_), Elem::F32) | (NpyData::I64(_), Elem::I64) => {}
            _ => bail!(
                "{}: array `{}` is {}; the input wants {}",
                path.display(),
                d.name,
                if matches!(a.data, NpyData::F32(_)) {
                    "floating point"
                } else {
                    "integer"
                },
                if d.elem == Elem::F32 {
                    "float32"
                } else {
                    "int64"
                }
            ),
        }
        per_input.push(a);
    }
    let n = n.unwrap_or(0);
    let mut sets = vec![Vec::new(); n];
    for (d, a) in descs.iter().zip(per_input) {
        let len: usize = d.shape.iter().product();
        for (s, set) in sets.iter_mut().enumerate() {
            set.push(match &a.data {
                NpyData::F32(v) => Tensor::f32(d.shape.clone(), v[s * len..(s + 1) * len].to_vec()),
                NpyData::I64(v) => Tensor::i64(d.shape.clone(), v[s * len..(s + 1) * len].to_vec()),
            });
        }
    }
    Ok(sets)
}

/// Loads `path` on a backend, with input shapes bound.
///
/// # Errors
/// The backend's load error; `ort` without the `ort` feature.
pub fn load_backend(
    kind: BackendKind,
    path: &Path,
    descs: &[InputDesc],
    threads: usize,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => {
            let facts = descs
                .iter()
                .map(|d| match d.elem {
                    Elem::F32 => InputFact::F32(d.shape.clone()),
                    Elem::I64 => InputFact::I64(d.shape.clone()),
                })
                .collect();
            let b = TractBackend::load_with(
                path,
                &TractOptions {
                    inputs: Some(facts),
                    threads,
                },
            )
            .with_context(|| format!("tract could not load {}", path.display()))?;
            Ok(Box::new(b))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => {
            use emogate_infer::backend::ort::{OrtBackend, OrtOptions};
            let options = OrtOptions {
                threads,
                ..OrtOptions::default()
            };
            let b = OrtBackend::load(path, Vec::new(), &options)
                .with_context(|| format!("ONNX Runtime could not load {}", path.display()))?;
            Ok(Box::new(b))
        }
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => bail!(
            "this build has no ONNX Runtime backend; rebuild with `--features emogate-tools/ort` (and set ORT_DYLIB_PATH)"
        ),
    }
}

/// Runs every input set; returns the outputs and each run's milliseconds.
///
/// # Errors
/// The backend's run error, naming the sample.
pub fn run_all(
    backend: &mut dyn Backend,
    sets: &[Vec<Tensor>],
    label: &str,
) -> Result<(Vec<Vec<Tensor>>, Vec<f64>)> {
    let mut outs = Vec::with_capacity(sets.len());
    let mut times = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let t = Instant::now();
        let o = backend
            .run(set)
            .with_context(|| format!("{label}: running input set {i}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        outs.push(o);
    }
    Ok((outs, times))
}

/// Median of a list (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

/// How an output is read, for top-1 and KL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputRole {
    Probabilities,
    Logits,
    /// Class scores whose nature is unknown: top-1 only.
    Scores,
    /// Regression values (valence/arousal, features): no top-1.
    Values,
}

/// Each output's role: from the manifest, else probabilities when every
/// reference row is a distribution, scores when the last axis has ≥ 2 entries.
pub fn output_roles(
    names: &[String],
    manifest: Option<&Manifest>,
    reference: &[Vec<Tensor>],
) -> Vec<OutputRole> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if let Some(spec) = manifest.and_then(|m| m.outputs.iter().find(|o| &o.name == name)) {
                return match spec.kind {
                    OutputKind::Probabilities => OutputRole::Probabilities,
                    OutputKind::Logits => OutputRole::Logits,
                    OutputKind::MultilabelLogits | OutputKind::ValenceArousal => OutputRole::Values,
                };
            }
            let Some(first) = reference.first().and_then(|o| o.get(i)) else {
                return OutputRole::Values;
            };
            let last = first.shape.last().copied().unwrap_or(1);
            if last < 2 {
                return OutputRole::Values;
            }
            let is_dist = reference.iter().all(|o| {
                o.get(i).and_then(|t| t.as_f32()).is_some_and(|v| {
                    v.iter().all(|x| (0.0..=1.0).contains(x))
                        && v.chunks(last)
                            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-3)
                })
            });
            if is_dist {
                OutputRole::Probabilities
            } else {
                OutputRole::Scores
            }
        })
        .collect()
}

/// How far one output moved.
#[derive(Debug, Clone, Serialize)]
pub struct OutputMetrics {
    pub name: String,
    pub role: OutputRole,
    pub max_abs_err: f64,
    pub mean_rel_err: f64,
    pub cosine_mean: f64,
    pub cosine_min: f64,
    /// Fraction of rows whose argmax agrees (class outputs only).
    pub top1: Option<f64>,
    pub rows: usize,
    /// Mean KL(reference ‖ candidate) per row (probability outputs only).
    pub kl: Option<f64>,
    /// Non-finite values in the candidate's / the reference's outputs.
    pub nonfinite_candidate: usize,
    pub nonfinite_reference: usize,
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Compares the candidate's outputs with the reference's.
///
/// # Errors
/// Outputs that differ in count, type or shape.
pub fn compare(
    names: &[String],
    roles: &[OutputRole],
    reference: &[Vec<Tensor>],
    candidate: &[Vec<Tensor>],
) -> Result<Vec<OutputMetrics>> {
    let mut metrics = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let role = roles[i];
        let (mut max_abs, mut rel_sum, mut cos_sum, mut cos_min) =
            (0f64, 0f64, 0f64, f64::INFINITY);
        let (mut agree, mut rows, mut kl_sum) = (0usize, 0usize, 0f64);
        let (mut bad_c, mut bad_r) = (0usize, 0usize);
        for (s, (ro, co)) in reference.iter().zip(candidate).enumerate() {
            let (Some(r), Some(c)) = (ro.get(i), co.get(i)) else {
                bail!("output `{name}` is missing in input set {s}");
            };
            ensure!(
                r.shape == c.shape,
                "output `{name}`: reference shape {:?}, candidate shape {:?}",
                r.shape,
                c.shape
            );
            let (Some(r), Some(c)) = (r.as_f32(), c.as_f32()) else {
                bail!("output `{name}` is not float");
            };
            bad_c += c.iter().filter(|x| !x.is_finite()).count();
            bad_r += r.iter().filter(|x| !x.is_finite()).count();
            let (mut dot, mut nr, mut nc, mut nd) = (0f64, 0f64, 0f64, 0f64);
            for (&a, &b) in r.iter().zip(c) {
                let (a, b) = (a as f64, b as f64);
                let d = (a - b).abs();
                max_abs = if d.is_nan() {
                    f64::INFINITY
                } else {
                    max_abs.max(d)
                };
                dot += a * b;
                nr += a * a;
                nc += b * b;
                nd += (a - b) * (a - b);
            }
            rel_sum += nd.sqrt() / nr.sqrt().max(1e-12);
            let cos = if nr == 0.0 && nc == 0.0 {
                1.0
            } else {
                dot / (nr.sqrt() * nc.sqrt()).max(1e-300)
            };
            let cos = if cos.is_nan() { -1.0 } else { cos };
            cos_sum += cos;
            cos_min = cos_min.min(cos);
            let last = ro[i].shape.last().copied().unwrap_or(1).max(1);
            if role != OutputRole::Values {
                for (rr, cr) in r.chunks(last).zip(c.chunks(last)) {
                    rows += 1;
                    if argmax(rr) == argmax(cr) && cr.iter().all(|x| x.is_finite()) {
                        agree += 1;
                    }
                    let (p, q) = match role {
                        OutputRole::Probabilities => (
                            rr.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                            cr.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                        ),
                        OutputRole::Logits => (softmax(rr), softmax(cr)),
                        _ => continue,
                    };
                    kl_sum += p
                        .iter()
                        .zip(&q)
                        .map(|(&p, &q)| {
                            let (p, q) = (
                                p.max(1e-12),
                                if q.is_finite() { q.max(1e-12) } else { 1e-12 },
                            );
                            p * (p / q).ln()
                        })
                        .sum::<f64>();
                }
            }
        }
        let n = reference.len().max(1) as f64;
        metrics.push(OutputMetrics {
            name: name.clone(),
            role,
            max_abs_err: max_abs,
            mean_rel_err: rel_sum / n,
            cosine_mean: cos_sum / n,
            cosine_min: if cos_min.is_finite() { cos_min } else { 1.0 },
            top1: (role != OutputRole::Values && rows > 0).then(|| agree as f64 / rows as f64),
            rows,
            kl: matches!(role, OutputRole::Probabilities | OutputRole::Logits)
                .then(|| kl_sum / rows.max(1) as f64),
            nonfinite_candidate: bad_c,
            nonfinite_reference: bad_r,
        });
    }
    Ok(metrics)
}

/// The graph's output names.
pub fn output_names(model: &OnnxModel) -> Vec<String> {
    model
        .graph()
        .output
        .iter()
        .map(|o| o.name().to_string())
        .collect()
}
