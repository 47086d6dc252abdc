//! Adapter slots: one graph that runs the base model or any of several
//! PEFT adapters, chosen by the values fed with each run.
//!
//! A merge ([`crate::merge`]) changes weights, and a runtime must then plan
//! the model again: on tract that is 3.3 s of a 3.8 s switch on a
//! Qwen2.5-0.5B-shaped model, for two dozen changed matrices. A slot graph
//! is planned once, and a switch only changes the values of its slot
//! inputs:
//!
//! * a **low-rank slot** on each layer an adapter's LoRA adapts: a branch
//!   whose factors are graph inputs,
//!   `y = x·W + (x·Aₛ)·Bₛ` with `Aₛ = Aᵀ` (`[in, R]`) and `Bₛ = (s·B)ᵀ`
//!   (`[R, out]`). The base model feeds zeros. `R` is the largest rank any
//!   of the adapters has there; a smaller adapter is padded with zeros,
//!   which adds exact zeros. The result is the merge's `x·(W + s·B·A)` up
//!   to float rounding (the engine's tests hold it to 1e-5 on both
//!   runtimes).
//! * a **weight slot** on each layer an adapter replaces outright
//!   (`modules_to_save`, typically the heads): the layer reads its weight
//!   (and bias) from a graph input, fed the base tensor or the adapter's,
//!   exactly as the merge stores them.
//!
//! What fits: plain LoRA and `modules_to_save` on f32 linear layers,
//! resolved by the merge's own resolver. DoRA (its row norms depend on the
//! merged weight), `lora_bias` and `Gemm` with `transA` do not:
//! [`SlotGraph::new`] and [`SlotGraph::fits`] say why with an [`Unfit`],
//! and the caller merges instead.

use std::collections::BTreeMap;

use crate::merge::to_layout;
use crate::onnx::build;
use crate::onnx::linear::{Layout, LinearIndex, LinearSite, Resolution};
use crate::onnx::proto::{ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::{FloatType, GraphIndex, NameAllocator, NodeExt, OnnxModel};
use crate::peft::Adapter;

/// ONNX `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// Why an adapter cannot run in a slot graph (the caller merges instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unfit(pub String);

/// One slot input: its name, dims, and what the base model feeds it.
#[derive(Debug, Clone)]
pub struct SlotInput {
    pub name: String,
    pub dims: Vec<usize>,
    base: BaseValue,
}

#[derive(Debug, Clone)]
enum BaseValue {
    Zeros,
    Tensor(Vec<f32>),
}

/// The slots of one linear layer.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The `MatMul`/`Gemm` node the slots belong to.
    pub node: String,
    pub in_features: usize,
    pub out_features: usize,
    /// The low-rank slot's rank, if it has one.
    pub rank: Option<usize>,
    /// Index into [`SlotGraph::inputs`] of `Aₛ` (then `Bₛ`).
    low_rank: Option<usize>,
    /// Index of the weight input (then the bias input, if any).
    weight: Option<(usize, Option<usize>)>,
    site: LinearSite,
}

/// The values of every slot input, in the order of [`SlotGraph::inputs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Factors(pub Vec<(Vec<usize>, Vec<f32>)>);

/// A model with slots on every layer a set of adapters changes.
pub struct SlotGraph {
    proto: ModelProto,
    slots: Vec<Slot>,
    inputs: Vec<SlotInput>,
    /// The base graph's linear layers, to resolve adapter modules.
    index: LinearIndex,
    /// Linear site index → slot index.
    by_site: BTreeMap<usize, usize>,
}

/// What the adapters need at one layer.
#[derive(Default, Clone, Copy)]
struct Need {
    rank: usize,
    weight: bool,
    bias: bool,
}

impl SlotGraph {
    /// Builds the slot graph of `model` for `adapters` (at least one).
    ///
    /// # Errors
    /// [`Unfit`] naming the adapter folder and module that cannot run in a
    /// slot, or the layer that cannot carry one.
    pub fn new(model: &OnnxModel, adapters: &[&Adapter]) -> Result<Self, Unfit> {
        if adapters.is_empty() {
            return Err(Unfit("no adapters to make slots for".into()));
        }
        let graph = model.graph();
        let index = LinearIndex::build(graph);
        let mut needs: BTreeMap<usize, Need> = BTreeMap::new();
        for adapter in adapters {
            for change in resolve(model, &index, adapter)? {
                let need = needs.entry(change.site).or_default();
                match change.what {
                    What::LowRank(rank) => need.rank = need.rank.max(rank),
                    What::Replace { bias } => {
                        need.weight = true;
                        need.bias |= bias;
                    }
                }
            }
        }
        let graph_index = GraphIndex::new(graph);
        let mut names = NameAllocator::new(graph);
        let mut proto = model.proto.clone();
        let mut slots = Vec::with_capacity(needs.len());
        let mut inputs: Vec<SlotInput> = Vec::new();
        let mut by_site = BTreeMap::new();
        // (position in graph.node, nodes to insert after it)
        let mut inserts: Vec<(usize, Vec<NodeProto>)> = Vec::new();
        let mut value_infos: Vec<ValueInfoProto> = Vec::new();
        for (site_index, need) in needs {
            let site = &index.sites[site_index];
            let node = graph_index.node(site.linear);
            let weight = initializer(&graph_index, &site.weight)?;
            let (out_features, in_features) = logical_dims(weight, site.layout);
            let k = slots.len();
            let mut slot = Slot {
                node: site.node_name.clone(),
                in_features,
                out_features,
                rank: None,
                low_rank: None,
                weight: None,
                site: site.clone(),
            };
            let mut add_input = |name: String, dims: Vec<usize>, base: BaseValue| {
                let i64_dims: Vec<Option<i64>> = dims.iter().map(|d| Some(*d as i64)).collect();
                value_infos.push(build::value_info(&name, FLOAT, &i64_dims));
                inputs.push(SlotInput { name, dims, base });
                inputs.len() - 1
            };
            if need.rank > 0 {
                if site.op == "Gemm" && node.attr_int("transA").unwrap_or(0) != 0 {
                    return Err(Unfit(format!(
                        "node `{}` is a Gemm with transA=1; a low-rank slot needs x·W",
                        site.node_name
                    )));
                }
                let (Some(x), Some(y)) = (node.input.first(), node.output.first()) else {
                    return Err(Unfit(format!(
                        "node `{}` has no input or output",
                        site.node_name
                    )));
                };
                let a_input = names.fresh(&format!("emogate.slot{k}.lora_a"));
                let b_input = names.fresh(&format!("emogate.slot{k}.lora_b"));
                let base_out = names.fresh(&format!("{y}.base"));
                let xa = names.fresh(&format!("{y}.lora_xa"));
                let delta = names.fresh(&format!("{y}.lora_delta"));
                let stem = &site.node_name;
                let branch = vec![
                    build::node(
                        &names.fresh(&format!("{stem}.lora_a")),
                        "MatMul",
                        &[x, &a_input],
                        &[&xa],
                    ),
                    build::node(
                        &names.fresh(&format!("{stem}.lora_b")),
                        "MatMul",
                        &[&xa, &b_input],
                        &[&delta],
                    ),
                    build::node(
                        &names.fresh(&format!("{stem}.lora_add")),
                        "Add",
                        &[&base_out, &delta],
                        &[y],
                    ),
                ];
                proto_graph(&mut proto).node[site.linear].output[0] = base_out;
                inserts.push((site.linear, branch));
                let a = add_input(a_input, vec![in_features, need.rank], BaseValue::Zeros);
                add_input(b_input, vec![need.rank, out_features], BaseValue::Zeros);
                slot.rank = Some(need.rank);
                slot.low_rank = Some(a);
            }
            if need.weight {
                let (_, base) = model
                    .float_values(weight)
                    .map_err(|e| Unfit(e.to_string()))?;
                let name = names.fresh(&format!("emogate.slot{k}.weight"));
                rewire(&mut proto, site.reader, &site.weight, &name);
                let dims = weight.dims.iter().map(|d| *d as usize).collect();
                let w = add_input(name, dims, BaseValue::Tensor(base));
                let mut b = None;
                if need.bias {
                    let (Some(bias), Some(reader)) = (&site.bias, site.bias_reader) else {
                        return Err(Unfit(format!(
                            "an adapter replaces the bias of node `{}`, which has none",
                            site.node_name
                        )));
                    };
                    let tensor = initializer(&graph_index, bias)?;
                    let (_, base) = model
                        .float_values(tensor)
                        .map_err(|e| Unfit(e.to_string()))?;
                    let name = names.fresh(&format!("emogate.slot{k}.bias"));
                    rewire(&mut proto, reader, bias, &name);
                    b = Some(add_input(name, vec![base.len()], BaseValue::Tensor(base)));
                }
                slot.weight = Some((w, b));
            }
            by_site.insert(site_index, k);
            slots.push(slot);
        }
        let graph = proto_graph(&mut proto);
        // Insert from the back so earlier positions stay valid; each
        // branch follows its layer, so the node list stays in
        // topological order.
        inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, nodes) in inserts {
            graph.node.splice(at + 1..at + 1, nodes);
        }
        graph.input.extend(value_infos);
        Ok(SlotGraph {
            proto,
            slots,
            inputs,
            index,
            by_site,
        })
    }

    /// The graph with the slots, to load on a runtime once.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot inputs, in the order they follow the model's own inputs
    /// in [`SlotGraph::proto`].
    pub fn inputs(&self) -> &[SlotInput] {
        &self.inputs
    }

    /// Checks that `adapter` runs in these slots.
    ///
    /// # Errors
    /// [`Unfit`] naming the module and what its layer lacks.
    pub fn fits(&self, model: &OnnxModel, adapter: &Adapter) -> Result<(), Unfit> {
        self.placements(model, adapter).map(|_| ())
    }

    /// The values that make the slot graph compute `adapter` merged into
    /// the base (`None`: the base model).
    ///
    /// # Errors
    /// [`Unfit`] as [`SlotGraph::fits`].
    pub fn factors(&self, model: &OnnxModel, adapter: Option<&Adapter>) -> Result<Factors, Unfit> {
        let placements = match adapter {
            Some(adapter) => self.placements(model, adapter)?,
            None => Vec::new(),
        };
        let mut values: Vec<(Vec<usize>, Vec<f32>)> = self
            .inputs
            .iter()
            .map(|input| {
                let n = input.dims.iter().product();
                let v = match &input.base {
                    BaseValue::Zeros => vec![0f32; n],
                    BaseValue::Tensor(t) => t.clone(),
                };
                (input.dims.clone(), v)
            })
            .collect();
        let Some(adapter) = adapter else {
            return Ok(Factors(values));
        };
        for (slot_index, module, what) in placements {
            let slot = &self.slots[slot_index];
            let (inp, out) = (slot.in_features, slot.out_features);
            match what {
                What::LowRank(r) => {
                    let lora = &adapter.modules[module];
                    let a_at = slot.low_rank.expect("placements checked the low-rank slot");
                    let width = slot.rank.unwrap_or(0);
                    // Gemm multiplies its weight by alpha: the branch adds
                    // to the node's output, which already includes it.
                    let scale = lora.scale as f32;
                    let a_slot = &mut values[a_at].1;
                    // Aₛ[i, j] = A[j, i]
                    for j in 0..r {
                        for i in 0..inp {
                            a_slot[i * width + j] = lora.a[j * inp + i];
                        }
                    }
                    let b_slot = &mut values[a_at + 1].1;
                    // Bₛ[j, o] = s·B[o, j]
                    for o in 0..out {
                        for j in 0..r {
                            b_slot[j * out + o] = scale * lora.b[o * r + j];
                        }
                    }
                }
                What::Replace { .. } => {
                    // As the merge stores them: Gemm computes alpha·x·W +
                    // beta·b, so the module's tensors are divided by those.
                    let replacement = &adapter.replacements[module];
                    let (w_at, b_at) = slot.weight.expect("placements checked the weight slot");
                    if let Some((_, w)) = &replacement.weight {
                        let mut stored = to_layout(w, out, inp, slot.site.layout);
                        stored.iter_mut().for_each(|v| *v /= slot.site.alpha);
                        values[w_at].1 = stored;
                    }
                    if let (Some(b), Some(b_at)) = (&replacement.bias, b_at) {
                        let beta = slot.site.beta as f64;
                        values[b_at].1 = b.iter().map(|v| (*v as f64 / beta) as f32).collect();
                    }
                }
            }
        }
        Ok(Factors(values))
    }

    /// For each module of `adapter`: its slot.
    fn placements<'a>(
        &self,
        model: &OnnxModel,
        adapter: &'a Adapter,
    ) -> Result<Vec<(usize, &'a str, What)>, Unfit> {
        let dir = adapter.dir.display();
        let mut placed = Vec::new();
        for change in resolve(model, &self.index, adapter)? {
            let module = change.module;
            let Some(&slot) = self.by_site.get(&change.site) else {
                return Err(Unfit(format!(
                    "{dir}: module `{module}` has no slot (the slots were made for other layers)"
                )));
            };
            let s = &self.slots[slot];
            match change.what {
                What::LowRank(rank) if rank > s.rank.unwrap_or(0) => {
                    return Err(Unfit(format!(
                        "{dir}: module `{module}` has rank {rank}, its slot {}",
                        s.rank.unwrap_or(0)
                    )));
                }
                What::Replace { bias } if s.weight.is_none_or(|(_, b)| bias && b.is_none()) => {
                    return Err(Unfit(format!(
                        "{dir}: module `{module}` is replaced, but its layer has no weight slot{}",
                        if bias { " with a bias" } else { "" }
                    )));
                }
                _ => {}
            }
            placed.push((slot, module, change.what));
        }
        Ok(placed)
    }
}

#[derive(Debug, Clone, Copy)]
enum What {
    LowRank(usize),
    Replace { bias: bool },
}

struct Change<'a> {
    site: usize,
    module: &'a str,
    what: What,
}

/// Every module of `adapter` resolved to its linear site, refusing what a
/// slot cannot compute.
fn resolve<'a>(
    model: &OnnxModel,
    index: &LinearIndex,
    adapter: &'a Adapter,
) -> Result<Vec<Change<'a>>, Unfit> {
    let dir = adapter.dir.display();
    let initializers = crate::onnx::initializers_by_name(model.graph());
    let weight_of = |s: &LinearSite| -> Result<&TensorProto, Unfit> {
        initializers
            .get(s.weight.as_str())
            .copied()
            .ok_or_else(|| Unfit(format!("weight `{}` is not an initializer", s.weight)))
    };
    let mut found = Vec::with_capacity(adapter.modules.len() + adapter.replacements.len());
    let site_of = |module: &str| -> Result<usize, Unfit> {
        let Resolution::Found(site) = index.resolve(module) else {
            return Err(Unfit(format!(
                "{dir}: module `{module}` matches no single linear layer"
            )));
        };
        let s = &index.sites[site];
        let weight = weight_of(s)?;
        match model.float_type(weight) {
            Ok(FloatType::F32) => Ok(site),
            Ok(other) => Err(Unfit(format!(
                "{dir}: module `{module}`: weight `{}` is {other:?}; slots take f32 layers",
                s.weight
            ))),
            Err(e) => Err(Unfit(e.to_string())),
        }
    };
    for (module, lora) in &adapter.modules {
        if lora.magnitude.is_some() {
            return Err(Unfit(format!(
                "{dir}: module `{module}` is DoRA, whose row norms depend on the merged weight"
            )));
        }
        if lora.bias.is_some() {
            return Err(Unfit(format!("{dir}: module `{module}` has a lora_B bias")));
        }
        let site = site_of(module)?;
        let s = &index.sites[site];
        let weight = weight_of(s)?;
        let (out, inp) = logical_dims(weight, s.layout);
        if (out, inp) != (lora.out_features, lora.in_features)
            || lora.a.len() != lora.rank * inp
            || lora.b.len() != out * lora.rank
        {
            return Err(Unfit(format!(
                "{dir}: module `{module}` is [out {}, in {}] rank {}, but weight `{}` is out {out}, in {inp}",
                lora.out_features, lora.in_features, lora.rank, s.weight
            )));
        }
        found.push(Change {
            site,
            module,
            what: What::LowRank(lora.rank),
        });
    }
    for (module, replacement) in &adapter.replacements {
        let site = site_of(module)?;
        let s = &index.sites[site];
        if let Some((shape, values)) = &replacement.weight {
            let weight = weight_of(s)?;
            let (out, inp) = logical_dims(weight, s.layout);
            if shape.as_slice() != [out, inp] || values.len() != out * inp {
                return Err(Unfit(format!(
                    "{dir}: modules_to_save `{module}` is {shape:?}, but weight `{}` is [out {out}, in {inp}]",
                    s.weight
                )));
            }
        }
        found.push(Change {
            site,
            module,
            what: What::Replace {
                bias: replacement.bias.is_some(),
            },
        });
    }
    Ok(found)
}

fn initializer<'g>(index: &GraphIndex<'g>, name: &str) -> Result<&'g TensorProto, Unfit> {
    index
        .initializer(name)
        .ok_or_else(|| Unfit(format!("`{name}` is not an initializer")))
}

/// Points node `at`'s inputs named `from` at `to`.
fn rewire(proto: &mut ModelProto, at: usize, from: &str, to: &str) {
    for input in &mut proto_graph(proto).node[at].input {
        if input == from {
            *input = to.to_string();
        }
    }
}

/// `(out, in)` of a 2-D weight stored in `layout`.
fn logical_dims(weight: &TensorProto, layout: Layout) -> (usize, usize) {
    let d = |i: usize| weight.dims.get(i).copied().unwrap_or(0).max(0) as usize;
    match layout {
        Layout::InOut => (d(1), d(0)),
        Layout::OutIn => (d(0), d(1)),
    }
}

fn proto_graph(proto: &mut ModelProto) -> &mut crate::onnx::proto::GraphProto {
    // OnnxModel::load refuses a model without a graph.
    proto.graph.get_or_insert_with(Default::default)
}
