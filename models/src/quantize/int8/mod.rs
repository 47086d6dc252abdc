//! int8 weights: QDQ weight-only quantization for TensorRT, and ONNX
//! Runtime's dynamic form for CPUs.
//!
//! Both quantize symmetrically with ONNX Runtime's arithmetic
//! (`quant_utils.compute_scale_zp` with `symmetric=True`): for each channel
//! (or the whole tensor) `scale = max|w| / 127` (1 when the channel is all
//! zeros), `q = clamp(round_half_even(w / scale), -127, 127)`, zero point 0
//! ([`numerics`]).
//!
//! **QDQ** (`qdq`, [`super::Mode::Int8`]): each selected `MatMul`/`Gemm`/`Conv` weight
//! `W` becomes `W_quantized` (int8) → `DequantizeLinear(W_quantized,
//! W_scale, W_zero_point, axis)` → the op, with one scale per output
//! channel (`axis` 1 for `[in, out]` MatMul weights, 0 for `[out, in]`
//! Gemm/Transpose weights and Conv kernels, 0 — one per row — for
//! embedding tables read by `Gather`). Activations stay f32: this is
//! weight-only quantization, which TensorRT's ONNX parser accepts (int8
//! weights, symmetric, zero point 0, per-channel axis on the output channels).
//!
//! **Dynamic** (`dynamic`, [`super::Mode::Int8Dynamic`]): `MatMul(x, W)` becomes
//! `DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast →
//! Mul(x_scale · W_scale)`, and an embedding `Gather(E, ids)` becomes
//! `Gather(E_uint8, ids) → DequantizeLinear` (asymmetric uint8, per tensor),
//! node for node what `quantize_dynamic` writes.
//! TensorRT has no `MatMulInteger`/`DynamicQuantizeLinear`.
//!
//! The parts, one job each:
//!
//! * [`numerics`] — scales, zero points and rounding on plain arrays
//!   (absmax, least-error clipping, asymmetric uint8, GPTQ's layout);
//! * `select` — which weights each form can quantize, and which of those
//!   the user's selection, their type and size let through;
//! * `weights` — taking an f32 initializer out of the graph and putting the
//!   quantized initializers in;
//! * `qdq` and `dynamic` — the two graph rewrites.

mod dynamic;
pub mod numerics;
mod qdq;
mod select;
mod weights;

use std::collections::HashMap;

use super::Selection;
use super::gptq::Hessian;
use crate::onnx::proto::tensor_proto::DataType;

pub(crate) use dynamic::quantize_dynamic;
pub use numerics::{quantize_asymmetric_u8, quantize_symmetric, quantize_symmetric_mse};
pub(crate) use qdq::quantize_qdq;

const FLOAT: i32 = DataType::Float as i32;
const INT8: i32 = DataType::Int8 as i32;
const UINT8: i32 = DataType::Uint8 as i32;

/// Options of both int8 forms ([`super::Mode::Int8`], [`super::Mode::Int8Dynamic`]).
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

/// How `--int8` picks each channel's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleMethod {
    /// `max|w| / 127`, as ONNX Runtime's quantizer.
    AbsMax,
    /// The clipped scale with the least squared rounding error (default).
    #[default]
    Mse,
}
