//! Classification and regression scores of `eval`, with seeded bootstrap
//! intervals.
//!
//! * accuracy: correct / N (the count is reported too);
//! * unweighted average recall (UAR): the mean of per-class recall over the
//!   classes that occur in the labels;
//! * macro-F1: the mean F1 over the classes that occur in the labels or the
//!   predictions (a class with no true positives scores 0), as
//!   scikit-learn's `f1_score(average="macro")`;
//! * valence/arousal: RMSE and Lin's concordance correlation coefficient
//!   `2·cov / (var_t + var_p + (mean_t − mean_p)²)`, population moments.
//!
//! Intervals: [`BOOTSTRAP_RESAMPLES`] resamples of the N samples with
//! replacement, drawn by [`crate::rng::Rng`] seeded with [`BOOTSTRAP_SEED`];
//! the 2.5th and 97.5th percentiles of each score (percentile bootstrap).

use serde::Serialize;

use crate::rng::Rng;

/// Seed of the bootstrap resampling.
pub const BOOTSTRAP_SEED: u64 = 20_260_115;
/// Bootstrap resamples per score.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// A score with its bootstrap 95% interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Scored {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The scores of one valence or arousal output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Regression {
    pub rmse: Scored,
    pub ccc: Scored,
}

/// Everything `eval` reports about one model on one input set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    pub samples: usize,
    /// Correct predictions (exact; accuracy is this over `samples`).
    pub correct: usize,
    pub accuracy: Scored,
    pub uar: Scored,
    pub macro_f1: Scored,
    /// Recall per class (`None` for a class absent from the labels).
    pub recall: Vec<Option<f64>>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub valence: Option<Regression>,
    pub arousal: Option<Regression>,
}

fn confusion(
    labels: &[usize],
    predicted: &[usize],
    classes: usize,
    idx: &[usize],
) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; classes]; classes];
    for &i in idx {
        m[labels[i]][predicted[i]] += 1;
    }
    m
}

/// (accuracy, UAR, macro-F1) of a confusion matrix.
#[allow(clippy::needless_range_loop)] // rows and columns of one matrix
fn class_scores(m: &[Vec<usize>]) -> (f64, f64, f64) {
    let k = m.len();
    let total: usize = m.iter().flatten().sum();
    let correct: usize = (0..k).map(|c| m[c][c]).sum();
    let (mut recall_sum, mut recall_n, mut f1_sum, mut f1_n) = (0.0, 0usize, 0.0, 0usize);
    for c in 0..k {
        let support: usize = m[c].iter().sum();
        let predicted: usize = (0..k).map(|r| m[r][c]).sum();
        let tp = m[c][c] as f64;
        if support > 0 {
            recall_sum += tp / support as f64;
            recall_n += 1;
        }
        if support + predicted > 0 {
            f1_sum += 2.0 * tp / (support + predicted) as f64;
            f1_n += 1;
        }
    }
    let ratio = |a: f64, n: usize| if n == 0 { 0.0 } else { a / n as f64 };
    (
        ratio(correct as f64, total),
        ratio(recall_sum, recall_n),
        ratio(f1_sum, f1_n),
    )
}

/// (RMSE, CCC) of predictions against targets over `idx`.
fn regression(t: &[f32], p: &[f32], idx: &[usize]) -> (f64, f64) {
    let n = idx.len().max(1) as f64;
    let (mut mt, mut mp, mut se) = (0.0, 0.0, 0.0);
    for &i in idx {
        let (a, b) = (f64::from(t[i]), f64::from(p[i]));
        mt += a;
        mp += b;
        se += (a - b).powi(2);
    }
    mt /= n;
    mp /= n;
    let (mut vt, mut vp, mut cov) = (0.0, 0.0, 0.0);
    for &i in idx {
        let (a, b) = (f64::from(t[i]) - mt, f64::from(p[i]) - mp);
        vt += a * a;
        vp += b * b;
        cov += a * b;
    }
    let (vt, vp, cov) = (vt / n, vp / n, cov / n);
    let denom = vt + vp + (mt - mp).powi(2);
    let ccc = if denom == 0.0 { 0.0 } else { 2.0 * cov / denom };
    ((se / n).sqrt(), ccc)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(value: f64, mut samples: Vec<f64>) -> Scored {
    samples.sort_by(f64::total_cmp);
    Scored {
        value,
        lo: percentile(&samples, 0.025),
        hi: percentile(&samples, 0.975),
    }
}

/// Valence/arousal targets and predictions, `[N]` pairs each.
pub type VaPairs<'a> = (&'a [[f32; 2]], &'a [[f32; 2]]);

/// Scores predictions: `labels` and `predicted` are class indices below
/// `classes`; `va` holds (targets, predictions) of valence and arousal as
/// `[N]` each, when both exist.
pub fn score(
    labels: &[usize],
    predicted: &[usize],
    classes: usize,
    va: Option<VaPairs<'_>>,
) -> Scores {
    let n = labels.len();
    let all: Vec<usize> = (0..n).collect();
    let m = confusion(labels, predicted, classes, &all);
    let (acc, uar, f1) = class_scores(&m);
    let split = |v: &[[f32; 2]], d: usize| v.iter().map(|x| x[d]).collect::<Vec<f32>>();
    let va_cols = va.map(|(t, p)| [(split(t, 0), split(p, 0)), (split(t, 1), split(p, 1))]);
    let point_va = va_cols
        .as_ref()
        .map(|cols| cols.each_ref().map(|(t, p)| regression(t, p, &all)));
    let mut rng = Rng::new(BOOTSTRAP_SEED);
    let mut boot: Vec<Vec<f64>> = (0..7)
        .map(|_| Vec::with_capacity(BOOTSTRAP_RESAMPLES))
        .collect();
    let mut idx = vec![0usize; n];
    if n > 0 {
        for _ in 0..BOOTSTRAP_RESAMPLES {
            idx.iter_mut()
                .for_each(|i| *i = (rng.next_u64() % n as u64) as usize);
            let (a, u, f) = class_scores(&confusion(labels, predicted, classes, &idx));
            boot[0].push(a);
            boot[1].push(u);
            boot[2].push(f);
            if let Some(cols) = &va_cols {
                for (d, (t, p)) in cols.iter().enumerate() {
                    let (rmse, ccc) = regression(t, p, &idx);
                    boot[3 + 2 * d].push(rmse);
                    boot[4 + 2 * d].push(ccc);
                }
            }
        }
    }
    let mut boot = boot.into_iter();
    let mut next = || boot.next().unwrap_or_default();
    let (b_acc, b_uar, b_f1) = (next(), next(), next());
    let (b_vr, b_vc, b_ar, b_ac) = (next(), next(), next(), next());
    let (valence, arousal) = match point_va {
        Some([(vr, vc), (ar, ac)]) => (
            Some(Regression {
                rmse: interval(vr, b_vr),
                ccc: interval(vc, b_vc),
            }),
            Some(Regression {
                rmse: interval(ar, b_ar),
                ccc: interval(ac, b_ac),
            }),
        ),
        None => (None, None),
    };
    Scores {
        samples: n,
        correct: (0..classes).map(|c| m[c][c]).sum(),
        accuracy: interval(acc, b_acc),
        uar: interval(uar, b_uar),
        macro_f1: interval(f1, b_f1),
        recall: m
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let s: usize = row.iter().sum();
                (s > 0).then(|| row[c] as f64 / s as f64)
            })
            .collect(),
        confusion: m,
        valence,
        arousal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_counts() {
        // labels 0,0,1,1,2 predicted 0,1,1,1,0: acc 3/5; recall 1/2, 1, 0
        // → UAR 1/2; F1: class0 2·1/(2+2)=0.5, class1 2·2/(2+3)=0.8, class2 0.
        let s = score(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 4, None);
        assert_eq!(s.correct, 3);
        assert_eq!(s.accuracy.value, 0.6);
        assert!((s.uar.value - 0.5).abs() < 1e-12);
        assert!((s.macro_f1.value - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(s.recall, vec![Some(0.5), Some(1.0), Some(0.0), None]);
        assert!(s.accuracy.lo <= 0.6 && 0.6 <= s.accuracy.hi);
        // Same seed, same intervals.
        assert_eq!(s, score(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 4, None));
    }

    #[test]
    fn ccc_and_rmse() {
        let t = [[0.0f32, 1.0], [1.0, 2.0], [2.0, 3.0]];
        let s = score(&[0, 0, 0], &[0, 0, 0], 1, Some((&t, &t)));
        let v = s.valence.unwrap();
        assert_eq!(v.rmse.value, 0.0);
        assert!((v.ccc.value - 1.0).abs() < 1e-12);
        // p = t + 1: rmse 1; var 2/3 each, cov 2/3 → ccc = (4/3)/(4/3 + 1) = 4/7.
        let p = [[1.0f32, 2.0], [2.0, 3.0], [3.0, 4.0]];
        let s = score(&[0, 0, 0], &[0, 0, 0], 1, Some((&t, &p)));
        let a = s.arousal.unwrap();
        assert!((a.rmse.value - 1.0).abs() < 1e-12);
        assert!((a.ccc.value - 4.0 / 7.0).abs() < 1e-12);
    }
}
