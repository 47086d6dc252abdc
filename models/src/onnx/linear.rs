//! Linear layers of a graph and the module paths they are known by: what
//! the merge resolves adapter modules against, what quantization selects
//! layers by, and what calibration hooks.
//!
//! Exporters name things differently, so every linear layer of the graph (a
//! `MatMul` or `Gemm` fed by an initializer) is indexed under all the module
//! paths the model offers for it:
//!
//! * the legacy TorchScript exporter's node names, `/m/model/layers.0/mlp/gate_proj/MatMul`;
//! * the dynamo exporter's `pkg.torch.onnx.name_scopes` node metadata, whose
//!   chain of scopes ends at the module (`m.model.layers.0.mlp.gate_proj`);
//! * initializers named after their parameter, `model.layers.0.mlp.gate_proj.weight`,
//!   or carrying it in `pkg.onnxscript.optimizer.folded_from` metadata.
//!
//! An adapter module then matches the linear layer whose path shares the
//! longest dotted suffix with it, so wrapper prefixes on either side
//! (`base_model.model.`, `language_model.`, a user's own wrapper) do not
//! matter. The shared suffix must at least reach back to the module's last
//! index (`layers.5.mlp.gate_proj`), so `layers.5` never falls back onto
//! `layers.0` in a smaller model.

use std::collections::BTreeSet;

use super::graph::{GraphIndex, NodeExt};
use super::proto::{GraphProto, NodeProto, StringStringEntryProto};

/// How a 2-D weight is stored relative to PyTorch's `[out, in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[in, out]`: `MatMul(x, W)` or `Gemm` with `transB = 0`.
    InOut,
    /// `[out, in]`: `Gemm` with `transB = 1`, or `MatMul(x, Transpose(W))`.
    OutIn,
}

/// A linear layer of the graph: an op whose second input is a weight initializer.
#[derive(Clone, Debug)]
pub struct LinearSite {
    /// Index in `graph.node` of the node that reads the initializer
    /// (the `Transpose` when the weight passes through one).
    pub reader: usize,
    /// Index in `graph.node` of the `MatMul`/`Gemm` itself.
    pub linear: usize,
    /// Name of the `MatMul`/`Gemm` node.
    pub node_name: String,
    pub op: String,
    pub weight: String,
    pub layout: Layout,
    /// The bias initializer: `Gemm`'s third input, or the `Add` right after a `MatMul`.
    pub bias: Option<String>,
    /// Index in `graph.node` of the node that reads the bias.
    pub bias_reader: Option<usize>,
    /// `Gemm` computes `alpha·x·W + beta·b`: the stored weight and bias are
    /// the module's divided by these (1 for `MatMul`).
    pub alpha: f32,
    pub beta: f32,
    /// Module paths this layer is known by.
    pub paths: BTreeSet<String>,
}

/// Every linear layer of a graph, with their module paths.
#[derive(Debug, Default)]
pub struct LinearIndex {
    pub sites: Vec<LinearSite>,
}

/// The outcome of resolving one adapter module.
pub enum Resolution {
    Found(usize),
    Unmatched,
    Ambiguous(Vec<usize>),
}

impl LinearIndex {
    /// Indexes the top-level graph's linear layers.
    pub fn build(graph: &GraphProto) -> Self {
        Self::from_index(&GraphIndex::new(graph))
    }

    /// Indexes the linear layers of the graph `index` describes, for callers
    /// that already hold a [`GraphIndex`].
    pub fn from_index(index: &GraphIndex) -> Self {
        let graph = index.graph();
        let mut sites = Vec::new();
        for (i, node) in graph.node.iter().enumerate() {
            let op = node.op_type();
            if op != "MatMul" && op != "Gemm" {
                continue;
            }
            let Some(w_input) = node.input.get(1) else {
                continue;
            };
            let (weight, reader, mut layout, via) = if index.is_initializer(w_input) {
                (w_input.clone(), i, Layout::InOut, None)
            } else if let Some(t) = producer_transpose(index, w_input) {
                // MatMul(x, Transpose(W)) with W stored [out, in] (unfolded
                // exports). When the transposed W feeds other nodes too, a
                // change to W would change them as well: not this layer's.
                if index.only_consumer(w_input).is_none() {
                    continue;
                }
                (graph.node[t].input[0].clone(), t, Layout::OutIn, Some(t))
            } else {
                continue;
            };
            if index.initializer(&weight).is_none_or(|t| t.dims.len() != 2) {
                continue;
            }
            // transA transposes x; W still multiplies from the right, so
            // only transB changes how W is stored.
            if op == "Gemm" && node.attr_int("transB") == Some(1) {
                layout = flip(layout);
            }
            let (bias, bias_reader) = if op == "Gemm" {
                let b = node
                    .input
                    .get(2)
                    .filter(|b| !b.is_empty() && index.is_initializer(b))
                    .cloned();
                let reader = b.as_ref().map(|_| i);
                (b, reader)
            } else {
                match add_bias(index, node) {
                    Some((b, add)) => (Some(b), Some(add)),
                    None => (None, None),
                }
            };
            // The dynamo exporter may put the module's scope on the bias `Add`
            // rather than on the MatMul, so the Add names the layer too.
            let bias_add = if op == "MatMul" { bias_reader } else { None };
            let (alpha, beta) = if op == "Gemm" {
                (
                    node.attr_float("alpha").unwrap_or(1.0),
                    node.attr_float("beta").unwrap_or(1.0),
                )
            } else {
                (1.0, 1.0)
            };
            let mut paths = BTreeSet::new();
            for n in std::iter::once(node)
                .chain(via.map(|t| &graph.node[t]))
                .chain(bias_add.map(|a| &graph.node[a]))
            {
                paths.extend(path_from_name_scopes(&n.metadata_props));
                paths.extend(path_from_node_name(n.name()));
            }
            if let Some(t) = index.initializer(&weight) {
                paths.extend(path_from_parameter_name(t.name()));
                for e in &t.metadata_props {
                    if e.key() == "pkg.onnxscript.optimizer.folded_from" {
                        paths.extend(
                            parse_name_list(e.value())
                                .iter()
                                .filter_map(|n| path_from_parameter_name(n)),
                        );
                    }
                }
            }
            sites.push(LinearSite {
                reader,
                linear: i,
                bias_reader,
                alpha,
                beta,
                node_name: node.name().to_string(),
                op: op.to_string(),
                weight,
                layout,
                bias,
                paths,
            });
        }
        LinearIndex { sites }
    }

    /// Resolves an adapter module path to one site.
    pub fn resolve(&self, module: &str) -> Resolution {
        resolve_among(self.sites.iter().map(|s| &s.paths), module)
    }

    /// A human-readable name for a site, for messages and reports.
    pub fn describe(&self, site: usize) -> String {
        let s = &self.sites[site];
        let path = s
            .paths
            .iter()
            .max_by_key(|p| p.len())
            .cloned()
            .unwrap_or_default();
        format!("{} (node `{}`, weight `{}`)", path, s.node_name, s.weight)
    }
}

/// The one module-path resolver: which of `candidates` (each a set of the
/// module paths it is known by) `module` names. The candidate sharing the
/// longest dotted suffix with `module` wins, as long as that suffix reaches
/// back to the module's last index ([`required_suffix`]); several candidates
/// with the same best score are ambiguous. Merge, transfer, ablate and
/// analyze all resolve modules through here, so they agree on what a path
/// means whatever exporter wrote the graph.
pub fn resolve_among<'a>(
    candidates: impl IntoIterator<Item = &'a BTreeSet<String>>,
    module: &str,
) -> Resolution {
    let wanted: Vec<&str> = module.split('.').collect();
    let required = required_suffix(&wanted);
    let mut best = 0;
    let mut hits: Vec<usize> = Vec::new();
    for (i, paths) in candidates.into_iter().enumerate() {
        let score = paths
            .iter()
            .map(|p| common_suffix(&wanted, &p.split('.').collect::<Vec<_>>()))
            .max()
            .unwrap_or(0);
        if score < required || score < best {
            continue;
        }
        if score > best {
            best = score;
            hits.clear();
        }
        hits.push(i);
    }
    match hits.len() {
        0 => Resolution::Unmatched,
        1 => Resolution::Found(hits[0]),
        _ => Resolution::Ambiguous(hits),
    }
}

pub(crate) fn flip(layout: Layout) -> Layout {
    match layout {
        Layout::InOut => Layout::OutIn,
        Layout::OutIn => Layout::InOut,
    }
}

/// The index of the `Transpose(perm=[1,0])` node of an initializer that
/// produces `value`.
fn producer_transpose(index: &GraphIndex, value: &str) -> Option<usize> {
    let t = index.producer(value)?;
    let n = index.node(t);
    let is_weight_transpose = n.op_type() == "Transpose"
        && n.output.first().is_some_and(|o| o == value)
        && n.input.first().is_some_and(|i| index.is_initializer(i))
        // No `perm` reverses the dimensions: [1, 0] for a 2-D weight.
        && n.attr_ints("perm").is_none_or(|p| p == [1, 0]);
    is_weight_transpose.then_some(t)
}

/// The bias of `MatMul → Add(bias)`, when the `Add` is the MatMul's only
/// consumer and its other input is a 1-D initializer; with the Add's index.
fn add_bias(index: &GraphIndex, matmul: &NodeProto) -> Option<(String, usize)> {
    let out = matmul.output.first()?;
    let only = index.only_consumer(out)?;
    let add = index.node(only);
    if add.op_type() != "Add" {
        return None;
    }
    add.input
        .iter()
        .find(|i| *i != out && index.initializer(i).is_some_and(|t| t.dims.len() == 1))
        .map(|b| (b.clone(), only))
}

/// Module paths of a node: from the dynamo exporter's name scopes and the
/// legacy exporter's node name.
pub fn node_module_paths(node: &NodeProto) -> Vec<String> {
    path_from_name_scopes(&node.metadata_props)
        .into_iter()
        .chain(path_from_node_name(node.name()))
        .collect()
}

/// `['', 'm', 'm.model', …, 'm.model.layers.0.mlp.gate_proj', 'linear_4']`:
/// the module is the end of the chain where each scope extends the one before.
pub fn path_from_name_scopes(props: &[StringStringEntryProto]) -> Option<String> {
    let value = props
        .iter()
        .find(|p| p.key() == "pkg.torch.onnx.name_scopes")?
        .value();
    let scopes = parse_name_list(value);
    let mut current = String::new();
    for scope in scopes {
        let extends = current.is_empty() || scope.starts_with(&format!("{current}."));
        if scope.is_empty() {
            continue;
        }
        if !extends {
            break;
        }
        current = scope;
    }
    (!current.is_empty()).then_some(current)
}

/// `/m/model/layers.0/mlp/gate_proj/MatMul` → `m.model.layers.0.mlp.gate_proj`.
pub fn path_from_node_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix('/')?;
    let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop()?; // the op's own name
    (!parts.is_empty()).then(|| parts.join("."))
}

/// `model.layers.0.mlp.gate_proj.weight` → `model.layers.0.mlp.gate_proj`.
pub fn path_from_parameter_name(name: &str) -> Option<String> {
    let module = name.strip_suffix(".weight")?;
    (!module.is_empty() && !module.contains('/') && !module.contains("::"))
        .then(|| module.to_string())
}

/// Parses a Python-style list of strings (`['a', "b"]`) or a bare name.
fn parse_name_list(value: &str) -> Vec<String> {
    let v = value.trim();
    let Some(inner) = v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) else {
        return vec![v.trim_matches(|c| c == '\'' || c == '"').to_string()];
    };
    inner
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|s| !s.is_empty() || inner.contains("''"))
        .collect()
}

fn common_suffix(a: &[&str], b: &[&str]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many trailing components of `module` a match must share: from the
/// container of its last numeric index (`layers.5…`) to the end, or the last
/// component when it has no index.
fn required_suffix(module: &[&str]) -> usize {
    match module
        .iter()
        .rposition(|c| c.chars().all(|ch| ch.is_ascii_digit()))
    {
        Some(i) if i > 0 => module.len() - (i - 1),
        Some(i) => module.len() - i,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_each_exporter() {
        assert_eq!(
            path_from_node_name("/m/model/layers.0/mlp/gate_proj/MatMul").as_deref(),
            Some("m.model.layers.0.mlp.gate_proj")
        );
        assert_eq!(path_from_node_name("node_linear_4"), None);
        let scopes = StringStringEntryProto {
            key: Some("pkg.torch.onnx.name_scopes".into()),
            value: Some("['', 'm', 'm.model', 'm.model.layers.0', 'm.model.layers.0.mlp', 'm.model.layers.0.mlp.gate_proj', 'linear_4']".into()),
        };
        assert_eq!(
            path_from_name_scopes(&[scopes]).as_deref(),
            Some("m.model.layers.0.mlp.gate_proj")
        );
        assert_eq!(
            path_from_parameter_name("model.layers.0.mlp.gate_proj.weight").as_deref(),
            Some("model.layers.0.mlp.gate_proj")
        );
        assert_eq!(path_from_parameter_name("onnx::MatMul_873"), None);
    }

    #[test]
    fn suffix_rule_keeps_layer_indices() {
        let m: Vec<&str> = "model.layers.5.mlp.gate_proj".split('.').collect();
        assert_eq!(required_suffix(&m), 4);
        let other: Vec<&str> = "m.model.layers.0.mlp.gate_proj".split('.').collect();
        assert!(common_suffix(&m, &other) < required_suffix(&m));
        let same: Vec<&str> = "language_model.layers.5.mlp.gate_proj".split('.').collect();
        assert_eq!(common_suffix(&m, &same), 4);
        assert_eq!(required_suffix(&["score"]), 1);
    }
}
