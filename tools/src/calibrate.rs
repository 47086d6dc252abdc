//! Calibration for `quantize --int8 --calibrate N`: runs the f32 model on
//! N seeded inputs (manifest-driven, or from the input shapes, as `verify`
//! makes them) in tract, with the inputs of every `MatMul`/`Gemm` that
//! reads a weight initializer added as graph outputs, and accumulates each
//! layer's `H = Σ x xᵀ` for GPTQ.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use emogate_infer::backend::Backend;
use emogate_infer::backend::InputFact;
use emogate_infer::backend::tract::{TractBackend, TractOptions};
use emogate_models::manifest::Manifest;
use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::linear::{Layout, LinearIndex};
use emogate_models::onnx::proto::ValueInfoProto;
use emogate_models::quantize::gptq::Hessian;

use crate::verify;

/// `H` per weight initializer, from `n` calibration inputs (seed `seed`).
///
/// # Errors
/// The model cannot be run in tract, or its inputs cannot be generated.
pub fn hessians(model: &OnnxModel, n: usize, seed: u64) -> Result<HashMap<String, Hessian>> {
    let graph = model.graph();
    let index = LinearIndex::build(graph);
    let inits: HashMap<&str, _> = graph.initializer.iter().map(|t| (t.name(), t)).collect();
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
        taps.push((node.input[0].clone(), site.weight.clone(), n_in));
    }
    if taps.is_empty() {
        return Ok(HashMap::new());
    }
    let mut proto = model.proto.clone();
    let g = proto.graph.as_mut().context("graph")?;
    let first_extra = g.output.len();
    let mut extra: Vec<String> = Vec::new();
    for (act, _, _) in &taps {
        if !extra.contains(act) {
            extra.push(act.clone());
            g.output.push(ValueInfoProto {
                name: Some(act.clone()),
                ..Default::default()
            });
        }
    }
    let descs = verify::model_inputs(model, &HashMap::new())?;
    let facts = descs
        .iter()
        .map(|d| match d.elem {
            verify::Elem::F32 => InputFact::F32(d.shape.clone()),
            verify::Elem::I64 => InputFact::I64(d.shape.clone()),
        })
        .collect();
    let mut backend = TractBackend::from_proto(
        &proto,
        model.dir(),
        &TractOptions {
            inputs: Some(facts),
            threads: 1,
        },
    )
    .with_context(|| {
        format!(
            "tract could not load {} for calibration",
            model.path().display()
        )
    })?;
    let manifest = Manifest::from_model(model)?;
    let sets = verify::random_inputs(&descs, manifest.as_ref(), n, seed, 1.0)?;
    let mut out: HashMap<String, Hessian> = HashMap::new();
    for (s, set) in sets.iter().enumerate() {
        let outputs = backend
            .run(set)
            .with_context(|| format!("calibration input set {s}"))?;
        for (act, weight, n_in) in &taps {
            let k = first_extra + extra.iter().position(|e| e == act).expect("added");
            let Some(x) = outputs.get(k).and_then(|t| t.as_f32()) else {
                bail!("calibration: tract returned no value for `{act}`");
            };
            if x.len() % n_in != 0 {
                bail!(
                    "calibration: `{act}` has {} values, not a multiple of {n_in}",
                    x.len()
                );
            }
            out.entry(weight.clone())
                .or_insert_with(|| Hessian::new(*n_in))
                .add(x);
        }
    }
    Ok(out)
}
