//! Which weights int8 quantization touches: the candidates each form can
//! quantize, filtered by the user's module selection, type and size.

use std::collections::HashSet;

use super::{FLOAT, Int8Options};
use crate::error::{Error, Result};
use crate::onnx::linear::{Layout, LinearIndex, node_module_paths, path_from_parameter_name};
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::{GraphIndex, NodeExt, OnnxModel, element_count, onnx_type_name};
use crate::quantize::{QuantizeReport, Selector, Skipped};

/// A weight to quantize and how its op reads it.
pub(super) struct Candidate {
    pub weight: String,
    /// Output-channel axis of the stored weight.
    pub axis: usize,
    pub op: String,
    pub paths: Vec<String>,
}

impl Candidate {
    /// The most specific module path (the longest), for reports.
    pub fn module(&self) -> Option<String> {
        self.paths.iter().max_by_key(|p| p.len()).cloned()
    }

    /// A weight read by `node` other than through a linear layer (a Conv
    /// kernel, an embedding table): known by the node's module paths and
    /// its parameter name.
    pub fn read_by(node: &NodeProto, weight: &str, axis: usize) -> Self {
        let mut paths = node_module_paths(node);
        paths.extend(path_from_parameter_name(weight));
        Candidate {
            weight: weight.to_string(),
            axis,
            op: node.op_type().to_string(),
            paths,
        }
    }
}

/// The weights the QDQ form can quantize, each once: linear layers' weights
/// (channels along the output axis of their layout), Conv kernels and the
/// embedding tables `Gather` reads along axis 0.
pub(super) fn qdq_candidates(index: &GraphIndex) -> Vec<Candidate> {
    let graph = index.graph();
    let linear = LinearIndex::from_index(index);
    let mut out: Vec<Candidate> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for site in &linear.sites {
        if seen.insert(site.weight.clone()) {
            out.push(Candidate {
                weight: site.weight.clone(),
                axis: if site.layout == Layout::InOut { 1 } else { 0 },
                op: site.op.clone(),
                paths: site.paths.iter().cloned().collect(),
            });
        }
    }
    for node in &graph.node {
        // Conv kernels [out, in/g, k…] and embedding tables [rows, dim]
        // read by Gather (one scale per row), both along axis 0.
        let (w, ok): (Option<&String>, fn(&TensorProto) -> bool) = match node.op_type() {
            "Conv" => (node.input.get(1), |t| t.dims.len() >= 3),
            "Gather" => (node.input.first(), |t| t.dims.len() == 2),
            _ => continue,
        };
        let Some(w) = w else { continue };
        // Only embedding lookups (Gather along axis 0) count as tables.
        let gather_axis0 = node.op_type() != "Gather" || node.attr_int("axis").unwrap_or(0) == 0;
        if gather_axis0 && index.initializer(w).is_some_and(ok) && seen.insert(w.clone()) {
            out.push(Candidate::read_by(node, w, 0));
        }
    }
    out
}

/// Picks the candidates to quantize, recording why the others are skipped.
///
/// # Errors
/// [`Error::Field`] for a selected weight that is not float32, and for a
/// `--modules`/`--exclude-modules` pattern that matches no candidate.
pub(super) fn choose<'c>(
    model: &OnnxModel,
    index: &GraphIndex,
    cands: &'c [Candidate],
    options: &Int8Options,
    report: &mut QuantizeReport,
) -> Result<Vec<&'c Candidate>> {
    let mut selector = Selector::new(&options.selection, model.path())?;
    let mut chosen = Vec::new();
    let mut known = Vec::new();
    for c in cands {
        known.extend(c.paths.iter().cloned());
        let skip = |reason: String, report: &mut QuantizeReport| {
            report.skipped.push(Skipped {
                weight: c.weight.clone(),
                module: c.module(),
                reason,
            })
        };
        // Selecting first records which patterns matched, even for a
        // candidate dropped below.
        let selected = selector.selects(c.paths.iter().map(String::as_str));
        let Some(t) = index.initializer(&c.weight) else {
            continue;
        };
        if !selected {
            skip("outside the module selection".into(), report);
            continue;
        }
        if t.data_type() != FLOAT {
            return Err(Error::field(
                model.path(),
                format!("initializer `{}` data_type", c.weight),
                format!(
                    "is {}; int8 quantization reads float32 weights (quantize the f32 model, not a converted one)",
                    onnx_type_name(t.data_type())
                ),
            ));
        }
        let n = element_count(t).unwrap_or(0);
        if n < options.min_elements {
            skip(
                format!(
                    "{n} elements, below --min-elements {}",
                    options.min_elements
                ),
                report,
            );
            continue;
        }
        chosen.push(c);
    }
    selector.check_all_matched(model.path(), &known)?;
    Ok(chosen)
}
