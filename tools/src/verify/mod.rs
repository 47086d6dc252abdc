//! `emogate-convert verify`: run a reference and a candidate model on the
//! same inputs and measure how far the candidate's outputs moved.
//!
//! The parts, in the order a verification goes through them:
//! * [`inputs`] — the graph's runtime inputs with concrete shapes
//!   ([`model_inputs`]) and the input sets ([`InputChoice`]): an `.npz`
//!   file ([`npz_inputs`]) or seeded ones ([`random_inputs`]), from the
//!   manifest when the model has one, else from the input shapes;
//! * [`running`] — each model loaded on tract or ONNX Runtime
//!   ([`load_backend`]) and run on every set ([`run_all`]), timed;
//! * [`metrics`] — what each output is ([`output_roles`]) and how far it
//!   moved ([`compare`]);
//! * [`report`] — the thresholds and the pass/fail decision
//!   ([`Thresholds`]), in the report the CLI prints and writes as JSON
//!   ([`VerifyReport`]).
//!
//! [`verify`] does all of it from [`VerifyOptions`]; the benchmark
//! harnesses and tests use the parts directly.

pub mod inputs;
pub mod metrics;
pub mod report;
pub mod running;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use emogate_infer::Tensor;
use emogate_models::manifest::Manifest;
use emogate_models::onnx::OnnxModel;

use crate::error::{Error, Result};
pub use crate::rng::Rng;
pub use inputs::{
    Elem, InputChoice, InputDesc, model_inputs, npz_inputs, parse_dim, random_inputs,
};
pub use metrics::{OutputMetrics, OutputRole, compare, output_names, output_roles};
pub use report::{BackendReport, Thresholds, VerifyReport};
pub use running::{BackendKind, Backends, input_facts, load_backend, median, run_all};

/// Everything a verification needs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The model whose outputs are right (usually the f32 original).
    pub reference: PathBuf,
    /// The model to check.
    pub candidate: PathBuf,
    pub inputs: InputChoice,
    /// Values of symbolic input dimensions (see [`model_inputs`]).
    pub dims: HashMap<String, usize>,
    pub backends: Backends,
    /// Threads per runtime (1 gives stable latencies).
    pub threads: usize,
    pub thresholds: Thresholds,
}

fn load(what: &str, path: &Path) -> Result<OnnxModel> {
    OnnxModel::load(path).map_err(|e| Error::model(format!("loading {what} {}", path.display()), e))
}

fn manifest_of(model: &OnnxModel) -> Result<Option<Manifest>> {
    Manifest::from_model(model).map_err(|e| {
        Error::model(
            format!("reading the manifest of {}", model.path().display()),
            e,
        )
    })
}

/// The inputs both models take; an error when they differ.
fn shared_inputs(
    reference: &OnnxModel,
    candidate: &OnnxModel,
    dims: &HashMap<String, usize>,
) -> Result<Vec<InputDesc>> {
    let descs = model_inputs(reference, dims)?;
    let names = |d: &[InputDesc]| -> Vec<(String, Vec<usize>)> {
        d.iter()
            .map(|x| (x.name.clone(), x.shape.clone()))
            .collect()
    };
    let (want, got) = (names(&descs), names(&model_inputs(candidate, dims)?));
    if want != got {
        return Err(Error::field(
            candidate.path(),
            "graph inputs",
            format!(
                "{got:?}; expected the reference's {want:?} ({})",
                reference.path().display()
            ),
        ));
    }
    Ok(descs)
}

/// Both models on one runtime, one after the other (never both loaded).
fn measure(
    kind: BackendKind,
    o: &VerifyOptions,
    descs: &[InputDesc],
    sets: &[Vec<Tensor>],
    names: &[String],
    manifest: Option<&Manifest>,
) -> Result<BackendReport> {
    let run = |path: &Path| -> Result<(Vec<Vec<Tensor>>, Vec<f64>)> {
        let mut backend = load_backend(kind, path, descs, o.threads)?;
        run_all(backend.as_mut(), sets, &path.display().to_string())
    };
    let (r_out, r_ms) = run(&o.reference)?;
    let (c_out, c_ms) = run(&o.candidate)?;
    let roles = output_roles(names, manifest, &r_out);
    Ok(BackendReport {
        backend: kind.name(),
        reference_ms_p50: median(&r_ms),
        candidate_ms_p50: median(&c_ms),
        outputs: compare(names, &roles, &r_out, &c_out)?,
    })
}

/// Runs the verification `o` describes and judges it.
///
/// The manifest (the reference's, else the candidate's) shapes the random
/// inputs and tells which outputs are probabilities or logits.
///
/// # Errors
/// A model that cannot be loaded or run, models whose inputs differ,
/// inputs that do not fit them (see [`InputChoice::sets`]), outputs that
/// do not compare. Missed thresholds are not errors: they are in the
/// report's `failures`.
pub fn verify(o: &VerifyOptions) -> Result<VerifyReport> {
    let reference = load("the reference", &o.reference)?;
    let candidate = load("the candidate", &o.candidate)?;
    let descs = shared_inputs(&reference, &candidate, &o.dims)?;
    let manifest = match manifest_of(&reference)? {
        Some(m) => Some(m),
        None => manifest_of(&candidate)?,
    };
    let (sets, source) = o.inputs.sets(&descs, manifest.as_ref())?;
    let names = output_names(&reference);
    let backends = o
        .backends
        .kinds()
        .into_iter()
        .map(|kind| measure(kind, o, &descs, &sets, &names, manifest.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    Ok(VerifyReport::judge(
        o.reference.clone(),
        o.candidate.clone(),
        source,
        sets.len(),
        backends,
        &o.thresholds,
    ))
}
