//! The dynamic form (`--int8-dynamic`), node for node what ONNX Runtime's
//! `quantize_dynamic` writes:
//!
//! * `MatMul(x, W)` → `DynamicQuantizeLinear(x)` (once per activation) →
//!   `MatMulInteger(x_q, W_q, x_zp, W_zp)` → `Cast` to f32 →
//!   `Mul(·, x_scale · W_scale)`, with `W` symmetric int8 (per tensor, or
//!   per output column);
//! * an embedding `Gather(E, ids)` → `Gather(E_uint8, ids)` →
//!   `DequantizeLinear`, with `E` asymmetric uint8 per tensor.
//!
//! The pass runs in named steps: [`find_weights`] lists what the form can
//! quantize, [`choose`] applies the user's selection, [`quantize_matmul_weight`]
//! and [`quantize_table`] replace each chosen initializer, and
//! [`rewrite_nodes`] rebuilds the node list around them.

use std::collections::HashMap;

use super::numerics::{quantize_asymmetric_u8, quantize_symmetric};
use super::select::{Candidate, choose};
use super::weights::{Quantized, f32_tensor, int8_tensor, take_weight};
use super::{FLOAT, Int8Options, UINT8};
use crate::error::{Error, Result};
use crate::onnx::linear::{Layout, LinearIndex};
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::{GraphIndex, NameAllocator, OnnxModel, build};
use crate::quantize::elem_types::infer_elem_types;
use crate::quantize::{QuantizeReport, Skipped, TensorReport, refuse_subgraphs, require_opset};

/// `quantize_dynamic`'s graph (see the module docs).
///
/// # Errors
/// [`Error::Field`] for a graph with control flow, a selected weight that is
/// not float32, a selection pattern matching nothing, an opset below 11
/// (`DynamicQuantizeLinear`), or a rewritten node without an output.
pub(crate) fn quantize_dynamic(
    model: &OnnxModel,
    graph: &mut GraphProto,
    options: &Int8Options,
    report: &mut QuantizeReport,
) -> Result<()> {
    refuse_subgraphs(model, graph, "int8-dynamic quantization")?;
    let types = infer_elem_types(graph);
    let index = GraphIndex::new(graph);
    let found = find_weights(&index, &types, report);
    let chosen = choose(model, &index, &found.candidates, options, report)?;
    if !chosen.is_empty() {
        require_opset(model, 11, "DynamicQuantizeLinear")?;
        report.warnings.push(
            "int8-dynamic writes DynamicQuantizeLinear + MatMulInteger: TensorRT's ONNX parser rejects both; \
             use --int8 (QDQ) for TensorRT. This form is for CPU runtimes (ONNX Runtime, tract)."
                .into(),
        );
    }
    let mut names = NameAllocator::new(graph);
    let mut rewrites = Rewrites::default();
    let mut dequantized = Vec::new();
    for &c in &chosen {
        // `found` lists the readers of every candidate it made; a tied
        // weight has readers of both kinds, and all of them read the one
        // quantized form made for the first (see `find_weights`).
        let gathers = readers(&found.gathers, &c.weight);
        let matmuls = readers(&found.matmuls, &c.weight);
        // Readers the form does not rewrite (the Transpose or Gemm of a
        // tied LM head, a graph output), looked up before any rewrite.
        let others = other_readers(graph, &c.weight, gathers, matmuls);
        let (dims, values) = take_weight(model, graph, &c.weight)?;
        let q = if c.op == "Gather" {
            quantize_table(graph, &mut names, c, dims, &values, report)
        } else {
            // A Gather's or other reader's DequantizeLinear takes one scale
            // for the tensor (opset 11 has no `axis`), so a weight they read
            // stays per tensor.
            let per_channel = options.per_channel && gathers.is_empty() && others.is_empty();
            quantize_matmul_weight(graph, &mut names, c, dims, &values, per_channel, report)
        };
        if !gathers.is_empty() && !matmuls.is_empty() {
            let downgraded = options.per_channel && c.op != "Gather";
            note(
                report,
                &format!(
                    "shared by {} Gather and {} MatMul node(s): all read this one quantized form, as quantize_dynamic shares it{}",
                    gathers.len(),
                    matmuls.len(),
                    if downgraded {
                        " (per tensor despite --per-channel: the Gather's DequantizeLinear takes one scale)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if !others.is_empty() {
            note(
                report,
                &format!(
                    "also read by {}: a DequantizeLinear of the quantized form now produces `{}` for {}, as quantize_dynamic dequantizes an initializer it quantized for readers it does not quantize",
                    others.join(", "),
                    c.weight,
                    if others.len() == 1 { "it" } else { "them" }
                ),
            );
            dequantized.push((c.weight.clone(), q.clone()));
        }
        for &g in gathers {
            rewrites.gathers.insert(g, q.clone());
        }
        for &m in matmuls {
            rewrites.matmuls.insert(m, q.clone());
        }
    }
    rewrite_nodes(model, graph, &rewrites, &mut names)?;
    // The DequantizeLinear nodes read initializers only: placed first, they
    // keep the node list in topological order. Their output keeps the
    // weight's name, so its other readers are left as they are.
    let mut nodes: Vec<NodeProto> = dequantized
        .iter()
        .map(|(weight, q)| {
            build::node(
                &names.fresh(&format!("{weight}_DequantizeLinear")),
                "DequantizeLinear",
                &[&q.values, &q.scale, &q.zero_point],
                &[weight],
            )
        })
        .collect();
    nodes.append(&mut graph.node);
    graph.node = nodes;
    Ok(())
}

/// The nodes (as "Op `name`") reading `weight` other than the Gather and
/// MatMul nodes the form rewrites, and `a graph output` when the graph
/// returns `weight` itself.
fn other_readers(
    graph: &GraphProto,
    weight: &str,
    gathers: &[usize],
    matmuls: &[usize],
) -> Vec<String> {
    let mut others: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            !gathers.contains(i) && !matmuls.contains(i) && n.input.iter().any(|x| x == weight)
        })
        .map(|(_, n)| format!("{} `{}`", n.op_type(), n.name()))
        .collect();
    if graph.output.iter().any(|o| o.name() == weight) {
        others.push("a graph output".into());
    }
    others
}

/// Appends `text` to the report entry of the weight quantized last.
fn note(report: &mut QuantizeReport, text: &str) {
    if let Some(t) = report.tensors.last_mut() {
        t.to.push_str("; ");
        t.to.push_str(text);
    }
}

/// What the dynamic form can quantize, and the nodes reading each weight.
struct Found {
    candidates: Vec<Candidate>,
    /// MatMul weight → the MatMul nodes reading it.
    matmuls: HashMap<String, Vec<usize>>,
    /// Embedding table → the Gather nodes reading it.
    gathers: HashMap<String, Vec<usize>>,
}

/// The nodes in `kind` (`Found::matmuls` or `Found::gathers`) reading `weight`.
fn readers<'f>(kind: &'f HashMap<String, Vec<usize>>, weight: &str) -> &'f [usize] {
    kind.get(weight).map_or(&[], Vec::as_slice)
}

/// The quantized initializers each rewritten node reads, by node index.
#[derive(Default)]
struct Rewrites {
    matmuls: HashMap<usize, Quantized>,
    gathers: HashMap<usize, Quantized>,
}

/// Lists the weights the form can quantize: `MatMul(x, W)` with an f32 `x`
/// and an `[in, out]` initializer `W` (other linear layers are recorded as
/// skipped, as `quantize_dynamic` leaves them), then f32 embedding tables
/// read by `Gather`.
fn find_weights(
    index: &GraphIndex,
    types: &HashMap<String, i32>,
    report: &mut QuantizeReport,
) -> Found {
    let graph = index.graph();
    let mut found = Found {
        candidates: Vec::new(),
        matmuls: HashMap::new(),
        gathers: HashMap::new(),
    };
    for site in &LinearIndex::from_index(index).sites {
        let plain =
            site.op == "MatMul" && site.reader == site.linear && site.layout == Layout::InOut;
        let x_float = graph.node[site.linear]
            .input
            .first()
            .is_some_and(|x| types.get(x) == Some(&FLOAT));
        if !plain || !x_float {
            report.skipped.push(Skipped {
                weight: site.weight.clone(),
                module: site.paths.iter().max_by_key(|p| p.len()).cloned(),
                reason: format!(
                    "{} node `{}`: int8-dynamic quantizes MatMul(x, W) with an f32 x and an initializer W, as quantize_dynamic does",
                    site.op, site.node_name
                ),
            });
            continue;
        }
        if !found.matmuls.contains_key(&site.weight) {
            found.candidates.push(Candidate {
                weight: site.weight.clone(),
                axis: 1,
                op: "MatMul".into(),
                paths: site.paths.iter().cloned().collect(),
            });
        }
        found
            .matmuls
            .entry(site.weight.clone())
            .or_default()
            .push(site.linear);
    }
    // Embedding tables: Gather on the uint8 table, DequantizeLinear after.
    for (i, node) in graph.node.iter().enumerate() {
        let Some(table) = node.input.first() else {
            continue;
        };
        let float_table = index
            .initializer(table)
            .is_some_and(|t| t.data_type() == FLOAT);
        if node.op_type() != "Gather" || !float_table {
            continue;
        }
        if !found.gathers.contains_key(table) {
            if found.matmuls.contains_key(table) {
                tie(&mut found, node, table, i);
            } else {
                found.candidates.push(Candidate::read_by(node, table, 0));
            }
        }
        found.gathers.entry(table.clone()).or_default().push(i);
    }
    found
}

/// A table read by a `Gather` (node `gather`, index `i`, its first Gather)
/// and by plain MatMuls: a tied embedding / LM head. `quantize_dynamic`
/// quantizes an initializer once, for its first reader in node order
/// (uint8 asymmetric for a Gather, int8 symmetric for a MatMul), and every
/// later reader reads that form; the candidate takes that reader's op. It
/// keeps its place in the list (names are drawn in candidate order, so
/// other weights' names do not move) and is known by both readers' module
/// paths, so `--modules`/`--exclude-modules` naming either one select or
/// leave the shared tensor.
fn tie(found: &mut Found, gather: &NodeProto, table: &str, i: usize) {
    let first_matmul = found.matmuls[table].iter().copied().min();
    let Some(c) = found.candidates.iter_mut().find(|c| c.weight == table) else {
        return;
    };
    let g = Candidate::read_by(gather, table, 0);
    for p in g.paths {
        if !c.paths.contains(&p) {
            c.paths.push(p);
        }
    }
    if first_matmul.is_none_or(|m| i < m) {
        c.op = g.op;
        c.axis = g.axis;
    }
}

/// Replaces a MatMul weight with its symmetric int8 form (per tensor, or
/// per output column with `per_channel`) and reports it.
fn quantize_matmul_weight(
    graph: &mut GraphProto,
    names: &mut NameAllocator,
    c: &Candidate,
    dims: Vec<i64>,
    values: &[f32],
    per_channel: bool,
    report: &mut QuantizeReport,
) -> Quantized {
    let weight = &c.weight;
    let axis = per_channel.then_some(1);
    let (q, scales) = quantize_symmetric(values, &dims, axis);
    let quantized = Quantized {
        values: names.fresh(&format!("{weight}_quantized")),
        scale: names.fresh(&format!("{weight}_scale")),
        zero_point: names.fresh(&format!("{weight}_zero_point")),
    };
    // One scale is a scalar, as quantize_dynamic writes it.
    let sdims: Vec<i64> = if per_channel {
        vec![scales.len() as i64]
    } else {
        vec![]
    };
    graph
        .initializer
        .push(int8_tensor(&quantized.values, &dims, &q));
    graph
        .initializer
        .push(f32_tensor(&quantized.scale, &sdims, &scales));
    graph.initializer.push(int8_tensor(
        &quantized.zero_point,
        &sdims,
        &vec![0i8; scales.len()],
    ));
    report.tensors.push(TensorReport {
        name: weight.clone(),
        module: c.module(),
        op: "MatMul".into(),
        shape: dims,
        from: "float32".into(),
        to: format!(
            "int8 (MatMulInteger, {}, symmetric)",
            if per_channel {
                "per-channel"
            } else {
                "per-tensor"
            }
        ),
        axis: axis.map(|a| a as i64),
        clamped: 0,
    });
    quantized
}

/// Replaces an embedding table with its asymmetric uint8 form (one scale
/// and zero point for the tensor) and reports it.
fn quantize_table(
    graph: &mut GraphProto,
    names: &mut NameAllocator,
    c: &Candidate,
    dims: Vec<i64>,
    values: &[f32],
    report: &mut QuantizeReport,
) -> Quantized {
    let weight = &c.weight;
    let (q, scale, zp) = quantize_asymmetric_u8(values);
    let quantized = Quantized {
        values: names.fresh(&format!("{weight}_quantized")),
        scale: names.fresh(&format!("{weight}_scale")),
        zero_point: names.fresh(&format!("{weight}_zero_point")),
    };
    graph
        .initializer
        .push(build::tensor_raw(&quantized.values, UINT8, &dims, q));
    graph
        .initializer
        .push(f32_tensor(&quantized.scale, &[], &[scale]));
    graph.initializer.push(build::tensor_raw(
        &quantized.zero_point,
        UINT8,
        &[],
        vec![zp],
    ));
    report.tensors.push(TensorReport {
        name: weight.clone(),
        module: c.module(),
        op: c.op.clone(),
        shape: dims,
        from: "float32".into(),
        to: "uint8 (Gather + DequantizeLinear, per-tensor, asymmetric)".into(),
        axis: None,
        clamped: 0,
    });
    quantized
}

/// Rebuilds the node list: each rewritten Gather reads its uint8 table and
/// feeds a `DequantizeLinear`; each rewritten MatMul becomes the integer
/// chain; every other node stays as it is, in order.
///
/// # Errors
/// [`Error::Field`] for a rewritten node without an output.
fn rewrite_nodes(
    model: &OnnxModel,
    graph: &mut GraphProto,
    rewrites: &Rewrites,
    names: &mut NameAllocator,
) -> Result<()> {
    // x → DynamicQuantizeLinear once per activation, at its first use.
    let mut activations: HashMap<String, Quantized> = HashMap::new();
    let old = std::mem::take(&mut graph.node);
    let mut nodes: Vec<NodeProto> = Vec::with_capacity(old.len() + rewrites.matmuls.len() * 5);
    for (i, node) in old.into_iter().enumerate() {
        let table = rewrites.gathers.get(&i);
        let weight = rewrites.matmuls.get(&i);
        if table.is_none() && weight.is_none() {
            nodes.push(node);
            continue;
        }
        let Some(y) = node.output.first().cloned() else {
            return Err(Error::field(
                model.path(),
                format!("node `{}`", node.name()),
                format!("is a {} without an output", node.op_type()),
            ));
        };
        if let Some(table) = table {
            gather_dequantized(node, &y, table, names, &mut nodes);
        } else if let Some(weight) = weight {
            matmul_integer(&node, &y, weight, &mut activations, names, &mut nodes);
        }
    }
    graph.node = nodes;
    Ok(())
}

/// `Gather(E, ids) → y` becomes `Gather(E_quantized, ids) → y_quantized →
/// DequantizeLinear → y`.
fn gather_dequantized(
    mut node: NodeProto,
    y: &str,
    table: &Quantized,
    names: &mut NameAllocator,
    nodes: &mut Vec<NodeProto>,
) {
    let yq = names.fresh(&format!("{y}_quantized"));
    node.input[0] = table.values.clone();
    node.output[0] = yq.clone();
    let dq_name = names.fresh(&format!("{y}_DequantizeLinear"));
    nodes.push(node);
    nodes.push(build::node(
        &dq_name,
        "DequantizeLinear",
        &[&yq, &table.scale, &table.zero_point],
        &[y],
    ));
}

/// `MatMul(x, W) → y` becomes `MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast
/// → Mul(·, x_scale · W_scale) → y`, quantizing `x` first unless an
/// earlier MatMul already did. Names are drawn in `quantize_dynamic`'s
/// order, so they match its output.
fn matmul_integer(
    node: &NodeProto,
    y: &str,
    w: &Quantized,
    activations: &mut HashMap<String, Quantized>,
    names: &mut NameAllocator,
    nodes: &mut Vec<NodeProto>,
) {
    // A MatMul site reads a weight as its second input, so the first exists.
    let x = node.input[0].clone();
    let base = if node.name().is_empty() {
        y.to_string()
    } else {
        node.name().to_string()
    };
    let xq = activations
        .entry(x.clone())
        .or_insert_with(|| {
            let q = Quantized {
                values: names.fresh(&format!("{x}_quantized")),
                scale: names.fresh(&format!("{x}_scale")),
                zero_point: names.fresh(&format!("{x}_zero_point")),
            };
            let name = names.fresh(&format!("{x}_QuantizeLinear"));
            nodes.push(build::node(
                &name,
                "DynamicQuantizeLinear",
                &[&x],
                &[&q.values, &q.scale, &q.zero_point],
            ));
            q
        })
        .clone();
    let yi = names.fresh(&format!("{y}_output_quantized"));
    let yf = names.fresh(&format!("{yi}_cast_output"));
    let s = names.fresh(&format!("{base}_quant_scales_mul:0"));
    let mut mm = build::node(
        &names.fresh(&format!("{base}_quant")),
        "MatMulInteger",
        &[&xq.values, &w.values, &xq.zero_point, &w.zero_point],
        &[&yi],
    );
    mm.metadata_props = node.metadata_props.clone();
    nodes.push(mm);
    let mut cast = build::node(&names.fresh(&format!("{yi}_cast")), "Cast", &[&yi], &[&yf]);
    cast.attribute.push(build::attr_int("to", FLOAT as i64));
    nodes.push(cast);
    nodes.push(build::node(
        &names.fresh(&format!("{base}_quant_scales_mul")),
        "Mul",
        &[&xq.scale, &w.scale],
        &[&s],
    ));
    nodes.push(build::node(
        &names.fresh(&format!("{base}_quant_output_scale_mul")),
        "Mul",
        &[&yf, &s],
        &[y],
    ));
}
