//! How far each output moved: what an output is ([`output_roles`]) and
//! the metrics ([`compare`]).
//!
//! Per output: max absolute error, mean relative error (per sample
//! `‖c − r‖₂ / ‖r‖₂`, averaged), cosine similarity (mean and minimum over
//! samples), top-1 agreement (argmax of the last axis, for class outputs)
//! and KL divergence `KL(r ‖ c)` for probability outputs (softmax applied
//! to logits), plus the count of non-finite values.

use emogate_infer::Tensor;
use emogate_models::manifest::{Manifest, OutputKind};
use emogate_models::onnx::OnnxModel;
use serde::Serialize;

use crate::error::{Error, Result};

/// A row is a probability distribution when its values sum to 1 within this.
const DISTRIBUTION_TOLERANCE: f32 = 1e-3;
/// Norms below this count as zero (relative error of an all-zero reference).
const NORM_FLOOR: f64 = 1e-12;
/// Probabilities are floored here in KL, so a zero does not make it infinite.
const PROBABILITY_FLOOR: f64 = 1e-12;

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
                            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < DISTRIBUTION_TOLERANCE)
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
                return Err(Error::output(
                    name,
                    format!("missing in input set {s}; expected one value per output"),
                ));
            };
            if r.shape != c.shape {
                return Err(Error::output(
                    name,
                    format!(
                        "the candidate's shape {:?} in input set {s}; expected the reference's {:?}",
                        c.shape, r.shape
                    ),
                ));
            }
            let (Some(r), Some(c)) = (r.as_f32(), c.as_f32()) else {
                return Err(Error::output(
                    name,
                    "is not float32; verify compares float outputs",
                ));
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
            rel_sum += nd.sqrt() / nr.sqrt().max(NORM_FLOOR);
            let cos = if nr == 0.0 && nc == 0.0 {
                1.0
            } else {
                dot / (nr.sqrt() * nc.sqrt()).max(f64::MIN_POSITIVE)
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
                                p.max(PROBABILITY_FLOOR),
                                if q.is_finite() {
                                    q.max(PROBABILITY_FLOOR)
                                } else {
                                    PROBABILITY_FLOOR
                                },
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
