//! Calibration for `quantize --int8 --calibrate N`: runs the f32 model on
//! N seeded inputs (manifest-driven, or from the input shapes, as `verify`
//! makes them) in tract, with the inputs of every `MatMul`/`Gemm` that
//! reads a weight initializer added as graph outputs, and accumulates each
//! layer's `H = Σ x xᵀ` for GPTQ.

use std::collections::HashMap;

use emogate_infer::backend::Backend;
use emogate_infer::backend::tract::{TractBackend, TractOptions};
use emogate_models::manifest::Manifest;
use emogate_models::onnx::linear::{Layout, LinearIndex};
use emogate_models::onnx::proto::ValueInfoProto;
use emogate_models::onnx::{OnnxModel, initializers_by_name};
use emogate_models::quantize::gptq::Hessian;

use crate::error::{Error, Result};
use crate::verify;

/// `H` per weight initializer, from `n` calibration inputs (seed `seed`).
///
/// # Errors
/// [`Error::Backend`] when tract cannot load or run the model (naming the
/// file and the input set), the errors of [`verify::random_inputs`], and
/// [`Error::Field`] when tract returns a layer input of the wrong size.
pub fn hessians(model: &OnnxModel, n: usize, seed: u64) -> Result<HashMap<String, Hessian>> {
    let graph = model.graph();
    let index = LinearIndex::build(graph);
    let inits = initializers_by_name(graph);
    // (activation, weight, in features)
    let mut taps: Vec<(String, String, usize)> = Vec::new();
    for site in &index.sites {
        let node = &graph.node[site.linear];
        let trans_a = node
            .attribute
            .iter()
            .any(|a| a.name() == "transA" && a.i == Some(1));
        let Some(w) = inits.get(site.weight.as_str()) else {
            continue;
        };
        if trans_a || w.dims.len() != 2 {
            continue;
        }
        let n_in = match site.layout {
            Layout::InOut => w.dims[0],
            Layout::OutIn => w.dims[1],
        } as usize;
        let Some(activation) = node.input.first() else {
            continue;
        };
        taps.push((activation.clone(), site.weight.clone(), n_in));
    }
    if taps.is_empty() {
        return Ok(HashMap::new());
    }
    // The layer inputs, added as graph outputs after the model's own.
    let mut proto = model.proto.clone();
    let mut graph_outputs = model.graph().output.clone();
    let first_extra = graph_outputs.len();
    let mut extra: Vec<String> = Vec::new();
    for (act, _, _) in &taps {
        if !extra.contains(act) {
            extra.push(act.clone());
            graph_outputs.push(ValueInfoProto {
                name: Some(act.clone()),
                ..Default::default()
            });
        }
    }
    if let Some(g) = proto.graph.as_mut() {
        g.output = graph_outputs;
    }
    let descs = verify::model_inputs(model, &HashMap::new())?;
    let options = TractOptions {
        inputs: Some(verify::input_facts(&descs)),
        threads: 1,
        ..TractOptions::default()
    };
    let mut backend =
        TractBackend::from_proto(&proto, model.dir(), &options).map_err(|source| {
            Error::Backend {
                what: format!(
                    "tract could not load {} for calibration",
                    model.path().display()
                ),
                source,
            }
        })?;
    let manifest = Manifest::from_model(model).map_err(|e| {
        Error::model(
            format!("reading the manifest of {}", model.path().display()),
            e,
        )
    })?;
    let sets = verify::random_inputs(&descs, manifest.as_ref(), n, seed, 1.0)?;
    let mut out: HashMap<String, Hessian> = HashMap::new();
    for (s, set) in sets.iter().enumerate() {
        let outputs = backend.run(set).map_err(|source| Error::Backend {
            what: format!("calibrating {}: input set {s}", model.path().display()),
            source,
        })?;
        for (act, weight, n_in) in &taps {
            let field = || format!("calibration value `{act}`");
            let x = extra
                .iter()
                .position(|e| e == act)
                .and_then(|i| outputs.get(first_extra + i))
                .and_then(|t| t.as_f32())
                .ok_or_else(|| {
                    Error::field(
                        model.path(),
                        field(),
                        "tract returned none; expected the float input of a linear layer",
                    )
                })?;
            if x.len() % n_in != 0 {
                return Err(Error::field(
                    model.path(),
                    field(),
                    format!(
                        "has {} values; expected a multiple of the layer's {n_in} inputs",
                        x.len()
                    ),
                ));
            }
            out.entry(weight.clone())
                .or_insert_with(|| Hessian::new(*n_in))
                .add(x);
        }
    }
    Ok(out)
}
