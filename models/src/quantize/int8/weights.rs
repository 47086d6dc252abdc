//! Moving weights between the graph and the numerics: taking an f32
//! initializer out, putting quantized values, scales and zero points in.

use super::{FLOAT, INT8};
use crate::error::{Error, Result};
use crate::onnx::proto::{GraphProto, TensorProto};
use crate::onnx::{OnnxModel, build};

/// The names of a quantized weight's three initializers, as a
/// `DequantizeLinear` or `MatMulInteger` reads them.
#[derive(Debug, Clone)]
pub(super) struct Quantized {
    pub values: String,
    pub scale: String,
    pub zero_point: String,
}

/// Takes initializer `name` out of the graph (and out of the graph inputs,
/// where old IR versions list initializers too); returns its dims and values.
///
/// # Errors
/// [`Error::Field`] when `name` is not an initializer or its values do not
/// decode as floats of its dims.
pub(super) fn take_weight(
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

/// An int8 initializer.
pub(super) fn int8_tensor(name: &str, dims: &[i64], q: &[i8]) -> TensorProto {
    build::tensor_raw(name, INT8, dims, bytemuck::cast_slice::<i8, u8>(q).to_vec())
}

/// An f32 initializer (little-endian `raw_data`, as ONNX stores it).
pub(super) fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    build::tensor_raw(name, FLOAT, dims, bytes)
}
