//! int8 weights: QDQ weight-only quantization for TensorRT, and ONNX
//! Runtime's dynamic form for CPUs.
//!
//! Both quantize symmetrically with ONNX Runtime's arithmetic
//! (`quant_utils.compute_scale_zp` with `symmetric=True`): for each channel
//! (or the whole tensor) `scale = max|w| / 127` (1 when the channel is all
//! zeros), `q = clamp(round_half_even(w / scale), -127, 127)`, zero point 0.
//!
//! **QDQ** ([`quantize_qdq`]): each selected `MatMul`/`Gemm`/`Conv` weight
//! `W` becomes `W_quantized` (int8) → `DequantizeLinear(W_quantized,
//! W_scale, W_zero_point, axis)` → the op, with one scale per output
//! channel (`axis` 1 for `[in, out]` MatMul weights, 0 for `[out, in]`
//! Gemm/Transpose weights and Conv kernels, 0 — one per row — for
//! embedding tables read by `Gather`). Activations stay f32: this is
//! weight-only quantization, which TensorRT's ONNX parser accepts (int8
//! weights, symmetric, zero point 0, per-channel axis on the output channels).
//!
//! **Dynamic** ([`quantize_dynamic`]): `MatMul(x, W)` becomes
//! `DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast →
//! Mul(x_scale · W_scale)`, and an embedding `Gather(E, ids)` becomes
//! `Gather(E_uint8, ids) → DequantizeLinear` (asymmetric uint8, per tensor),
//! node for node what `quantize_dynamic` writes.
//! TensorRT has no `MatMulInteger`/`DynamicQuantizeLinear`.

use std::collections::{HashMap, HashSet};

use super::gptq::{Hessian, gptq};
use super::types::infer_elem_types;
use super::{QuantizeReport, Selection, Selector, Skipped, TensorReport};
use crate::error::{Error, Result};
use crate::onnx::linear::{Layout, LinearIndex, node_module_paths, path_from_parameter_name};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::onnx::{
    GraphIndex, NameAllocator, NodeExt, OnnxModel, build, element_count, onnx_type_name,
};

const FLOAT: i32 = DataType::Float as i32;
const INT8: i32 = DataType::Int8 as i32;
const UINT8: i32 = DataType::Uint8 as i32;

/// Options of [`quantize_qdq`] and [`quantize_dynamic`].
#[derive(Debug, Clone)]
pub struct Int8Options {
    /// Which modules to quantize.
    pub selection: Selection,
    /// Weights with fewer elements stay f32 (default 256).
    pub min_elements: usize,
    /// `--int8-dynamic` only: one scale per output column instead of one
    /// per tensor (`quantize_dynamic(per_channel=True)`). `--int8` is always per channel.
    pub per_channel: bool,
    /// `--int8` only: how each channel's scale is chosen (`--int8-dynamic`
    /// always uses absmax, as `quantize_dynamic`).
    pub scale: ScaleMethod,
    /// `--int8` only: calibration statistics of linear layers' inputs, by
    /// weight initializer name; those weights are rounded with GPTQ
    /// ([`super::gptq`]) instead of to nearest.
    pub hessians: HashMap<String, Hessian>,
}

impl Default for Int8Options {
    fn default() -> Self {
        Int8Options {
            selection: Selection::default(),
            min_elements: 256,
            per_channel: false,
            scale: ScaleMethod::Mse,
            hessians: HashMap::new(),
        }
    }
}

/// Symmetric int8 quantization of `values` (row-major, `dims`) with one
/// scale per index of `axis`, or one for the tensor.
pub fn quantize_symmetric(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
) -> (Vec<i8>, Vec<f32>) {
    let (channels, inner) = match axis {
        Some(a) => (
            dims[a].max(1) as usize,
            dims[a + 1..].iter().product::<i64>().max(1) as usize,
        ),
        None => (1, values.len().max(1)),
    };
    let channel = |k: usize| {
        if axis.is_some() {
            (k / inner) % channels
        } else {
            0
        }
    };
    let mut absmax = vec![0f32; channels];
    for (k, v) in values.iter().enumerate() {
        let c = channel(k);
        absmax[c] = absmax[c].max(v.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&m| {
            let s = ((2.0 * m as f64) / 254.0) as f32;
            if s < f32::MIN_POSITIVE { 1.0 } else { s }
        })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            (v / scales[channel(k)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

/// Asymmetric uint8 quantization of a whole tensor, as `quantize_dynamic`
/// quantizes the embedding tables `Gather` reads: `rmin = min(w, 0)`,
/// `rmax = max(w, 0)`, `scale = (rmax − rmin) / 255`, `zero_point =
/// round(−rmin / scale)`, `q = clamp(round(w / scale) + zero_point, 0, 255)`.
pub fn quantize_asymmetric_u8(values: &[f32]) -> (Vec<u8>, f32, u8) {
    let rmin = values.iter().fold(0f32, |a, &b| a.min(b));
    let rmax = values.iter().fold(0f32, |a, &b| a.max(b));
    let scale64 = (rmax as f64 - rmin as f64) / 255.0;
    if scale64 < f32::MIN_POSITIVE as f64 {
        return (vec![0; values.len()], 1.0, 0);
    }
    let zp = (-(rmin as f64) / scale64)
        .round_ties_even()
        .clamp(0.0, 255.0) as u8;
    let scale = scale64 as f32;
    let q = values
        .iter()
        .map(|v| ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8)
        .collect();
    (q, scale, zp)
}

/// Like [`quantize_symmetric`], but each channel's scale is the one of
/// `r · max|w| / 127`, r in 0.70…1.00 (step 0.005), with the least squared
/// error after rounding: clipping a few outliers buys finer steps for the
/// rest. Never worse than absmax (r = 1 is a candidate).
pub fn quantize_symmetric_mse(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
) -> (Vec<i8>, Vec<f32>) {
    let (_, absmax_scales) = quantize_symmetric(values, dims, axis);
    let (channels, inner) = match axis {
        Some(a) => (
            dims[a].max(1) as usize,
            dims[a + 1..].iter().product::<i64>().max(1) as usize,
        ),
        None => (1, values.len().max(1)),
    };
    let channel = |k: usize| {
        if axis.is_some() {
            (k / inner) % channels
        } else {
            0
        }
    };
    // Gather each channel's values once.
    let mut per: Vec<Vec<f32>> = vec![Vec::new(); channels];
    for (k, v) in values.iter().enumerate() {
        per[channel(k)].push(*v);
    }
    let scales: Vec<f32> = per
        .iter()
        .zip(&absmax_scales)
        .map(|(vals, &s0)| {
            let mut best = (f64::INFINITY, s0);
            for step in 0..=60 {
                let s = s0 * (1.0 - 0.005 * step as f32);
                if s < f32::MIN_POSITIVE {
                    break;
                }
                let err: f64 = vals
                    .iter()
                    .map(|&v| {
                        let q = (v / s).round_ties_even().clamp(-127.0, 127.0);
                        let d = (v - q * s) as f64;
                        d * d
                    })
                    .sum();
                if err < best.0 {
                    best = (err, s);
                }
            }
            best.1
        })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            (v / scales[channel(k)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

/// How `--int8` picks each channel's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleMethod {
    /// `max|w| / 127`, as ONNX Runtime's quantizer.
    AbsMax,
    /// The clipped scale with the least squared rounding error (default).
    #[default]
    Mse,
}

/// A weight to quantize and how its op reads it.
struct Candidate {
    weight: String,
    /// Output-channel axis of the stored weight.
    axis: usize,
    op: String,
    paths: Vec<String>,
}

fn candidates(index: &GraphIndex) -> Vec<Candidate> {
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
        let gather_axis0 = node.op_type() != "Gather" || node.attr_int("axis").unwrap_or(0) == 0;
        if gather_axis0 && index.initializer(w).is_some_and(ok) && seen.insert(w.clone()) {
            let mut paths = node_module_paths(node);
            paths.extend(path_from_parameter_name(w));
            out.push(Candidate {
                weight: w.clone(),
                axis: 0,
                op: node.op_type().to_string(),
                paths,
            });
        }
    }
    out
}

/// Picks the candidates to quantize, recording why the others are skipped.
fn choose<'c>(
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
        let module = c.paths.iter().max_by_key(|p| p.len()).cloned();
        let skip = |reason: String, report: &mut QuantizeReport| {
            report.skipped.push(Skipped {
                weight: c.weight.clone(),
                module: module.clone(),
                reason,
            })
        };
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

fn check_opset(model: &OnnxModel, min: i64, form: &str) -> Result<()> {
    let opset = super::default_opset(&model.proto.opset_import);
    if opset < min {
        return Err(Error::field(
            model.path(),
            "opset_import",
            format!(
                "the model imports opset {opset}; {form} needs opset {min} or newer (re-export with a newer opset_version)"
            ),
        ));
    }
    Ok(())
}

/// Takes initializer `name` out of the graph (and out of the graph inputs,
/// where old IR versions list initializers too); returns its values.
fn take_weight(
    model: &OnnxModel,
    graph: &mut GraphProto,
    name: &str,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let i = graph
        .initializer
        .iter()
        .position(|t| t.name() == name)
        .ok_or_else(|| {
            Error::field(
                model.path(),
                format!("initializer `{name}`"),
                "is not in the graph",
            )
        })?;
    let t = graph.initializer.remove(i);
    graph.input.retain(|v| v.name() != name);
    let (_, values) = model.float_values(&t)?;
    Ok((t.dims.clone(), values))
}

fn int8_tensor(name: &str, dims: &[i64], q: &[i8]) -> TensorProto {
    build::tensor_raw(name, INT8, dims, bytemuck::cast_slice::<i8, u8>(q).to_vec())
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    build::tensor_raw(name, FLOAT, dims, bytes)
}

/// Weight-only QDQ quantization (see the module docs).
pub(crate) fn quantize_qdq(
    model: &OnnxModel,
    graph: &mut GraphProto,
    options: &Int8Options,
    report: &mut QuantizeReport,
) -> Result<()> {
    super::refuse_subgraphs(model, graph, "int8 quantization")?;
    let index = GraphIndex::new(graph);
    let cands = candidates(&index);
    let chosen: Vec<(String, usize, String, Option<String>)> =
        choose(model, &index, &cands, options, report)?
            .into_iter()
            .map(|c| {
                let module = c.paths.iter().max_by_key(|p| p.len()).cloned();
                (c.weight.clone(), c.axis, c.op.clone(), module)
            })
            .collect();
    if !chosen.is_empty() {
        check_opset(
            model,
            13,
            "per-channel DequantizeLinear (the `axis` attribute)",
        )?;
    }
    let mut names = NameAllocator::new(graph);
    let mut dq_nodes = Vec::new();
    for (weight, axis, op, module) in chosen {
        let (dims, values) = take_weight(model, graph, &weight)?;
        let (mut q, scales) = match options.scale {
            ScaleMethod::AbsMax => quantize_symmetric(&values, &dims, Some(axis)),
            ScaleMethod::Mse => quantize_symmetric_mse(&values, &dims, Some(axis)),
        };
        let mut rounding = "";
        if let (Some(h), 2) = (options.hessians.get(&weight), dims.len()) {
            // GPTQ works on the [in, out] view the layer multiplies by.
            let (r, c) = (dims[0] as usize, dims[1] as usize);
            let transpose = |v: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                let mut t = vec![0f32; v.len()];
                for i in 0..rows {
                    for j in 0..cols {
                        t[j * rows + i] = v[i * cols + j];
                    }
                }
                t
            };
            let (view, n_in, n_out) = if axis == 1 {
                (values.clone(), r, c)
            } else {
                (transpose(&values, r, c), c, r)
            };
            if let Some(g) = gptq(&view, n_in, n_out, &scales, h) {
                q = if axis == 1 {
                    g
                } else {
                    let f: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                    transpose(&f, n_in, n_out)
                        .iter()
                        .map(|&x| x as i8)
                        .collect()
                };
                rounding = ", GPTQ";
            }
        }
        let q_name = names.fresh(&format!("{weight}_quantized"));
        let s_name = names.fresh(&format!("{weight}_scale"));
        let z_name = names.fresh(&format!("{weight}_zero_point"));
        let dq_out = names.fresh(&format!("{weight}_dequantized"));
        let dq_name = names.fresh(&format!("{weight}_DequantizeLinear"));
        let channels = scales.len() as i64;
        graph.initializer.push(int8_tensor(&q_name, &dims, &q));
        graph
            .initializer
            .push(f32_tensor(&s_name, &[channels], &scales));
        graph
            .initializer
            .push(int8_tensor(&z_name, &[channels], &vec![0i8; scales.len()]));
        let mut dq = build::node(
            &dq_name,
            "DequantizeLinear",
            &[&q_name, &s_name, &z_name],
            &[&dq_out],
        );
        dq.attribute.push(build::attr_int("axis", axis as i64));
        dq_nodes.push(dq);
        for node in graph.node.iter_mut() {
            for input in node.input.iter_mut() {
                if *input == weight {
                    *input = dq_out.clone();
                }
            }
        }
        for o in graph.output.iter_mut().filter(|o| o.name() == weight) {
            o.name = Some(dq_out.clone());
        }
        report.tensors.push(TensorReport {
            name: weight,
            module,
            op,
            shape: dims,
            from: "float32".into(),
            to: format!("int8 (QDQ, per-channel, symmetric{rounding})"),
            axis: Some(axis as i64),
            clamped: 0,
        });
    }
    dq_nodes.append(&mut graph.node);
    graph.node = dq_nodes;
    Ok(())
}

/// `quantize_dynamic`'s graph (see the module docs).
pub(crate) fn quantize_dynamic(
    model: &OnnxModel,
    graph: &mut GraphProto,
    options: &Int8Options,
    report: &mut QuantizeReport,
) -> Result<()> {
    super::refuse_subgraphs(model, graph, "int8-dynamic quantization")?;
    let types = infer_elem_types(graph);
    let graph_index = GraphIndex::new(graph);
    let index = LinearIndex::from_index(&graph_index);
    // Only MatMul(x, W) with W an [in, out] initializer, as quantize_dynamic.
    let mut cands = Vec::new();
    let mut matmuls: HashMap<String, Vec<usize>> = HashMap::new();
    for site in &index.sites {
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
        if !matmuls.contains_key(&site.weight) {
            cands.push(Candidate {
                weight: site.weight.clone(),
                axis: 1,
                op: "MatMul".into(),
                paths: site.paths.iter().cloned().collect(),
            });
        }
        matmuls
            .entry(site.weight.clone())
            .or_default()
            .push(site.linear);
    }
    // Embedding tables: Gather on the uint8 table, DequantizeLinear after.
    let mut gathers: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        let Some(table) = node.input.first() else {
            continue;
        };
        let float_table = graph_index
            .initializer(table)
            .is_some_and(|t| t.data_type() == FLOAT);
        if node.op_type() != "Gather" || !float_table {
            continue;
        }
        if !gathers.contains_key(table) && !matmuls.contains_key(table) {
            let mut paths = node_module_paths(node);
            paths.extend(path_from_parameter_name(table));
            cands.push(Candidate {
                weight: table.clone(),
                axis: 0,
                op: "Gather".into(),
                paths,
            });
        }
        gathers.entry(table.clone()).or_default().push(i);
    }
    let chosen: Vec<(String, Option<String>, String)> =
        choose(model, &graph_index, &cands, options, report)?
            .into_iter()
            .map(|c| {
                (
                    c.weight.clone(),
                    c.paths.iter().max_by_key(|p| p.len()).cloned(),
                    c.op.clone(),
                )
            })
            .collect();
    if !chosen.is_empty() {
        check_opset(model, 11, "DynamicQuantizeLinear")?;
        report.warnings.push(
            "int8-dynamic writes DynamicQuantizeLinear + MatMulInteger: TensorRT's ONNX parser rejects both; \
             use --int8 (QDQ) for TensorRT. This form is for CPU runtimes (ONNX Runtime, tract)."
                .into(),
        );
    }
    let mut names = NameAllocator::new(graph);
    // Per MatMul node: the weight's quantized names.
    let mut rewrite: HashMap<usize, (String, String, String)> = HashMap::new();
    let mut gather_rewrite: HashMap<usize, (String, String, String)> = HashMap::new();
    for (weight, module, op) in chosen {
        let (dims, values) = take_weight(model, graph, &weight)?;
        if op == "Gather" {
            let (q, scale, zp) = quantize_asymmetric_u8(&values);
            let q_name = names.fresh(&format!("{weight}_quantized"));
            let s_name = names.fresh(&format!("{weight}_scale"));
            let z_name = names.fresh(&format!("{weight}_zero_point"));
            graph
                .initializer
                .push(build::tensor_raw(&q_name, UINT8, &dims, q));
            graph.initializer.push(f32_tensor(&s_name, &[], &[scale]));
            graph
                .initializer
                .push(build::tensor_raw(&z_name, UINT8, &[], vec![zp]));
            for &g in &gathers[&weight] {
                gather_rewrite.insert(g, (q_name.clone(), s_name.clone(), z_name.clone()));
            }
            report.tensors.push(TensorReport {
                name: weight,
                module,
                op,
                shape: dims,
                from: "float32".into(),
                to: "uint8 (Gather + DequantizeLinear, per-tensor, asymmetric)".into(),
                axis: None,
                clamped: 0,
            });
            continue;
        }
        let axis = options.per_channel.then_some(1);
        let (q, scales) = quantize_symmetric(&values, &dims, axis);
        let q_name = names.fresh(&format!("{weight}_quantized"));
        let s_name = names.fresh(&format!("{weight}_scale"));
        let z_name = names.fresh(&format!("{weight}_zero_point"));
        let sdims: Vec<i64> = if options.per_channel {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        graph.initializer.push(int8_tensor(&q_name, &dims, &q));
        graph.initializer.push(f32_tensor(&s_name, &sdims, &scales));
        graph
            .initializer
            .push(int8_tensor(&z_name, &sdims, &vec![0i8; scales.len()]));
        for &m in &matmuls[&weight] {
            rewrite.insert(m, (q_name.clone(), s_name.clone(), z_name.clone()));
        }
        report.tensors.push(TensorReport {
            name: weight,
            module,
            op: "MatMul".into(),
            shape: dims,
            from: "float32".into(),
            to: format!(
                "int8 (MatMulInteger, {}, symmetric)",
                if options.per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                }
            ),
            axis: axis.map(|a| a as i64),
            clamped: 0,
        });
    }
    // x → DynamicQuantizeLinear once per activation, at its first use.
    let mut dql: HashMap<String, (String, String, String)> = HashMap::new();
    let old = std::mem::take(&mut graph.node);
    let mut nodes: Vec<NodeProto> = Vec::with_capacity(old.len() + rewrite.len() * 5);
    for (i, mut node) in old.into_iter().enumerate() {
        if let Some((tq, ts, tz)) = gather_rewrite.get(&i) {
            let y = node.output[0].clone();
            let yq = names.fresh(&format!("{y}_quantized"));
            node.input[0] = tq.clone();
            node.output[0] = yq.clone();
            let dq_name = names.fresh(&format!("{y}_DequantizeLinear"));
            nodes.push(node);
            nodes.push(build::node(
                &dq_name,
                "DequantizeLinear",
                &[&yq, ts, tz],
                &[&y],
            ));
            continue;
        }
        let Some((wq, ws, wz)) = rewrite.get(&i) else {
            nodes.push(node);
            continue;
        };
        let x = node.input[0].clone();
        let y = node.output[0].clone();
        let base = if node.name().is_empty() {
            y.clone()
        } else {
            node.name().to_string()
        };
        let (xq, xs, xz) = match dql.get(&x) {
            Some(v) => v.clone(),
            None => {
                let xq = names.fresh(&format!("{x}_quantized"));
                let xs = names.fresh(&format!("{x}_scale"));
                let xz = names.fresh(&format!("{x}_zero_point"));
                let name = names.fresh(&format!("{x}_QuantizeLinear"));
                nodes.push(build::node(
                    &name,
                    "DynamicQuantizeLinear",
                    &[&x],
                    &[&xq, &xs, &xz],
                ));
                dql.insert(x.clone(), (xq.clone(), xs.clone(), xz.clone()));
                (xq, xs, xz)
            }
        };
        let yi = names.fresh(&format!("{y}_output_quantized"));
        let yf = names.fresh(&format!("{yi}_cast_output"));
        let s = names.fresh(&format!("{base}_quant_scales_mul:0"));
        let mut mm = build::node(
            &names.fresh(&format!("{base}_quant")),
            "MatMulInteger",
            &[&xq, wq, &xz, wz],
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
            &[&xs, ws],
            &[&s],
        ));
        nodes.push(build::node(
            &names.fresh(&format!("{base}_quant_output_scale_mul")),
            "Mul",
            &[&yf, &s],
            &[&y],
        ));
    }
    graph.node = nodes;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_follow_the_axis() {
        // [2, 3] weight, channels along axis 1 (columns).
        let w = [1.0f32, -2.0, 0.0, -0.5, 1.0, 0.0];
        let (q, s) = quantize_symmetric(&w, &[2, 3], Some(1));
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0, 1.0]);
        assert_eq!(q, vec![127, -127, 0, -64, 64, 0]);
        // Along axis 0 (rows).
        let (q, s) = quantize_symmetric(&w, &[2, 3], Some(0));
        assert_eq!(s, vec![2.0 / 127.0, 1.0 / 127.0]);
        assert_eq!(q, vec![64, -127, 0, -64, 127, 0]);
    }

    #[test]
    fn mse_scales_clip_outliers_and_never_lose_to_absmax() {
        // One outlier per column: absmax wastes the range on it.
        let mut w: Vec<f32> = (0..64)
            .map(|k| ((k * 37 % 64) as f32 / 64.0 - 0.5) * 0.1)
            .collect();
        w[0] = 1.0;
        w[1] = -1.0;
        let dims = [32, 2];
        let sse = |q: &[i8], s: &[f32]| -> f64 {
            w.iter()
                .enumerate()
                .map(|(k, v)| ((v - q[k] as f32 * s[k % 2]) as f64).powi(2))
                .sum()
        };
        let (qa, sa) = quantize_symmetric(&w, &dims, Some(1));
        let (qm, sm) = quantize_symmetric_mse(&w, &dims, Some(1));
        assert!(sm.iter().zip(&sa).all(|(m, a)| m <= a));
        assert!(sse(&qm, &sm) <= sse(&qa, &sa));
        assert!(qm.iter().all(|q| *q >= -127));
    }

    #[test]
    fn asymmetric_u8_maps_the_range_onto_0_255() {
        let (q, s, z) = quantize_asymmetric_u8(&[-1.0, 0.0, 3.0]);
        assert_eq!(s, 4.0 / 255.0);
        assert_eq!(z, 64); // round(1 / (4/255)) = round(63.75)
        assert_eq!(q, vec![0, 64, 255]);
        assert_eq!(quantize_asymmetric_u8(&[0.0, 0.0]), (vec![0, 0], 1.0, 0));
    }

    #[test]
    fn rounds_half_to_even_and_never_uses_minus_128() {
        let w = [127.0f32, 0.5, 1.5, -127.0, 2.5];
        let (q, s) = quantize_symmetric(&w, &[5], None);
        assert_eq!(s, vec![1.0]);
        assert_eq!(q, vec![127, 0, 2, -127, 2]);
    }
}
