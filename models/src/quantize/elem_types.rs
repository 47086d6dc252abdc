//! Element types of every value of a graph, without shapes: how fp16
//! conversion and int8-dynamic know which values carry floats.
//!
//! Types come from the graph's inputs, `value_info`, initializers and
//! `Constant` nodes, then flow forward through the nodes: most ops output
//! their first input's type; ops that make indices, booleans or a type
//! named by an attribute are listed.

use std::collections::HashMap;

use crate::onnx::NodeExt;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, ValueInfoProto, type_proto};

const FLOAT: i32 = DataType::Float as i32;
const INT64: i32 = DataType::Int64 as i32;
const INT32: i32 = DataType::Int32 as i32;
const BOOL: i32 = DataType::Bool as i32;
const UINT8: i32 = DataType::Uint8 as i32;

/// The tensor element type of a value info, if it is a tensor.
pub(crate) fn value_info_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// Sets the element type of a tensor value info.
pub(crate) fn set_value_info_type(v: &mut ValueInfoProto, elem: i32) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(elem);
    }
}

/// Element type of each value of `graph` that can be inferred.
pub fn infer_elem_types(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
    {
        if let Some(t) = value_info_type(v) {
            types.insert(v.name().to_string(), t);
        }
    }
    for t in &graph.initializer {
        types.insert(t.name().to_string(), t.data_type());
    }
    for node in &graph.node {
        let input = |i: usize| {
            node.input
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| types.get(n))
                .copied()
        };
        let outs: Vec<Option<i32>> = match node.op_type() {
            "Constant" => vec![
                node.attr_tensor("value")
                    .map(|t| t.data_type())
                    .or_else(|| {
                        ["value_float", "value_floats"]
                            .iter()
                            .any(|a| node.attr(a).is_some())
                            .then_some(FLOAT)
                    })
                    .or_else(|| {
                        ["value_int", "value_ints"]
                            .iter()
                            .any(|a| node.attr(a).is_some())
                            .then_some(INT64)
                    }),
            ],
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => vec![Some(INT64)],
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Not" | "And"
            | "Or" | "Xor" | "IsNaN" | "IsInf" => vec![Some(BOOL)],
            "Cast" => vec![node.attr_int("to").map(|t| t as i32)],
            "CastLike" => vec![input(1)],
            "ConstantOfShape" => vec![Some(
                node.attr_tensor("value")
                    .map(|t| t.data_type())
                    .unwrap_or(FLOAT),
            )],
            "Where" => vec![input(1)],
            "DequantizeLinear" => vec![input(1).or(Some(FLOAT))],
            "QuantizeLinear" => vec![input(2).or(Some(UINT8))],
            "DynamicQuantizeLinear" => vec![Some(UINT8), Some(FLOAT), Some(UINT8)],
            "MatMulInteger" | "ConvInteger" => vec![Some(INT32)],
            "TopK" => vec![input(0), Some(INT64)],
            "Unique" => vec![input(0), Some(INT64), Some(INT64), Some(INT64)],
            "EyeLike" | "RandomNormalLike" | "RandomUniformLike" => {
                vec![node.attr_int("dtype").map(|t| t as i32).or(input(0))]
            }
            "RandomNormal" | "RandomUniform" => {
                vec![Some(
                    node.attr_int("dtype").map(|t| t as i32).unwrap_or(FLOAT),
                )]
            }
            "Multinomial" => vec![Some(
                node.attr_int("dtype").map(|t| t as i32).unwrap_or(INT32),
            )],
            "MaxPool" => vec![input(0), Some(INT64)],
            _ => vec![input(0)],
        };
        let in0 = input(0);
        for (i, out) in node.output.iter().enumerate() {
            if out.is_empty() || types.contains_key(out) {
                continue;
            }
            let ty = outs
                .get(i)
                .copied()
                .flatten()
                .or(if i == 0 { in0 } else { outs[0] });
            if let Some(ty) = ty {
                types.insert(out.clone(), ty);
            }
        }
    }
    types
}
