//! The QDQ rewrite (`--int8`): each chosen weight `W` becomes
//! `W_quantized` (int8) → `DequantizeLinear(W_quantized, W_scale,
//! W_zero_point, axis)` → every node that read `W`.

use super::numerics::{gptq_rounded, quantize_symmetric, quantize_symmetric_mse};
use super::select::{choose, qdq_candidates};
use super::weights::{Quantized, f32_tensor, int8_tensor, take_weight};
use super::{Int8Options, ScaleMethod};
use crate::error::Result;
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::{GraphIndex, NameAllocator, OnnxModel, build};
use crate::quantize::{QuantizeReport, TensorReport, refuse_subgraphs, require_opset};

/// Weight-only QDQ quantization (see the module docs).
///
/// # Errors
/// [`crate::Error::Field`] for a graph with control flow, a selected weight
/// that is not float32, a selection pattern matching nothing, or an opset
/// below 13 (per-channel `DequantizeLinear`).
pub(crate) fn quantize_qdq(
    model: &OnnxModel,
    graph: &mut GraphProto,
    options: &Int8Options,
    report: &mut QuantizeReport,
) -> Result<()> {
    refuse_subgraphs(model, graph, "int8 quantization")?;
    let index = GraphIndex::new(graph);
    let cands = qdq_candidates(&index);
    let chosen = choose(model, &index, &cands, options, report)?;
    if !chosen.is_empty() {
        require_opset(
            model,
            13,
            "per-channel DequantizeLinear (the `axis` attribute)",
        )?;
    }
    let mut names = NameAllocator::new(graph);
    let mut dq_nodes = Vec::new();
    for c in chosen {
        let (dims, values) = take_weight(model, graph, &c.weight)?;
        let (q, scales, rounding) = round_weight(&c.weight, &values, &dims, c.axis, options);
        let (quantized, dq_out, dq) = dequantize(&mut names, &c.weight, c.axis);
        let channels = scales.len() as i64;
        graph
            .initializer
            .push(int8_tensor(&quantized.values, &dims, &q));
        graph
            .initializer
            .push(f32_tensor(&quantized.scale, &[channels], &scales));
        graph.initializer.push(int8_tensor(
            &quantized.zero_point,
            &[channels],
            &vec![0i8; scales.len()],
        ));
        dq_nodes.push(dq);
        read_through(graph, &c.weight, &dq_out);
        report.tensors.push(TensorReport {
            name: c.weight.clone(),
            module: c.module(),
            op: c.op.clone(),
            shape: dims,
            from: "float32".into(),
            to: format!("int8 (QDQ, per-channel, symmetric{rounding})"),
            axis: Some(c.axis as i64),
            clamped: 0,
        });
    }
    // The DequantizeLinear nodes read initializers only: placed first, they
    // keep the node list in topological order.
    dq_nodes.append(&mut graph.node);
    graph.node = dq_nodes;
    Ok(())
}

/// Rounds one weight with per-channel scales along `axis`: scales by the
/// chosen method, values to nearest, or with GPTQ when the calibration has
/// statistics for this 2-D weight. Returns the values, the scales and the
/// rounding's note for the report (`""` or `", GPTQ"`).
fn round_weight(
    weight: &str,
    values: &[f32],
    dims: &[i64],
    axis: usize,
    options: &Int8Options,
) -> (Vec<i8>, Vec<f32>, &'static str) {
    let (q, scales) = match options.scale {
        ScaleMethod::AbsMax => quantize_symmetric(values, dims, Some(axis)),
        ScaleMethod::Mse => quantize_symmetric_mse(values, dims, Some(axis)),
    };
    if let (Some(h), 2) = (options.hessians.get(weight), dims.len())
        && let Some(g) = gptq_rounded(values, dims, axis, &scales, h)
    {
        return (g, scales, ", GPTQ");
    }
    (q, scales, "")
}

/// Names the quantized initializers of `weight` and builds the
/// `DequantizeLinear` node that turns them back into f32; returns the
/// names, the dequantized value and the node. The names are drawn in the
/// order the outputs have always used, so they stay the same.
fn dequantize(
    names: &mut NameAllocator,
    weight: &str,
    axis: usize,
) -> (Quantized, String, NodeProto) {
    let quantized = Quantized {
        values: names.fresh(&format!("{weight}_quantized")),
        scale: names.fresh(&format!("{weight}_scale")),
        zero_point: names.fresh(&format!("{weight}_zero_point")),
    };
    let dq_out = names.fresh(&format!("{weight}_dequantized"));
    let dq_name = names.fresh(&format!("{weight}_DequantizeLinear"));
    let mut dq = build::node(
        &dq_name,
        "DequantizeLinear",
        &[&quantized.values, &quantized.scale, &quantized.zero_point],
        &[&dq_out],
    );
    dq.attribute.push(build::attr_int("axis", axis as i64));
    (quantized, dq_out, dq)
}

/// Makes every reader of `weight` (nodes and graph outputs) read `value`.
fn read_through(graph: &mut GraphProto, weight: &str, value: &str) {
    for node in graph.node.iter_mut() {
        for input in node.input.iter_mut() {
            if *input == weight {
                *input = value.to_string();
            }
        }
    }
    for o in graph.output.iter_mut().filter(|o| o.name() == weight) {
        o.name = Some(value.to_string());
    }
}
