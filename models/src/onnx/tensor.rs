//! Element types and the two ways ONNX stores tensor values inline: the
//! little-endian `raw_data` blob and the typed repeated fields
//! (`float_data`, `int32_data`, ...). Floating-point values are converted
//! to and from `f32`, the precision the surgery works in.

use half::{bf16, f16};

use super::proto::TensorProto;
use super::proto::tensor_proto::DataType;

/// Floating-point element types that graph surgery can read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    F32,
    F16,
    Bf16,
    F64,
}

impl FloatType {
    /// The float type of an ONNX `data_type` code, if it is one we handle.
    pub fn from_onnx(code: i32) -> Option<Self> {
        match DataType::try_from(code).ok()? {
            DataType::Float => Some(FloatType::F32),
            DataType::Float16 => Some(FloatType::F16),
            DataType::Bfloat16 => Some(FloatType::Bf16),
            DataType::Double => Some(FloatType::F64),
            _ => None,
        }
    }

    /// The ONNX `data_type` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            FloatType::F32 => DataType::Float as i32,
            FloatType::F16 => DataType::Float16 as i32,
            FloatType::Bf16 => DataType::Bfloat16 as i32,
            FloatType::F64 => DataType::Double as i32,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
            FloatType::F64 => 8,
        }
    }

    /// Decodes little-endian bytes of this type into `f32`.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            FloatType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            FloatType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            FloatType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            FloatType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
        }
    }

    /// Encodes `f32` values as little-endian bytes of this type (rounding to
    /// nearest even for the 16-bit types).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        if self == FloatType::F32 {
            let mut out = vec![0u8; values.len() * 4];
            for (c, v) in out.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
            return out;
        }
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            FloatType::F32 => unreachable!("handled above"),
            FloatType::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            FloatType::Bf16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            FloatType::F64 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        }
        out
    }
}

/// Name of an ONNX element type code, for messages.
pub fn onnx_type_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|t| t.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("unknown type {code}"))
}

/// Number of elements a tensor's `dims` describe (`None` on a negative dim or overflow).
pub fn element_count(tensor: &TensorProto) -> Option<usize> {
    tensor.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Where a tensor's typed repeated field keeps float values, if any.
/// Returns `None` when the tensor has no typed values.
pub(crate) fn typed_float_values(tensor: &TensorProto, ty: FloatType) -> Option<Vec<f32>> {
    match ty {
        FloatType::F32 if !tensor.float_data.is_empty() => Some(tensor.float_data.clone()),
        FloatType::F64 if !tensor.double_data.is_empty() => {
            Some(tensor.double_data.iter().map(|v| *v as f32).collect())
        }
        // ONNX keeps 16-bit floats as their bit patterns in `int32_data`.
        FloatType::F16 if !tensor.int32_data.is_empty() => Some(
            tensor
                .int32_data
                .iter()
                .map(|v| f16::from_bits(*v as u16).to_f32())
                .collect(),
        ),
        FloatType::Bf16 if !tensor.int32_data.is_empty() => Some(
            tensor
                .int32_data
                .iter()
                .map(|v| bf16::from_bits(*v as u16).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// Writes values back into the typed field that `ty` uses, clearing `raw_data`.
pub(crate) fn set_typed_float_values(tensor: &mut TensorProto, ty: FloatType, values: &[f32]) {
    tensor.raw_data = None;
    tensor.float_data.clear();
    tensor.double_data.clear();
    tensor.int32_data.clear();
    match ty {
        FloatType::F32 => tensor.float_data = values.to_vec(),
        FloatType::F64 => tensor.double_data = values.iter().map(|v| *v as f64).collect(),
        FloatType::F16 => {
            tensor.int32_data = values
                .iter()
                .map(|v| f16::from_f32(*v).to_bits() as i32)
                .collect()
        }
        FloatType::Bf16 => {
            tensor.int32_data = values
                .iter()
                .map(|v| bf16::from_f32(*v).to_bits() as i32)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_float_type() {
        let values = [0.0f32, 1.5, -2.25, 1024.0];
        for ty in [
            FloatType::F32,
            FloatType::F16,
            FloatType::Bf16,
            FloatType::F64,
        ] {
            let bytes = ty.encode(&values);
            assert_eq!(bytes.len(), values.len() * ty.size());
            assert_eq!(ty.decode(&bytes), values, "{ty:?}");
            let mut t = TensorProto::default();
            set_typed_float_values(&mut t, ty, &values);
            assert_eq!(typed_float_values(&t, ty).unwrap(), values, "{ty:?}");
        }
    }

    #[test]
    fn sixteen_bit_types_round_to_nearest() {
        let v = [1.0f32 + 1.0 / 4096.0];
        assert_eq!(FloatType::F16.decode(&FloatType::F16.encode(&v)), [1.0]);
        assert_eq!(FloatType::Bf16.decode(&FloatType::Bf16.encode(&v)), [1.0]);
    }
}
