//! Two of tract's operators replaced in the optimized plan, because on the
//! reference model they cost a third of tract's time (issue 16, target 2;
//! the per-node tables are in docs/benchmarks.md):
//!
//! - **Softmax.** tract 0.23.9 runs a softmax row by row through its
//!   linalg kernels; each row makes three kernel calls that copy it through
//!   an aligned scratch buffer. Its whole-buffer kernel exists for aarch64
//!   only, and only for rows of a multiple of 4. The reference model's
//!   attention rows hold 41 values (16 face + 25 audio tokens): one
//!   [4, 41, 41] softmax took 177 µs on x86 (release, one thread), 20 µs
//!   here; ONNX Runtime's softmaxes are 4.5 % of its profile.
//! - **RmsNorm over an inner axis.** tract's optimizer moves the tokens'
//!   transpose through the whole transformer, so the norms reduce over axis
//!   1 of [1, 96, 41]. tract's fused RmsNorm kernel only takes the last
//!   axis; the other path composes four tensor ops with their own
//!   allocations: 21 µs per norm, against 1.8 µs here.
//!
//! [`use_faster_ops`] swaps those nodes for [`RowSoftmax`] and
//! [`StridedRmsNorm`] after `into_optimized`. Each keeps tract's op and
//! hands it any tensor it does not handle (not f32, not contiguous), so the
//! swap never changes which models run. The loops are plain Rust written so
//! the compiler vectorizes them (SSE/AVX on x86, NEON on aarch64).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{RmsNorm, Softmax, SoftmaxKind};

/// How many nodes [`use_faster_ops`] replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replaced {
    pub softmax: usize,
    pub rms_norm: usize,
}

/// Replaces the optimized plan's f32 softmaxes (over one axis) and its f32
/// RmsNorms over any axis but the last with [`RowSoftmax`] and
/// [`StridedRmsNorm`]. A softmax tract runs with its whole-buffer kernel
/// (aarch64, over the last axis, rows of a multiple of 4) is kept, and so is
/// an RmsNorm over the last axis (tract's fused kernel).
///
/// # Errors
/// tract's, if a patch cannot be applied (it then names the node).
pub fn use_faster_ops(model: &mut TypedModel) -> TractResult<Replaced> {
    let mut replaced = Replaced::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(first) = node.inputs.first() else {
            continue;
        };
        let input = model.outlet_fact(*first)?;
        if input.datum_type != f32::datum_type() {
            continue;
        }
        let rank = input.rank();
        if let Some(op) = node.op_as::<Softmax>() {
            if op.kind != SoftmaxKind::Softmax || op.quant_output_dt.is_some() || op.axes.len() != 1
            {
                continue;
            }
            let axis = op.axes[0];
            let row = input.shape[axis].to_usize().ok();
            let tract_has_kernel = cfg!(target_arch = "aarch64")
                && axis + 1 == rank
                && row.is_some_and(|r| r % 4 == 0);
            if tract_has_kernel {
                continue;
            }
            let new = RowSoftmax {
                axis,
                stock: op.clone(),
            };
            let patch = TypedModelPatch::single_unary_op(model, node, new)?;
            patch.apply(model)?;
            replaced.softmax += 1;
        } else if let Some(op) = node.op_as::<RmsNorm>() {
            if op.axis + 1 == rank {
                continue;
            }
            let eps = op.eps.cast_to_scalar::<f32>()?;
            let new = StridedRmsNorm {
                axis: op.axis,
                eps_bits: eps.to_bits(),
                stock: op.clone(),
            };
            let patch = TypedModelPatch::single_unary_op(model, node, new)?;
            patch.apply(model)?;
            replaced.rms_norm += 1;
        }
    }
    // Drop the replaced nodes, so the plan and `info --verbose` list ours only.
    model.compact()?;
    Ok(replaced)
}

/// `(outer, n, inner)`: the sizes before, along and after `axis`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// The tensor as an owned f32 buffer we may write, or `None` when it is
/// not a plain, contiguous f32 tensor (then tract's own op runs).
fn owned_f32(input: TValue) -> Result<Tensor, TValue> {
    if input.datum_type() != f32::datum_type()
        || input.strides() != &*Tensor::natural_strides(input.shape())
        || !input.is_plain_ram()
    {
        return Err(input);
    }
    Ok(input.into_tensor())
}

/// Softmax over one axis of a contiguous f32 tensor (see the module docs
/// for why tract's is replaced).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSoftmax {
    pub axis: usize,
    /// tract's op, for any tensor this one does not handle.
    pub stock: Softmax,
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "EmogateSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.remove(0);
        let mut tensor = match owned_f32(input) {
            Ok(t) => t,
            Err(input) => return self.stock.eval(ctx, tvec![input]),
        };
        let (outer, n, inner) = split_at_axis(tensor.shape(), self.axis);
        let mut plain = tensor.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        softmax_f32(data, outer, n, inner);
        Ok(tvec![tensor.into_tvalue()])
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.stock.output_facts(inputs)
    }

    as_op!();
}

/// Softmax of `data` seen as [outer, n, inner] along n, in place.
pub fn softmax_f32(data: &mut [f32], outer: usize, n: usize, inner: usize) {
    if n == 0 || inner == 0 {
        return;
    }
    if inner == 1 {
        for row in data.chunks_exact_mut(n).take(outer) {
            let max = lanes(row, f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let scale = 1.0 / lanes(row, 0.0, |a, b| a + b);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        return;
    }
    // The axis is strided: reduce across rows of `inner` contiguous values,
    // so every loop below runs over a contiguous row.
    let mut max = vec![0f32; inner];
    let mut sum = vec![0f32; inner];
    for block in data.chunks_exact_mut(n * inner).take(outer) {
        max.fill(f32::NEG_INFINITY);
        for row in block.chunks_exact(inner) {
            max.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(*v));
        }
        sum.fill(0.0);
        for row in block.chunks_exact_mut(inner) {
            for ((v, m), s) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                *v = exp(*v - m);
                *s += *v;
            }
        }
        sum.iter_mut().for_each(|s| *s = 1.0 / *s);
        for row in block.chunks_exact_mut(inner) {
            row.iter_mut().zip(&sum).for_each(|(v, s)| *v *= s);
        }
    }
}

/// Folds `values` with `f` over 8 independent lanes, then the lanes: the
/// compiler vectorizes this where a single running value (a dependency
/// chain it may not reorder, for floats) stays scalar.
#[inline(always)]
fn lanes(values: &[f32], neutral: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [neutral; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = f(*a, *v);
        }
    }
    let mut out = rest.iter().fold(neutral, |a, v| f(a, *v));
    for a in acc {
        out = f(out, a);
    }
    out
}

/// e^x in f32 without a libm call, so loops over it vectorize. x is split
/// as k·ln 2 plus r with |r| ≤ ln 2 / 2 (Cody-Waite, ln 2 in two parts),
/// e^r comes from Cephes' `expf` polynomial, and 2^k is built in the
/// exponent bits. Within 2 ulp of `exp` on [-87, 88]; below that it
/// returns about 1e-38 rather than 0, and NaN stays NaN.
#[inline(always)]
pub fn exp(input: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds x·log2(e) to the nearest integer k, which
    // then sits in the low bits of the sum's mantissa: no `round()` (a libm
    // call on baseline x86-64) and no float-to-int cast (Rust's saturating
    // `as` keeps the loop scalar; measured 2.7 ns an element against 1.4).
    const ROUND: f32 = 12_582_912.0;
    let x = input.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_k = f32::from_bits(k_bits.wrapping_add(127) << 23);
    // A select, not a branch: it keeps the loop vectorized.
    if input.is_nan() { input } else { e_r * two_k }
}

/// RmsNorm over an axis other than the last of a contiguous f32 tensor:
/// x / sqrt(mean(x²) + eps) (see the module docs for why tract's is
/// replaced).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StridedRmsNorm {
    pub axis: usize,
    /// eps as f32 bits (so the op is `Eq` and `Hash`, as tract requires).
    pub eps_bits: u32,
    /// tract's op, for any tensor this one does not handle.
    pub stock: RmsNorm,
}

impl Op for StridedRmsNorm {
    fn name(&self) -> StaticName {
        "EmogateRmsNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis: {}, eps: {}",
            self.axis,
            f32::from_bits(self.eps_bits)
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for StridedRmsNorm {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.remove(0);
        let mut tensor = match owned_f32(input) {
            Ok(t) => t,
            Err(input) => return self.stock.eval(ctx, tvec![input]),
        };
        let (outer, n, inner) = split_at_axis(tensor.shape(), self.axis);
        let mut plain = tensor.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        rms_norm_f32(data, outer, n, inner, f32::from_bits(self.eps_bits));
        Ok(tvec![tensor.into_tvalue()])
    }
}

impl TypedOp for StridedRmsNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.stock.output_facts(inputs)
    }

    as_op!();
}

/// RmsNorm of `data` seen as [outer, n, inner] along n, in place.
pub fn rms_norm_f32(data: &mut [f32], outer: usize, n: usize, inner: usize, eps: f32) {
    if n == 0 || inner == 0 {
        return;
    }
    let mut scale = vec![0f32; inner];
    for block in data.chunks_exact_mut(n * inner).take(outer) {
        scale.fill(0.0);
        for row in block.chunks_exact(inner) {
            scale.iter_mut().zip(row).for_each(|(s, v)| *s += v * v);
        }
        scale
            .iter_mut()
            .for_each(|s| *s = 1.0 / (*s / n as f32 + eps).sqrt());
        for row in block.chunks_exact_mut(inner) {
            row.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values in -scale..scale.
    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut state = seed.max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u32, scale: f32) -> Tensor {
        let n = shape.iter().product();
        tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), values(n, seed, scale))
            .expect("shape")
            .into_tensor()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.shape(), b.shape());
        let a = a.to_plain_array_view::<f32>().expect("f32");
        let b = b.to_plain_array_view::<f32>().expect("f32");
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn eval(op: &dyn TypedOp, input: &Tensor) -> Tensor {
        let ctx = EvalContext::out_of_plan();
        let mut out = op
            .eval(&ctx, tvec![input.clone().into_tvalue()])
            .expect("eval");
        out.remove(0).into_tensor()
    }

    #[test]
    fn exp_is_within_2_ulp_of_f64_exp_over_its_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.003_1;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_tracts_over_every_axis() {
        for (shape, axis) in [
            (vec![4, 41, 41], 2),
            (vec![1, 4, 41, 41], 3),
            (vec![1, 7], 1),
            (vec![3, 5, 9], 1),
            (vec![3, 5, 9], 0),
            (vec![2, 64], 1),
            (vec![1, 1], 1),
        ] {
            let input = tensor(&shape, 7 + axis as u32, 20.0);
            let stock = Softmax::new(tvec![axis], None, SoftmaxKind::Softmax);
            let ours = RowSoftmax {
                axis,
                stock: stock.clone(),
            };
            let diff = max_diff(&eval(&stock, &input), &eval(&ours, &input));
            assert!(diff < 1e-6, "{shape:?} axis {axis}: {diff}");
        }
    }

    #[test]
    fn softmax_of_masked_rows_gives_zero_to_the_masked() {
        let mut row = vec![f32::NEG_INFINITY; 41];
        row[3] = 2.0;
        row[40] = 2.0;
        softmax_f32(&mut row, 1, 41, 1);
        assert!((row[3] - 0.5).abs() < 1e-6 && (row[40] - 0.5).abs() < 1e-6);
        assert!(
            row.iter()
                .enumerate()
                .all(|(i, v)| i == 3 || i == 40 || *v < 1e-30)
        );
    }

    #[test]
    fn rms_norm_matches_tracts_over_inner_axes() {
        for (shape, axis) in [(vec![1, 96, 41], 1), (vec![2, 5, 3, 7], 1), (vec![6, 4], 0)] {
            let input = tensor(&shape, 11 + axis as u32, 3.0);
            let stock = RmsNorm {
                axis,
                eps: tensor0(1e-5f32).into_arc_tensor(),
            };
            let ours = StridedRmsNorm {
                axis,
                eps_bits: 1e-5f32.to_bits(),
                stock: stock.clone(),
            };
            let diff = max_diff(&eval(&stock, &input), &eval(&ours, &input));
            assert!(diff < 2e-6, "{shape:?} axis {axis}: {diff}");
        }
    }

    #[test]
    fn other_tensors_go_to_tracts_op() {
        let input =
            tract_ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![1f64, 2., 3., 4., 5., 6.])
                .expect("shape")
                .into_tensor();
        let stock = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        let ours = RowSoftmax {
            axis: 1,
            stock: stock.clone(),
        };
        assert_eq!(eval(&stock, &input), eval(&ours, &input));
    }
}
