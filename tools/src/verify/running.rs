//! Loading a model on a runtime and running every input set, timed.

use std::path::Path;
use std::time::Instant;

use emogate_infer::Tensor;
use emogate_infer::backend::tract::{TractBackend, TractOptions};
use emogate_infer::backend::{Backend, InputFact};
use serde::Serialize;

use super::inputs::{Elem, InputDesc};
use crate::error::{Error, Result};

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

/// Which runtimes a verification runs both models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    Tract,
    Ort,
    /// tract, then ONNX Runtime.
    Both,
}

impl Backends {
    /// The runtimes, in the order they run.
    pub fn kinds(self) -> Vec<BackendKind> {
        match self {
            Backends::Tract => vec![BackendKind::Tract],
            Backends::Ort => vec![BackendKind::Ort],
            Backends::Both => vec![BackendKind::Tract, BackendKind::Ort],
        }
    }
}

/// The input facts tract plans a model with: each input's type and shape.
pub fn input_facts(descs: &[InputDesc]) -> Vec<InputFact> {
    descs
        .iter()
        .map(|d| match d.elem {
            Elem::F32 => InputFact::F32(d.shape.clone()),
            Elem::I64 => InputFact::I64(d.shape.clone()),
        })
        .collect()
}

/// Loads `path` on a backend, with input shapes bound.
///
/// # Errors
/// [`Error::Backend`] with the runtime's load error; [`Error::Usage`] for
/// `ort` in a build without the `ort` feature.
pub fn load_backend(
    kind: BackendKind,
    path: &Path,
    descs: &[InputDesc],
    threads: usize,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => {
            let options = TractOptions {
                inputs: Some(input_facts(descs)),
                threads,
                ..TractOptions::default()
            };
            let b = TractBackend::load_with(path, &options).map_err(|source| Error::Backend {
                what: format!("tract could not load {}", path.display()),
                source,
            })?;
            Ok(Box::new(b))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => {
            use emogate_infer::backend::ort::{OrtBackend, OrtOptions};
            let options = OrtOptions {
                threads,
                ..OrtOptions::default()
            };
            let b =
                OrtBackend::load(path, Vec::new(), &options).map_err(|source| Error::Backend {
                    what: format!("ONNX Runtime could not load {}", path.display()),
                    source,
                })?;
            Ok(Box::new(b))
        }
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => Err(Error::usage(
            "this build has no ONNX Runtime backend; rebuild with `--features emogate-tools/ort` (and set ORT_DYLIB_PATH)",
        )),
    }
}

/// Runs every input set; returns the outputs and each run's milliseconds.
///
/// # Errors
/// [`Error::Backend`] with the runtime's error, naming `label` and the set.
pub fn run_all(
    backend: &mut dyn Backend,
    sets: &[Vec<Tensor>],
    label: &str,
) -> Result<(Vec<Vec<Tensor>>, Vec<f64>)> {
    let mut outs = Vec::with_capacity(sets.len());
    let mut times = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let t = Instant::now();
        let o = backend.run(set).map_err(|source| Error::Backend {
            what: format!("{label}: running input set {i}"),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_backend_order() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            Backends::Both.kinds(),
            vec![BackendKind::Tract, BackendKind::Ort]
        );
    }
}
