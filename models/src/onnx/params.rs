//! Every trained tensor of a graph, by the module that owns it: what
//! `analyze`, `transfer` and `ablate` select with a regular expression and
//! pair across two models.
//!
//! Two sources, with no tensor counted twice:
//!
//! * the linear layers of [`super::linear::LinearIndex`] — a weight (with
//!   its layout and `Gemm` alpha) and its bias, known by every module path
//!   the exporters give the layer (node names, dynamo name scopes,
//!   parameter names);
//! * any other float initializer named like a PyTorch parameter
//!   (`blocks.0.attn_norm.weight`, `m.model.embed_tokens.weight`,
//!   `face_stem.conv0.bias`): norms, embeddings, convolutions. Both
//!   exporters keep those names.
//!
//! A module of one model is found in another with
//! [`super::linear::resolve_among`], the resolver `merge` uses, so a
//! dynamo export pairs with a legacy export of the same network.

use std::collections::{BTreeSet, HashSet};

use regex::Regex;

use super::graph::GraphIndex;
use super::linear::{Layout, LinearIndex, Resolution, resolve_among};
use super::proto::GraphProto;
use super::{FloatType, read_counts};

/// What a tensor is to its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Weight,
    Bias,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Weight => "weight",
            Role::Bias => "bias",
        }
    }
}

/// One trained tensor of the graph.
#[derive(Clone, Debug)]
pub struct Param {
    /// The module's path as shown to users: the longest path it is known by.
    pub module: String,
    /// Every path the module is known by.
    pub paths: BTreeSet<String>,
    pub role: Role,
    /// The initializer holding the values.
    pub initializer: String,
    /// How a linear layer's 2-D weight is stored; `None` for anything else
    /// (stored in PyTorch's own orientation).
    pub layout: Option<Layout>,
    /// `Gemm`'s alpha (weights) or beta (biases): the stored values are the
    /// module's divided by it. 1 elsewhere.
    pub scale: f32,
    /// The stored dims.
    pub dims: Vec<i64>,
    /// The float type of the stored values (`None`: not a float tensor).
    pub dtype: Option<FloatType>,
    /// How many node inputs (nested bodies included) read the initializer:
    /// above 1, the tensor is shared with another layer (tied weights).
    pub readers: usize,
}

impl Param {
    /// The dims in PyTorch's orientation (`[out, in]` for linear weights).
    pub fn torch_dims(&self) -> Vec<usize> {
        let dims: Vec<usize> = self.dims.iter().map(|d| (*d).max(0) as usize).collect();
        match (self.layout, dims.as_slice()) {
            (Some(Layout::InOut), [i, o]) => vec![*o, *i],
            _ => dims,
        }
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|d| (*d).max(0) as usize).product()
    }

    /// The module's type: its last path component that is not an index
    /// (`gate_proj`, `attn_norm`, `emotion_head`).
    pub fn module_type(&self) -> &str {
        module_type(&self.module)
    }

    /// The module's layer: the last index in its path (`blocks.1.mlp.gate_proj` → 1).
    pub fn layer(&self) -> Option<usize> {
        layer_of(&self.module)
    }
}

/// The module type of a path: its last component that is not a number.
pub fn module_type(path: &str) -> &str {
    path.rsplit('.')
        .find(|c| !c.is_empty() && !c.chars().all(|ch| ch.is_ascii_digit()))
        .unwrap_or(path)
}

/// The layer of a path: its last all-digit component.
pub fn layer_of(path: &str) -> Option<usize> {
    path.rsplit('.')
        .find(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
}

/// Every trained tensor of a graph's top level.
#[derive(Debug, Default)]
pub struct ParamIndex {
    pub params: Vec<Param>,
}

impl ParamIndex {
    /// Indexes the top-level graph.
    pub fn build(graph: &GraphProto) -> Self {
        let index = GraphIndex::new(graph);
        let linear = LinearIndex::from_index(&index);
        Self::from_indexes(&index, &linear)
    }

    /// Indexes the graph `index` describes, whose linear layers are `linear`.
    pub fn from_indexes(index: &GraphIndex, linear: &LinearIndex) -> Self {
        let reads = read_counts(index.graph());
        let readers = |name: &str| reads.get(name).copied().unwrap_or(0);
        let mut params = Vec::new();
        let mut covered: HashSet<&str> = HashSet::new();
        let header = |name: &str| index.initializer(name);
        for site in &linear.sites {
            let module = longest(&site.paths);
            let Some(w) = header(&site.weight) else {
                continue;
            };
            covered.insert(site.weight.as_str());
            params.push(Param {
                module: module.clone(),
                paths: site.paths.clone(),
                role: Role::Weight,
                initializer: site.weight.clone(),
                layout: Some(site.layout),
                scale: site.alpha,
                dims: w.dims.clone(),
                dtype: FloatType::from_onnx(w.data_type()),
                readers: readers(&site.weight),
            });
            if let Some(b) = site.bias.as_deref().and_then(header) {
                covered.insert(b.name());
                params.push(Param {
                    module,
                    paths: site.paths.clone(),
                    role: Role::Bias,
                    initializer: b.name().to_string(),
                    layout: None,
                    scale: site.beta,
                    dims: b.dims.clone(),
                    dtype: FloatType::from_onnx(b.data_type()),
                    readers: readers(b.name()),
                });
            }
        }
        for t in &index.graph().initializer {
            let name = t.name();
            if covered.contains(name) || FloatType::from_onnx(t.data_type()).is_none() {
                continue;
            }
            let (module, role) = match (name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
                (Some(m), _) => (m, Role::Weight),
                (_, Some(m)) => (m, Role::Bias),
                _ => continue,
            };
            if module.is_empty() || module.contains('/') || module.contains("::") {
                continue;
            }
            params.push(Param {
                module: module.to_string(),
                paths: BTreeSet::from([module.to_string()]),
                role,
                initializer: name.to_string(),
                layout: None,
                scale: 1.0,
                dims: t.dims.clone(),
                dtype: FloatType::from_onnx(t.data_type()),
                readers: readers(name),
            });
        }
        ParamIndex { params }
    }

    /// The distinct module paths, sorted.
    pub fn modules(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.params.iter().map(|p| p.module.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Indices of the params whose module matches `pattern` under any of
    /// its paths.
    pub fn matching(&self, pattern: &Regex) -> Vec<usize> {
        (0..self.params.len())
            .filter(|i| self.params[*i].paths.iter().any(|p| pattern.is_match(p)))
            .collect()
    }

    /// The param of `role` that `module` names, by [`resolve_among`]; the
    /// index is into [`ParamIndex::params`].
    pub fn resolve(&self, module: &str, role: Role) -> Resolution {
        let of_role: Vec<usize> = (0..self.params.len())
            .filter(|i| self.params[*i].role == role)
            .collect();
        match resolve_among(of_role.iter().map(|i| &self.params[*i].paths), module) {
            Resolution::Found(k) => Resolution::Found(of_role[k]),
            Resolution::Unmatched => Resolution::Unmatched,
            Resolution::Ambiguous(hits) => {
                Resolution::Ambiguous(hits.into_iter().map(|k| of_role[k]).collect())
            }
        }
    }

    /// `module (initializer)` for messages.
    pub fn describe(&self, i: usize) -> String {
        let p = &self.params[i];
        format!("{} {} (`{}`)", p.module, p.role.name(), p.initializer)
    }
}

fn longest(paths: &BTreeSet<String>) -> String {
    paths
        .iter()
        .max_by_key(|p| (p.split('.').count(), p.len()))
        .cloned()
        .unwrap_or_default()
}

/// Turns values stored as `param` stores them into PyTorch's orientation
/// and scale (`[out, in]`, times `Gemm`'s alpha), in place of `values`.
pub fn stored_to_torch(param: &Param, values: Vec<f32>) -> Vec<f32> {
    let mut v = match (param.layout, param.torch_dims().as_slice()) {
        (Some(Layout::InOut), [out, inp]) => transpose(&values, *inp, *out),
        _ => values,
    };
    if param.scale != 1.0 {
        v.iter_mut().for_each(|x| *x *= param.scale);
    }
    v
}

/// The inverse of [`stored_to_torch`].
pub fn torch_to_stored(param: &Param, values: Vec<f32>) -> Vec<f32> {
    let mut v = match (param.layout, param.torch_dims().as_slice()) {
        (Some(Layout::InOut), [out, inp]) => transpose(&values, *out, *inp),
        _ => values,
    };
    if param.scale != 1.0 {
        v.iter_mut().for_each(|x| *x /= param.scale);
    }
    v
}

/// A row-major `[rows, cols]` matrix transposed.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_layers_from_paths() {
        assert_eq!(module_type("m.model.layers.3.mlp.gate_proj"), "gate_proj");
        assert_eq!(layer_of("m.model.layers.3.mlp.gate_proj"), Some(3));
        assert_eq!(module_type("norm"), "norm");
        assert_eq!(layer_of("emotion_head"), None);
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
