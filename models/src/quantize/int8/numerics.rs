//! The arithmetic of int8 quantization, on plain arrays: scales, zero points
//! and rounding. Nothing here knows about graphs.
//!
//! Symmetric quantization follows ONNX Runtime (`quant_utils.compute_scale_zp`
//! with `symmetric=True`): `scale = max|w| / 127` (1 when the channel is all
//! zeros), `q = clamp(round_half_even(w / scale), -127, 127)`, zero point 0.
//! -128 is never used, so the range is symmetric around 0 as TensorRT wants.

use super::super::gptq::{Hessian, gptq};

/// Which scale each element of a row-major tensor uses: one per index of
/// `axis` (elements are grouped by their coordinate along it), or one for
/// the whole tensor.
struct Channels {
    per_channel: bool,
    count: usize,
    /// Elements between two consecutive indices of the axis.
    inner: usize,
}

impl Channels {
    fn new(len: usize, dims: &[i64], axis: Option<usize>) -> Self {
        match axis {
            Some(a) => Channels {
                per_channel: true,
                count: dims[a].max(1) as usize,
                inner: dims[a + 1..].iter().product::<i64>().max(1) as usize,
            },
            None => Channels {
                per_channel: false,
                count: 1,
                inner: len.max(1),
            },
        }
    }

    /// The channel of flat index `k`.
    fn of(&self, k: usize) -> usize {
        if self.per_channel {
            (k / self.inner) % self.count
        } else {
            0
        }
    }
}

/// `round_half_even(v / scale)` in the symmetric int8 range.
fn round_symmetric(v: f32, scale: f32) -> f32 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0)
}

fn round_all(values: &[f32], scales: &[f32], channels: &Channels) -> Vec<i8> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| round_symmetric(*v, scales[channels.of(k)]) as i8)
        .collect()
}

/// Symmetric int8 quantization of `values` (row-major, `dims`) with one
/// scale per index of `axis`, or one for the tensor.
pub fn quantize_symmetric(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
) -> (Vec<i8>, Vec<f32>) {
    let channels = Channels::new(values.len(), dims, axis);
    let scales = absmax_scales(values, &channels);
    (round_all(values, &scales, &channels), scales)
}

/// `max|w| / 127` per channel, computed as ONNX Runtime does (in f64, as
/// `2·max / 254`), and 1 for a channel of zeros so nothing divides by 0.
fn absmax_scales(values: &[f32], channels: &Channels) -> Vec<f32> {
    let mut absmax = vec![0f32; channels.count];
    for (k, v) in values.iter().enumerate() {
        let c = channels.of(k);
        absmax[c] = absmax[c].max(v.abs());
    }
    absmax
        .iter()
        .map(|&m| {
            let s = ((2.0 * m as f64) / 254.0) as f32;
            if s < f32::MIN_POSITIVE { 1.0 } else { s }
        })
        .collect()
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
    let channels = Channels::new(values.len(), dims, axis);
    let absmax = absmax_scales(values, &channels);
    // Gather each channel's values once.
    let mut per: Vec<Vec<f32>> = vec![Vec::new(); channels.count];
    for (k, v) in values.iter().enumerate() {
        per[channels.of(k)].push(*v);
    }
    let scales: Vec<f32> = per
        .iter()
        .zip(&absmax)
        .map(|(vals, &s0)| least_error_scale(vals, s0))
        .collect();
    (round_all(values, &scales, &channels), scales)
}

/// The scale among `s0 · (1 − 0.005·step)`, step 0…60, with the least
/// squared rounding error over `vals`; the first one on ties.
fn least_error_scale(vals: &[f32], s0: f32) -> f32 {
    let mut best = (f64::INFINITY, s0);
    for step in 0..=60 {
        let s = s0 * (1.0 - 0.005 * step as f32);
        if s < f32::MIN_POSITIVE {
            break;
        }
        let err: f64 = vals
            .iter()
            .map(|&v| {
                let d = (v - round_symmetric(v, s) * s) as f64;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
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

/// GPTQ rounding of a stored 2-D weight (`dims`, output channels along
/// `axis`) with the given per-channel `scales`; `None` when GPTQ declines
/// (a Hessian of another size, or one it cannot factor), and the caller
/// keeps round-to-nearest.
pub(super) fn gptq_rounded(
    values: &[f32],
    dims: &[i64],
    axis: usize,
    scales: &[f32],
    h: &Hessian,
) -> Option<Vec<i8>> {
    // GPTQ works on the [in, out] view the layer multiplies by: the stored
    // weight when its channels run along axis 1, its transpose otherwise.
    let (r, c) = (dims[0] as usize, dims[1] as usize);
    if axis == 1 {
        return gptq(values, r, c, scales, h);
    }
    let (n_in, n_out) = (c, r);
    let g = gptq(&transpose(values, r, c), n_in, n_out, scales, h)?;
    // Back to the stored [out, in] layout (through f32: the values are
    // small integers, exact in either type).
    let f: Vec<f32> = g.iter().map(|&x| x as f32).collect();
    Some(
        transpose(&f, n_in, n_out)
            .iter()
            .map(|&x| x as i8)
            .collect(),
    )
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
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
