//! The pass/fail decision and the report `verify` prints and writes.

use std::path::PathBuf;

use serde::Serialize;

use super::metrics::OutputMetrics;
use crate::error::{Error, Result};

/// What a candidate must meet to pass. Whatever the thresholds, a
/// candidate fails where it outputs more non-finite values (NaN, Inf)
/// than the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Fail when an output's mean relative error is above this.
    pub max_rel_err: Option<f64>,
    /// Fail when a class output's top-1 agreement is below this (0..=1).
    pub min_top1: Option<f64>,
}

impl Thresholds {
    /// Thresholds from `--max-rel-err` and `--min-top1`.
    ///
    /// # Errors
    /// [`Error::Usage`] for a negative or non-finite relative error, or a
    /// top-1 agreement outside 0..=1.
    pub fn new(max_rel_err: Option<f64>, min_top1: Option<f64>) -> Result<Self> {
        if let Some(x) = max_rel_err
            && !(x.is_finite() && x >= 0.0)
        {
            return Err(Error::usage(format!(
                "--max-rel-err {x}: expected a number of at least 0"
            )));
        }
        if let Some(y) = min_top1
            && !(0.0..=1.0).contains(&y)
        {
            return Err(Error::usage(format!(
                "--min-top1 {y}: expected a fraction between 0 and 1"
            )));
        }
        Ok(Thresholds {
            max_rel_err,
            min_top1,
        })
    }

    /// Every way the measured outputs miss these thresholds, in words
    /// (empty: pass).
    pub fn failures(&self, backends: &[BackendReport]) -> Vec<String> {
        let mut failures = Vec::new();
        for b in backends {
            for m in &b.outputs {
                let at = format!("{} output `{}`", b.backend, m.name);
                if m.nonfinite_candidate > m.nonfinite_reference {
                    failures.push(format!(
                        "{at}: {} non-finite values (reference: {})",
                        m.nonfinite_candidate, m.nonfinite_reference
                    ));
                }
                if let Some(x) = self.max_rel_err
                    && (m.mean_rel_err.is_nan() || m.mean_rel_err > x)
                {
                    failures.push(format!(
                        "{at}: mean relative error {:.3e} > --max-rel-err {x}",
                        m.mean_rel_err
                    ));
                }
                if let (Some(y), Some(t)) = (self.min_top1, m.top1)
                    && t < y
                {
                    failures.push(format!("{at}: top-1 agreement {t:.4} < --min-top1 {y}"));
                }
            }
        }
        let any_class_output = backends
            .iter()
            .any(|b| b.outputs.iter().any(|o| o.top1.is_some()));
        if self.min_top1.is_some() && !any_class_output {
            failures.push(
                "--min-top1 was given but no output is a class output (no top-1 to check)".into(),
            );
        }
        failures
    }
}

/// One runtime's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    pub backend: &'static str,
    pub reference_ms_p50: f64,
    pub candidate_ms_p50: f64,
    pub outputs: Vec<OutputMetrics>,
}

/// A verification: what ran on what, the measurements, and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub reference: PathBuf,
    pub candidate: PathBuf,
    /// Where the inputs came from, in words.
    pub inputs: String,
    /// Input sets run.
    pub samples: usize,
    pub backends: Vec<BackendReport>,
    pub passed: bool,
    /// Why it did not pass, one line each (empty when it passed).
    pub failures: Vec<String>,
}

impl VerifyReport {
    /// The report of `backends`' measurements, judged by `thresholds`.
    pub fn judge(
        reference: PathBuf,
        candidate: PathBuf,
        inputs: String,
        samples: usize,
        backends: Vec<BackendReport>,
        thresholds: &Thresholds,
    ) -> Self {
        let failures = thresholds.failures(&backends);
        VerifyReport {
            reference,
            candidate,
            inputs,
            samples,
            backends,
            passed: failures.is_empty(),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::OutputRole;

    fn metrics(name: &str, rel: f64, top1: Option<f64>, nonfinite: usize) -> OutputMetrics {
        OutputMetrics {
            name: name.into(),
            role: if top1.is_some() {
                OutputRole::Probabilities
            } else {
                OutputRole::Values
            },
            max_abs_err: rel,
            mean_rel_err: rel,
            cosine_mean: 1.0,
            cosine_min: 1.0,
            top1,
            rows: 4,
            kl: None,
            nonfinite_candidate: nonfinite,
            nonfinite_reference: 0,
        }
    }

    fn tract(outputs: Vec<OutputMetrics>) -> Vec<BackendReport> {
        vec![BackendReport {
            backend: "tract",
            reference_ms_p50: 1.0,
            candidate_ms_p50: 1.0,
            outputs,
        }]
    }

    #[test]
    fn thresholds_decide_pass_and_fail() {
        let t = Thresholds::new(Some(0.01), Some(0.9)).unwrap();
        assert!(
            t.failures(&tract(vec![metrics("p", 0.001, Some(1.0), 0)]))
                .is_empty()
        );
        let f = t.failures(&tract(vec![metrics("p", 0.5, Some(0.5), 0)]));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].starts_with("tract output `p`: mean relative error"));
        assert!(f[1].contains("top-1 agreement 0.5000 < --min-top1 0.9"));
        // NaN error fails; non-finite outputs fail even without thresholds.
        assert_eq!(
            t.failures(&tract(vec![metrics("p", f64::NAN, Some(1.0), 0)]))
                .len(),
            1
        );
        let f = Thresholds::default().failures(&tract(vec![metrics("v", 0.0, None, 3)]));
        assert_eq!(
            f,
            vec!["tract output `v`: 3 non-finite values (reference: 0)"]
        );
        // --min-top1 without a class output is a failure, not a silent pass.
        let f = t.failures(&tract(vec![metrics("v", 0.0, None, 0)]));
        assert!(f[0].contains("no output is a class output"), "{f:?}");
    }

    #[test]
    fn thresholds_out_of_range_are_refused() {
        for (x, y) in [
            (Some(-1.0), None),
            (Some(f64::NAN), None),
            (None, Some(1.5)),
        ] {
            assert!(matches!(Thresholds::new(x, y), Err(Error::Usage(_))));
        }
    }
}
