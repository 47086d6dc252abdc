//! GPTQ-style rounding for `--int8 --calibrate N` (Frantar et al., 2022).
//!
//! Round-to-nearest makes each weight's error independent. With the
//! calibration inputs' second moment `H = Σ x xᵀ` of a layer's input, GPTQ
//! quantizes one input row at a time and moves that row's rounding error
//! onto the rows not yet quantized, in the direction that least changes
//! `x·W` for inputs like the calibration ones. The scales (one per output
//! channel) are fixed first, so the result is still plain symmetric
//! per-channel int8 with zero point 0: the graph is the same QDQ form.

/// `Σ x xᵀ` of a layer's inputs over the calibration set.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Input features (rows of the `[in, out]` weight).
    pub dim: usize,
    /// `dim × dim`, row-major.
    pub h: Vec<f64>,
    /// Input rows accumulated.
    pub rows: usize,
}

impl Hessian {
    pub fn new(dim: usize) -> Self {
        Hessian {
            dim,
            h: vec![0.0; dim * dim],
            rows: 0,
        }
    }

    /// Adds input rows (`x` is `[rows, dim]`, row-major).
    pub fn add(&mut self, x: &[f32]) {
        let d = self.dim;
        for row in x.chunks_exact(d) {
            for i in 0..d {
                let xi = row[i] as f64;
                if xi == 0.0 {
                    continue;
                }
                let hi = &mut self.h[i * d..(i + 1) * d];
                for (j, h) in hi.iter_mut().enumerate() {
                    *h += xi * row[j] as f64;
                }
            }
            self.rows += 1;
        }
    }
}

/// Lower Cholesky factor of a symmetric positive definite `n × n` matrix.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`), with dampening.
fn inverse_upper(h: &Hessian, damp: f64) -> Option<Vec<f64>> {
    let n = h.dim;
    let mut a = h.h.clone();
    let mean_diag = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        if a[i * n + i] == 0.0 {
            a[i * n + i] = 1.0; // an input that is always 0
        }
        a[i * n + i] += damp * mean_diag.max(1e-12);
    }
    let l = cholesky(&a, n)?;
    // L⁻¹ (lower), then H⁻¹ = L⁻ᵀ L⁻¹.
    let mut li = vec![0.0; n * n];
    for j in 0..n {
        li[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let mut s = 0.0;
            for k in j..i {
                s -= l[i * n + k] * li[k * n + j];
            }
            li[i * n + j] = s / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in i.max(j)..n {
                s += li[k * n + i] * li[k * n + j];
            }
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    // Upper factor of H⁻¹ = transpose of its lower factor.
    let l2 = cholesky(&inv, n)?;
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = l2[i * n + j];
        }
    }
    Some(u)
}

/// Quantizes `w` (`[n_in, n_out]`, row-major, the layout `x · W` reads)
/// with the given per-output-column scales; returns the int8 values in the
/// same layout, or `None` when `H` is not usable (then round to nearest).
pub fn gptq(w: &[f32], n_in: usize, n_out: usize, scales: &[f32], h: &Hessian) -> Option<Vec<i8>> {
    if h.dim != n_in || scales.len() != n_out || h.rows == 0 {
        return None;
    }
    let u = inverse_upper(h, 0.01)?;
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut q = vec![0i8; n_in * n_out];
    let mut err = vec![0f64; n_out];
    for i in 0..n_in {
        let d = u[i * n_in + i];
        for c in 0..n_out {
            let s = scales[c] as f64;
            let v = w[i * n_out + c];
            let qi = (v / s).round_ties_even().clamp(-127.0, 127.0);
            q[i * n_out + c] = qi as i8;
            err[c] = (v - qi * s) / d;
        }
        for j in i + 1..n_in {
            let f = u[i * n_in + j];
            if f == 0.0 {
                continue;
            }
            let row = &mut w[j * n_out..(j + 1) * n_out];
            for (x, e) in row.iter_mut().zip(&err) {
                *x -= f * e;
            }
        }
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On correlated inputs GPTQ's output error is below round-to-nearest's.
    #[test]
    fn beats_round_to_nearest_on_correlated_inputs() {
        let (n_in, n_out) = (16, 4);
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let w: Vec<f32> = (0..n_in * n_out).map(|_| rnd()).collect();
        let mut x = Vec::new();
        for _ in 0..256 {
            let base = rnd();
            for _ in 0..n_in {
                x.push(base + 0.1 * rnd());
            }
        }
        let mut h = Hessian::new(n_in);
        h.add(&x);
        let scales: Vec<f32> = (0..n_out)
            .map(|c| {
                (0..n_in)
                    .map(|i| w[i * n_out + c].abs())
                    .fold(0.0, f32::max)
                    / 127.0
            })
            .collect();
        let rtn: Vec<i8> = (0..n_in * n_out)
            .map(|k| (w[k] / scales[k % n_out]).round_ties_even() as i8)
            .collect();
        let g = gptq(&w, n_in, n_out, &scales, &h).unwrap();
        let out_err = |q: &[i8]| -> f64 {
            x.chunks(n_in)
                .map(|row| {
                    (0..n_out)
                        .map(|c| {
                            let e: f64 = (0..n_in)
                                .map(|i| {
                                    row[i] as f64
                                        * (w[i * n_out + c] - q[i * n_out + c] as f32 * scales[c])
                                            as f64
                                })
                                .sum();
                            e * e
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        assert!(
            out_err(&g) < 0.7 * out_err(&rtn),
            "gptq {} vs rtn {}",
            out_err(&g),
            out_err(&rtn)
        );
    }
}
