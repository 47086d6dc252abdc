//! f32 → f16 conversion that keeps precision-sensitive subgraphs in f32.
//!
//! Every float initializer and value becomes f16, except:
//!
//! * normalization: `LayerNormalization` (and its relatives) and RMSNorm /
//!   LayerNorm written out as `Pow(x, 2) → ReduceMean → Add(eps) → Sqrt →
//!   Div|Reciprocal → Mul|Div(x, …) → Mul(weight) [→ Add(bias)]`: squaring
//!   an activation above 256 overflows f16 (max 65504);
//! * `Softmax`/`LogSoftmax`: exponentials and their sum;
//! * nodes the user names with `--keep-f32` (an op type, or a regular
//!   expression over node names and module paths), and nodes outside the
//!   module [`Selection`].
//!
//! `Cast` nodes are inserted wherever an f16 value meets an f32 consumer or
//! the other way round; with `keep_io_types` the graph's inputs and outputs
//! stay f32. Initializer values beyond ±65504 are clamped (and counted);
//! nonzero values that round to zero are counted.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use half::f16;
use regex::Regex;

use super::elem_types::{infer_elem_types, set_value_info_type, value_info_type};
use super::{KeptNode, QuantizeReport, Selection, Selector, TensorReport};
use crate::error::{Error, Result};
use crate::onnx::linear::node_module_paths;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::onnx::{
    FloatType, GraphIndex, NameAllocator, NodeExt, OnnxModel, build, initializer_positions,
    read_counts, runtime_inputs,
};

const FLOAT: i32 = DataType::Float as i32;
const FLOAT16: i32 = DataType::Float16 as i32;

/// Options of fp16 conversion ([`super::Mode::Fp16`]).
#[derive(Debug, Clone)]
pub struct Fp16Options {
    /// Keep the graph's f32 inputs and outputs (with Casts inside).
    pub keep_io_types: bool,
    /// Keep normalization and Softmax in f32 (default on).
    pub keep_sensitive: bool,
    /// More nodes to keep in f32: op types (`Softmax`), or regular
    /// expressions over node names and module paths.
    pub keep_f32: Vec<String>,
    /// Which modules to convert; nodes outside stay f32.
    pub selection: Selection,
}

impl Default for Fp16Options {
    fn default() -> Self {
        Fp16Options {
            keep_io_types: true,
            keep_sensitive: true,
            keep_f32: Vec::new(),
            selection: Selection::default(),
        }
    }
}

/// Ops computed in f32 by default.
pub const SENSITIVE_OPS: &[&str] = &[
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "RMSNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "LogSoftmax",
];

/// Inputs that must stay f32 whatever the node computes in.
fn forced_f32(op: &str, slot: usize) -> bool {
    matches!((op, slot), ("Resize", 1) | ("Resize", 2) | ("Upsample", 1))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Prec {
    F32,
    F16,
}

/// Converts `graph` in place (its initializers must be inline).
pub(crate) fn convert(
    model: &OnnxModel,
    graph: &mut GraphProto,
    options: &Fp16Options,
    report: &mut QuantizeReport,
) -> Result<()> {
    super::refuse_subgraphs(model, graph, "fp16 conversion")?;
    if let Some(i) = graph
        .input
        .iter()
        .find(|i| value_info_type(i) == Some(FLOAT16))
    {
        return Err(Error::field(
            model.path(),
            format!("graph input `{}`", i.name()),
            "is already float16; fp16 conversion expects an f32 model",
        ));
    }
    let types = infer_elem_types(graph);
    let is_float = |v: &str| types.get(v) == Some(&FLOAT);

    // 1. Nodes that stay f32, and why.
    let keep = kept_nodes(model, graph, options)?;
    for (&i, reason) in &keep {
        let n = &graph.node[i];
        report.kept_f32.push(KeptNode {
            node: n.name().to_string(),
            op: n.op_type().to_string(),
            reason: reason.clone(),
        });
    }
    report.kept_f32.sort_by(|a, b| a.node.cmp(&b.node));
    let node_prec = |i: usize| {
        if keep.contains_key(&i) {
            Prec::F32
        } else {
            Prec::F16
        }
    };

    // 2. What each input slot wants.
    let want = |i: usize, slot: usize, node: &NodeProto| -> Option<Prec> {
        if node.op_type() == "Cast" {
            return None; // Cast reads any type.
        }
        if forced_f32(node.op_type(), slot) {
            return Some(Prec::F32);
        }
        Some(node_prec(i))
    };
    let mut consumers: HashMap<&str, Vec<Prec>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for (slot, input) in node.input.iter().enumerate() {
            if let Some(p) = want(i, slot, node) {
                consumers.entry(input.as_str()).or_default().push(p);
            }
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    // A constant goes to f16 when anything reads it in f16 (or nothing reads it).
    let const_prec = |name: &str| -> Prec {
        match consumers.get(name) {
            Some(c) if !c.is_empty() && !c.contains(&Prec::F16) => Prec::F32,
            _ if graph_outputs.contains(name) && options.keep_io_types => Prec::F32,
            _ => Prec::F16,
        }
    };

    // 3. The precision of every float value after conversion.
    let mut prec: HashMap<String, Prec> = HashMap::new();
    for input in runtime_inputs(graph) {
        if is_float(input.name()) {
            let p = if options.keep_io_types {
                Prec::F32
            } else {
                Prec::F16
            };
            prec.insert(input.name().to_string(), p);
        }
    }
    for t in &graph.initializer {
        if t.data_type() == FLOAT {
            prec.insert(t.name().to_string(), const_prec(t.name()));
        }
    }
    let mut constant_f16 = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate() {
        let p = if node.op_type() == "Constant" {
            let p = node
                .output
                .first()
                .map(|o| const_prec(o))
                .unwrap_or(Prec::F32);
            constant_f16[i] = p == Prec::F16;
            p
        } else {
            node_prec(i)
        };
        for out in &node.output {
            if is_float(out) {
                prec.insert(out.clone(), p);
            }
        }
    }

    // 4. Rewrite the nodes: Cast ops and attributes to f16, Casts where
    //    precisions meet.
    let mut names = NameAllocator::new(graph);
    let mut casts: HashMap<(String, Prec), String> = HashMap::new();
    let old_nodes = std::mem::take(&mut graph.node);
    let mut nodes: Vec<NodeProto> = Vec::with_capacity(old_nodes.len() + 16);
    for (i, mut node) in old_nodes.into_iter().enumerate() {
        let np = node_prec(i);
        for slot in 0..node.input.len() {
            let value = node.input[slot].clone();
            let Some(w) = want(i, slot, &node) else {
                continue;
            };
            let Some(&have) = prec.get(&value) else {
                continue;
            };
            if have == w {
                continue;
            }
            let name = casts
                .entry((value.clone(), w))
                .or_insert_with(|| {
                    let suffix = if w == Prec::F16 { "fp16" } else { "fp32" };
                    let out = names.fresh(&format!("{value}_{suffix}"));
                    let cast_name = names.fresh(&format!("{value}_cast_{suffix}"));
                    let mut cast = build::node(&cast_name, "Cast", &[&value], &[&out]);
                    let to = if w == Prec::F16 { FLOAT16 } else { FLOAT };
                    cast.attribute.push(build::attr_int("to", to as i64));
                    nodes.push(cast);
                    out
                })
                .clone();
            node.input[slot] = name;
        }
        match node.op_type() {
            "Cast" if np == Prec::F16 => {
                if let Some(to) = node.attr_mut("to").filter(|a| a.i == Some(FLOAT as i64)) {
                    to.i = Some(FLOAT16 as i64);
                }
            }
            "ConstantOfShape" if np == Prec::F16 => {
                for a in node.attribute.iter_mut() {
                    if let Some(t) = a.t.as_mut().filter(|t| t.data_type() == FLOAT) {
                        convert_tensor(model, t, report)?;
                    }
                }
            }
            "Constant" if constant_f16[i] => {
                for a in node.attribute.iter_mut() {
                    match a.name() {
                        "value" => {
                            if let Some(t) = a.t.as_mut().filter(|t| t.data_type() == FLOAT) {
                                convert_tensor(model, t, report)?;
                            }
                        }
                        "value_float" | "value_floats" => {
                            // Rewrite as a tensor so it can carry f16.
                            let values: Vec<f32> = if a.name() == "value_float" {
                                a.f.into_iter().collect()
                            } else {
                                a.floats.clone()
                            };
                            let dims: Vec<i64> = if a.name() == "value_float" {
                                vec![]
                            } else {
                                vec![values.len() as i64]
                            };
                            let mut t =
                                build::tensor_raw("", FLOAT, &dims, FloatType::F32.encode(&values));
                            convert_tensor(model, &mut t, report)?;
                            *a = build::attr_tensor("value", t);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        nodes.push(node);
    }
    graph.node = nodes;

    // 5. Graph outputs computed in f16.
    let mut tail = Vec::new();
    for output in graph.output.iter_mut() {
        let name = output.name().to_string();
        if prec.get(&name) != Some(&Prec::F16) {
            continue;
        }
        if !options.keep_io_types {
            set_value_info_type(output, FLOAT16);
            continue;
        }
        let inner = names.fresh(&format!("{name}_fp16"));
        for node in graph.node.iter_mut() {
            for v in node.output.iter_mut().chain(node.input.iter_mut()) {
                if *v == name {
                    *v = inner.clone();
                }
            }
        }
        for t in graph.initializer.iter_mut().filter(|t| t.name() == name) {
            t.name = Some(inner.clone());
        }
        prec.insert(inner.clone(), Prec::F16);
        prec.insert(name.clone(), Prec::F32);
        let cast_name = names.fresh(&format!("{name}_cast_fp32"));
        let mut cast = build::node(&cast_name, "Cast", &[&inner], &[&name]);
        cast.attribute.push(build::attr_int("to", FLOAT as i64));
        tail.push(cast);
    }
    graph.node.extend(tail);
    if !options.keep_io_types {
        for input in graph.input.iter_mut() {
            if prec.get(input.name()) == Some(&Prec::F16) {
                set_value_info_type(input, FLOAT16);
            }
        }
    }

    // 6. f16 Gemm → MatMul + Add (tract 0.23 cannot type an f16 Gemm).
    lower_gemms(model, graph, &mut prec, &mut names)?;
    // Weights only the Gemms read are now unused.
    let reads = read_counts(graph);
    let dead: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !reads.contains_key(t.name()))
        .map(|t| t.name().to_string())
        .collect();
    graph.initializer.retain(|t| !dead.contains(t.name()));
    graph.input.retain(|i| !dead.contains(i.name()));

    // 7. Initializers and value_info.
    for t in graph.initializer.iter_mut() {
        if t.data_type() == FLOAT && prec.get(t.name()) == Some(&Prec::F16) {
            convert_tensor(model, t, report)?;
        }
    }
    for v in graph.value_info.iter_mut() {
        if value_info_type(v) == Some(FLOAT) && prec.get(v.name()) == Some(&Prec::F16) {
            set_value_info_type(v, FLOAT16);
        }
    }
    Ok(())
}

/// Rewrites every Gemm computing in f16 as `MatMul` (+ `Add` of the bias):
/// tract 0.23.9 fails to type an f16 Gemm ("expected F16 got F32"), while
/// MatMul and Add run. Transposes are folded into initializer weights
/// (or become `Transpose` nodes); `alpha`/`beta` are folded into the
/// weight and bias initializers when they are not 1.
fn lower_gemms(
    model: &OnnxModel,
    graph: &mut GraphProto,
    prec: &mut HashMap<String, Prec>,
    names: &mut NameAllocator,
) -> Result<()> {
    // The loop only appends initializers, so these positions stay valid.
    let positions = initializer_positions(graph);
    let mut out: Vec<NodeProto> = Vec::with_capacity(graph.node.len());
    let nodes = std::mem::take(&mut graph.node);
    for node in nodes {
        let f16_out = node.output.first().and_then(|o| prec.get(o)) == Some(&Prec::F16);
        if node.op_type() != "Gemm" || !f16_out || node.input.len() < 2 {
            out.push(node);
            continue;
        }
        // Gemm's defaults: no transposes, alpha = beta = 1.
        let (trans_a, trans_b, alpha, beta) = (
            node.attr_int("transA").unwrap_or(0),
            node.attr_int("transB").unwrap_or(0),
            node.attr_float("alpha").unwrap_or(1.0),
            node.attr_float("beta").unwrap_or(1.0),
        );
        let base = if node.name().is_empty() {
            node.output[0].clone()
        } else {
            node.name().to_string()
        };
        let mut a = node.input[0].clone();
        let mut b = node.input[1].clone();
        let mut c = node.input.get(2).filter(|c| !c.is_empty()).cloned();
        let b_init = positions
            .get(&b)
            .copied()
            .filter(|&i| graph.initializer[i].dims.len() == 2);
        let c_init = c.as_ref().and_then(|c| positions.get(c).copied());
        if (alpha != 1.0 && b_init.is_none()) || (beta != 1.0 && c.is_some() && c_init.is_none()) {
            out.push(node); // Cannot fold the scalars: leave the Gemm.
            continue;
        }
        if trans_a == 1 {
            let t = names.fresh(&format!("{a}_transposed"));
            let mut tr = build::node(
                &names.fresh(&format!("{base}_transpose_a")),
                "Transpose",
                &[&a],
                &[&t],
            );
            tr.attribute.push(build::attr_ints("perm", &[1, 0]));
            out.push(tr);
            a = t;
        }
        if let Some(bi) = b_init {
            // A fresh, rewritten copy: other readers keep the original.
            let src = graph.initializer[bi].clone();
            let (_, mut values) = model.float_values(&src)?;
            let mut dims = src.dims.clone();
            if trans_b == 1 {
                let (r, k) = (dims[0] as usize, dims[1] as usize);
                let mut t = vec![0f32; values.len()];
                for i in 0..r {
                    for j in 0..k {
                        t[j * r + i] = values[i * k + j];
                    }
                }
                values = t;
                dims = vec![dims[1], dims[0]];
            }
            if alpha != 1.0 {
                values.iter_mut().for_each(|v| *v *= alpha);
            }
            if trans_b == 1 || alpha != 1.0 {
                let name = names.fresh(&format!("{b}_matmul"));
                let mut t = build::tensor_raw(&name, src.data_type(), &dims, Vec::new());
                let ty = FloatType::from_onnx(src.data_type()).unwrap_or(FloatType::F32);
                t.raw_data = Some(Bytes::from(ty.encode(&values)));
                graph.initializer.push(t);
                if let Some(p) = prec.get(src.name()).copied() {
                    prec.insert(name.clone(), p);
                }
                b = name;
            }
        } else if trans_b == 1 {
            let t = names.fresh(&format!("{b}_transposed"));
            let mut tr = build::node(
                &names.fresh(&format!("{base}_transpose_b")),
                "Transpose",
                &[&b],
                &[&t],
            );
            tr.attribute.push(build::attr_ints("perm", &[1, 0]));
            out.push(tr);
            b = t;
        }
        if let (Some(ci), true) = (c_init, beta != 1.0) {
            let src = graph.initializer[ci].clone();
            let (ty, values) = model.float_values(&src)?;
            let values: Vec<f32> = values.iter().map(|v| v * beta).collect();
            let name = names.fresh(&format!("{}_scaled", src.name()));
            let mut t = build::tensor_raw(&name, src.data_type(), &src.dims, Vec::new());
            t.raw_data = Some(Bytes::from(ty.encode(&values)));
            graph.initializer.push(t);
            if let Some(p) = prec.get(src.name()).copied() {
                prec.insert(name.clone(), p);
            }
            c = Some(name);
        }
        let y = node.output[0].clone();
        let mm_out = if c.is_some() {
            names.fresh(&format!("{y}_matmul"))
        } else {
            y.clone()
        };
        let mut mm = build::node(&base, "MatMul", &[&a, &b], &[&mm_out]);
        mm.metadata_props = node.metadata_props.clone();
        out.push(mm);
        if let Some(c) = c {
            let mut add = build::node(
                &names.fresh(&format!("{base}_bias")),
                "Add",
                &[&mm_out, &c],
                &[&y],
            );
            add.metadata_props = node.metadata_props.clone();
            out.push(add);
        }
    }
    graph.node = out;
    Ok(())
}

/// Converts one inline f32 tensor to f16, clamping to ±65504.
fn convert_tensor(
    model: &OnnxModel,
    t: &mut TensorProto,
    report: &mut QuantizeReport,
) -> Result<()> {
    let (_, values) = model.float_values(t)?;
    let mut clamped = 0u64;
    let mut flushed = 0u64;
    let max = f16::MAX.to_f32();
    let mut out = Vec::with_capacity(values.len() * 2);
    for v in values {
        let c = if v.is_nan() {
            v
        } else if v > max {
            clamped += 1;
            max
        } else if v < -max {
            clamped += 1;
            -max
        } else {
            v
        };
        let h = f16::from_f32(c);
        if c != 0.0 && h.to_f32() == 0.0 {
            flushed += 1;
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    t.float_data.clear();
    t.int32_data.clear();
    t.raw_data = Some(Bytes::from(out));
    t.data_type = Some(FLOAT16);
    report.values_clamped += clamped;
    report.values_flushed_to_zero += flushed;
    report.tensors.push(TensorReport {
        name: t.name().to_string(),
        module: None,
        op: "-".into(),
        shape: t.dims.clone(),
        from: "float32".into(),
        to: "float16".into(),
        axis: None,
        clamped,
    });
    Ok(())
}

/// Nodes to keep in f32, with the reason for each.
fn kept_nodes(
    model: &OnnxModel,
    graph: &GraphProto,
    options: &Fp16Options,
) -> Result<HashMap<usize, String>> {
    let mut keep: HashMap<usize, String> = HashMap::new();
    if options.keep_sensitive {
        for (i, n) in graph.node.iter().enumerate() {
            if SENSITIVE_OPS.contains(&n.op_type()) {
                keep.insert(i, format!("{} (precision-sensitive op)", n.op_type()));
            }
        }
        for region in norm_patterns(graph) {
            for i in region {
                keep.entry(i)
                    .or_insert_with(|| "normalization pattern (Pow/ReduceMean/Sqrt/Div)".into());
            }
        }
    }
    for pattern in &options.keep_f32 {
        let by_op: Vec<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type() == pattern)
            .map(|(i, _)| i)
            .collect();
        let hits = if !by_op.is_empty() {
            by_op
        } else {
            let re = Regex::new(pattern).map_err(|e| {
                Error::field(
                    model.path(),
                    format!("--keep-f32 `{pattern}`"),
                    format!(
                        "is neither an op type of the graph nor a valid regular expression: {e}"
                    ),
                )
            })?;
            graph
                .node
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    re.is_match(n.name()) || node_module_paths(n).iter().any(|p| re.is_match(p))
                })
                .map(|(i, _)| i)
                .collect()
        };
        if hits.is_empty() {
            return Err(Error::field(
                model.path(),
                format!("--keep-f32 `{pattern}`"),
                "matches no op type, node name or module path of the graph",
            ));
        }
        for i in hits {
            keep.entry(i)
                .or_insert_with(|| format!("--keep-f32 {pattern}"));
        }
    }
    let sel = &options.selection;
    if !sel.modules.is_empty() || !sel.exclude.is_empty() {
        let mut selector = Selector::new(sel, model.path())?;
        let mut known = Vec::new();
        for (i, n) in graph.node.iter().enumerate() {
            let paths = node_module_paths(n);
            known.extend(paths.iter().cloned());
            if !selector.selects(paths.iter().map(String::as_str)) {
                keep.entry(i)
                    .or_insert_with(|| "outside the module selection".into());
            }
        }
        selector.check_all_matched(model.path(), &known)?;
    }
    Ok(keep)
}

/// RMSNorm and LayerNorm written out in primitive ops: the node indices of
/// each occurrence.
fn norm_patterns(graph: &GraphProto) -> Vec<Vec<usize>> {
    let index = GraphIndex::new(graph);
    // Initializers and Constant outputs: the exponent, epsilon and affine
    // weights of the pattern are constants, its activations are not.
    let is_constant = |v: &str| {
        index.is_initializer(v)
            || index
                .producer(v)
                .is_some_and(|n| graph.node[n].op_type() == "Constant")
    };
    let mut regions = Vec::new();
    for (p, pow) in graph.node.iter().enumerate() {
        if pow.op_type() != "Pow" || pow.input.len() < 2 || !is_constant(&pow.input[1]) {
            continue;
        }
        let x = pow.input[0].as_str();
        let mut region = vec![p];
        // LayerNorm: x = Sub(a, ReduceMean(a)); the normalize step reads x.
        let mut roots: Vec<&str> = vec![x];
        if let Some(s) = index.producer(x)
            && graph.node[s].op_type() == "Sub"
            && let Some(m) = graph.node[s].input.get(1).and_then(|v| index.producer(v))
            && graph.node[m].op_type() == "ReduceMean"
            && graph.node[m].input.first() == graph.node[s].input.first()
        {
            region.push(s);
            region.push(m);
            roots.push(graph.node[s].input[0].as_str());
        }
        // Walk the statistics chain to the node that reads x again.
        let mut cur = p;
        let mut normalize = None;
        for _ in 0..8 {
            let Some(out) = graph.node[cur].output.first() else {
                break;
            };
            let Some(next) = index.only_consumer(out) else {
                break;
            };
            let n = &graph.node[next];
            if n.input.iter().any(|v| roots.contains(&v.as_str()))
                && matches!(n.op_type(), "Div" | "Mul")
            {
                region.push(next);
                normalize = Some(next);
                break;
            }
            if !matches!(
                n.op_type(),
                "ReduceMean" | "Add" | "Sqrt" | "Reciprocal" | "Div" | "Cast"
            ) {
                break;
            }
            region.push(next);
            cur = next;
        }
        let Some(mut cur) = normalize else { continue };
        if !region
            .iter()
            .any(|&i| graph.node[i].op_type() == "ReduceMean")
        {
            continue;
        }
        // The affine step: Mul(weight) [, Add(bias)], maybe behind a Cast.
        for _ in 0..3 {
            let Some(out) = graph.node[cur].output.first() else {
                break;
            };
            let Some(next) = index.only_consumer(out) else {
                break;
            };
            let n = &graph.node[next];
            let affine = matches!(n.op_type(), "Mul" | "Add")
                && n.input.iter().any(|v| v != out && is_constant(v));
            if !(affine || n.op_type() == "Cast") {
                break;
            }
            region.push(next);
            cur = next;
        }
        regions.push(region);
    }
    regions
}
