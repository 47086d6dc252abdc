//! Postprocessing: raw model outputs to a stable emotion stream.
//!
//! Per-window predictions flicker: a face turning or a breath between words
//! moves the top class for a frame or two. Users and downstream logic want
//! the label to change when the emotion changes, not on every wobble, so:
//!
//! 1. outputs become probabilities ([`softmax`], [`sigmoid`]);
//! 2. a [`Smoother`] averages them with a half-life in seconds, using the
//!    real time between updates (windows arrive irregularly on a busy
//!    device);
//! 3. a [`ChangeDetector`] switches label only when the challenger leads by
//!    a margin and stays on top for a dwell time, and reports "unknown"
//!    below a confidence floor.
//!
//! [`Postprocessor`] bundles the three for one model output.

use std::time::Duration;

// How to read a model output: the manifest's output kind, used as is.
pub use emogate_models::manifest::OutputKind;

/// Errors of postprocessing, naming the value and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{what} has {got} values; expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{what} is {got}; expected {expected}")]
    Invalid {
        what: &'static str,
        got: String,
        expected: String,
    },
}

fn invalid(what: &'static str, got: impl std::fmt::Debug, expected: &str) -> PostError {
    PostError::Invalid {
        what,
        got: format!("{got:?}"),
        expected: expected.into(),
    }
}

/// Softmax in place, shifted by the maximum so large logits do not overflow.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Softmax of `x` in a new vector.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    softmax_in_place(&mut out);
    out
}

/// The logistic function, in a form that neither overflows nor loses
/// precision for large negative inputs.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Exponential smoothing with a half-life in seconds.
///
/// An update after `dt` seconds moves the state by `alpha = 1 − 2^(−dt/h)`
/// of the way to the new value, so the result depends on elapsed time, not
/// on how many windows arrived: two updates half a half-life apart equal
/// one update a half-life later.
#[derive(Debug, Clone)]
pub struct Smoother {
    half_life_s: f64,
    state: Vec<f32>,
    last: Option<Duration>,
}

impl Smoother {
    /// A smoother with the given half-life; 0 disables smoothing.
    ///
    /// # Errors
    /// [`PostError::Invalid`] for a negative or non-finite half-life.
    pub fn new(half_life_s: f64) -> Result<Self, PostError> {
        if !(half_life_s.is_finite() && half_life_s >= 0.0) {
            return Err(invalid(
                "smoothing half-life (s)",
                half_life_s,
                "finite and ≥ 0",
            ));
        }
        Ok(Smoother {
            half_life_s,
            state: Vec::new(),
            last: None,
        })
    }

    /// The weight of a new value arriving `dt_s` seconds after the last.
    pub fn alpha(&self, dt_s: f64) -> f64 {
        if self.half_life_s == 0.0 {
            1.0
        } else {
            1.0 - (-dt_s.max(0.0) / self.half_life_s).exp2()
        }
    }

    /// Folds in `values` observed at time `at` (on any monotonic clock) and
    /// returns the smoothed values. The first update is taken as is; an
    /// update stamped at or before the previous one has weight 0.
    ///
    /// # Errors
    /// [`PostError::Length`] if the length differs from the first update's.
    pub fn update(&mut self, values: &[f32], at: Duration) -> Result<&[f32], PostError> {
        let Some(last) = self.last else {
            self.state.clear();
            self.state.extend_from_slice(values);
            self.last = Some(at);
            return Ok(&self.state);
        };
        if values.len() != self.state.len() {
            return Err(PostError::Length {
                what: "smoothed values",
                got: values.len(),
                expected: self.state.len(),
            });
        }
        let alpha = self.alpha(at.saturating_sub(last).as_secs_f64()) as f32;
        for (s, v) in self.state.iter_mut().zip(values) {
            *s += alpha * (v - *s);
        }
        self.last = Some(last.max(at));
        Ok(&self.state)
    }

    /// The current smoothed values, if any update happened.
    pub fn value(&self) -> Option<&[f32]> {
        self.last.map(|_| self.state.as_slice())
    }

    pub fn reset(&mut self) {
        self.state.clear();
        self.last = None;
    }
}

/// When a label change is believed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeConfig {
    /// How far a challenger must lead the current label to be considered.
    pub margin: f32,
    /// How long the challenger must then stay on top.
    pub min_dwell: Duration,
    /// Below this top probability the label is unknown (`None`).
    pub floor: f32,
}

impl Default for ChangeConfig {
    /// A 0.1 lead held for 300 ms, unknown below 0.35: calm enough for
    /// display, quick enough to follow a changing voice or face.
    fn default() -> Self {
        ChangeConfig {
            margin: 0.1,
            min_dwell: Duration::from_millis(300),
            floor: 0.35,
        }
    }
}

/// A label change; `None` is "unknown".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeEvent {
    pub from: Option<usize>,
    pub to: Option<usize>,
    /// When the change was confirmed (the end of the dwell).
    pub at: Duration,
    /// The new label's probability (the top probability when unknown).
    pub confidence: f32,
}

/// Label switching with hysteresis: margin to start a challenge, dwell to
/// win it, floor for "unknown". It starts at "unknown".
#[derive(Debug, Clone)]
pub struct ChangeDetector {
    config: ChangeConfig,
    current: Option<usize>,
    /// The challenging label and when its challenge started.
    candidate: Option<(Option<usize>, Duration)>,
}

impl ChangeDetector {
    /// # Errors
    /// [`PostError::Invalid`] for a margin or floor outside [0, 1].
    pub fn new(config: ChangeConfig) -> Result<Self, PostError> {
        for (what, v) in [
            ("change margin", config.margin),
            ("confidence floor", config.floor),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(what, v, "in [0, 1]"));
            }
        }
        Ok(ChangeDetector {
            config,
            current: None,
            candidate: None,
        })
    }

    /// The current label index, `None` while unknown.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// Feeds (smoothed) probabilities seen at `at`; returns the change it
    /// confirms, if any.
    pub fn update(&mut self, probs: &[f32], at: Duration) -> Option<ChangeEvent> {
        let (top, p_top) =
            probs
                .iter()
                .copied()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
                    if p > best.1 { (i, p) } else { best }
                });
        if probs.is_empty() {
            return None;
        }
        let leader = (p_top >= self.config.floor).then_some(top);
        if leader == self.current {
            self.candidate = None;
            return None;
        }
        let since = match self.candidate {
            Some((label, since)) if label == leader => since,
            _ => {
                let current_p = self.current.and_then(|c| probs.get(c).copied());
                // A current label that fell below the floor defends nothing.
                let leads = match (leader, current_p) {
                    (Some(_), Some(p)) if p >= self.config.floor => p_top >= p + self.config.margin,
                    _ => true,
                };
                if !leads {
                    self.candidate = None;
                    return None;
                }
                self.candidate = Some((leader, at));
                at
            }
        };
        if at.saturating_sub(since) < self.config.min_dwell {
            return None;
        }
        let event = ChangeEvent {
            from: self.current,
            to: leader,
            at,
            confidence: p_top,
        };
        self.current = leader;
        self.candidate = None;
        Some(event)
    }

    pub fn reset(&mut self) {
        self.current = None;
        self.candidate = None;
    }
}

/// Smoothing and change-detection settings of a [`Postprocessor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostConfig {
    pub half_life_s: f64,
    pub change: ChangeConfig,
}

impl Default for PostConfig {
    fn default() -> Self {
        PostConfig {
            half_life_s: 0.5,
            change: ChangeConfig::default(),
        }
    }
}

/// One postprocessed output.
#[derive(Debug, Clone, PartialEq)]
pub struct Update<'a> {
    /// Smoothed scores, one per label.
    pub scores: &'a [f32],
    /// The stable label (`None` while unknown, and for valence/arousal).
    pub label: Option<&'a str>,
    /// Its smoothed score.
    pub confidence: Option<f32>,
    /// Set on the update that confirmed a label change.
    pub change: Option<ChangeEvent>,
}

/// Turns one model output into smoothed scores and a stable label.
#[derive(Debug, Clone)]
pub struct Postprocessor {
    labels: Vec<String>,
    kind: OutputKind,
    smoother: Smoother,
    detector: ChangeDetector,
    scratch: Vec<f32>,
}

impl Postprocessor {
    /// # Errors
    /// [`PostError::Length`] for no labels, or not exactly 2 for
    /// valence/arousal; [`PostError::Invalid`] for a bad [`PostConfig`].
    pub fn new(
        labels: Vec<String>,
        kind: OutputKind,
        config: PostConfig,
    ) -> Result<Self, PostError> {
        let expected = if kind == OutputKind::ValenceArousal {
            2
        } else {
            labels.len().max(1)
        };
        if labels.len() != expected {
            return Err(PostError::Length {
                what: "output labels",
                got: labels.len(),
                expected,
            });
        }
        Ok(Postprocessor {
            scratch: Vec::with_capacity(labels.len()),
            labels,
            kind,
            smoother: Smoother::new(config.half_life_s)?,
            detector: ChangeDetector::new(config.change)?,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Reads raw output `raw` produced for time `at`.
    ///
    /// # Errors
    /// [`PostError::Length`] if `raw` is not one value per label;
    /// [`PostError::Invalid`] for non-finite values, or probabilities that
    /// are negative or sum to 0.
    pub fn process(&mut self, raw: &[f32], at: Duration) -> Result<Update<'_>, PostError> {
        if raw.len() != self.labels.len() {
            return Err(PostError::Length {
                what: "model output",
                got: raw.len(),
                expected: self.labels.len(),
            });
        }
        if let Some(bad) = raw.iter().find(|v| !v.is_finite()) {
            return Err(invalid("a model output value", bad, "finite"));
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        match self.kind {
            OutputKind::Logits => softmax_in_place(&mut self.scratch),
            OutputKind::MultilabelLogits => self.scratch.iter_mut().for_each(|v| *v = sigmoid(*v)),
            OutputKind::ValenceArousal => {}
            OutputKind::Probabilities => {
                if self.scratch.iter().any(|p| *p < -1e-6) {
                    return Err(invalid("a probability output", raw, "no negative values"));
                }
                let sum: f32 = self.scratch.iter().sum();
                if sum <= 0.0 {
                    return Err(invalid("a probability output", raw, "a positive sum"));
                }
                if (sum - 1.0).abs() > 1e-3 {
                    self.scratch.iter_mut().for_each(|p| *p /= sum);
                }
            }
        }
        let scores = self.smoother.update(&self.scratch, at)?;
        let change = match self.kind {
            OutputKind::ValenceArousal => None,
            _ => self.detector.update(scores, at),
        };
        let current = self.detector.current();
        Ok(Update {
            scores,
            label: current.map(|i| self.labels[i].as_str()),
            confidence: current.map(|i| scores[i]),
            change,
        })
    }

    /// Forgets the smoothing state and the current label.
    pub fn reset(&mut self) {
        self.smoother.reset();
        self.detector.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn softmax_and_sigmoid() {
        let p = softmax(&[1000.0, 1000.0, f32::NEG_INFINITY]);
        assert_eq!(p, [0.5, 0.5, 0.0]);
        let p = softmax(&[0.0, 2f32.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) == 1.0);
        assert!((sigmoid(-2.0) + sigmoid(2.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn step_response_is_half_after_one_half_life() {
        let mut s = Smoother::new(0.4).expect("valid half-life");
        s.update(&[0.0], ms(0)).expect("first");
        assert!((s.update(&[1.0], ms(400)).expect("same length")[0] - 0.5).abs() < 1e-6);
        // The same time in two steps gives the same answer.
        let mut s = Smoother::new(0.4).expect("valid half-life");
        s.update(&[0.0], ms(0)).expect("first");
        s.update(&[1.0], ms(200)).expect("same length");
        assert!((s.update(&[1.0], ms(400)).expect("same length")[0] - 0.5).abs() < 1e-6);
        // Two half-lives leave a quarter of the step.
        assert!((s.update(&[1.0], ms(800)).expect("same length")[0] - 0.75).abs() < 1e-6);
        assert!(s.update(&[1.0, 2.0], ms(900)).is_err());
        assert_eq!(Smoother::new(0.0).expect("no smoothing").alpha(0.01), 1.0);
        assert!(Smoother::new(-1.0).is_err());
    }

    fn detector() -> ChangeDetector {
        ChangeDetector::new(ChangeConfig {
            margin: 0.1,
            min_dwell: ms(500),
            floor: 0.4,
        })
        .expect("valid config")
    }

    #[test]
    fn flicker_does_not_spam_changes() {
        let mut d = detector();
        let mut events = Vec::new();
        for i in 0..100u64 {
            let p = if i % 2 == 0 { [0.7, 0.3] } else { [0.3, 0.7] };
            events.extend(d.update(&p, ms(100 * i)));
        }
        assert_eq!(events, []);
        // Near-ties after a label is set do not challenge it either.
        let mut d = detector();
        d.update(&[0.8, 0.2], ms(0));
        d.update(&[0.8, 0.2], ms(600));
        assert_eq!(d.current(), Some(0));
        for i in 0..50u64 {
            let p = if i % 2 == 0 {
                [0.48, 0.52]
            } else {
                [0.52, 0.48]
            };
            assert_eq!(d.update(&p, ms(700 + 100 * i)), None);
        }
        assert_eq!(d.current(), Some(0));
    }

    #[test]
    fn sustained_change_emits_exactly_one_event() {
        let mut d = detector();
        let mut events = Vec::new();
        for i in 0..40u64 {
            let p = if i < 20 { [0.8, 0.2] } else { [0.2, 0.8] };
            events.extend(d.update(&p, ms(100 * i)));
        }
        let to_b: Vec<_> = events.iter().filter(|e| e.to == Some(1)).collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].to, Some(0));
        assert_eq!(events[0].at, ms(500));
        assert_eq!(to_b.len(), 1);
        assert_eq!((to_b[0].from, to_b[0].at), (Some(0), ms(2500)));
    }

    #[test]
    fn below_the_floor_is_unknown() {
        let mut d = detector();
        assert_eq!(d.update(&[0.3, 0.35, 0.35], ms(0)), None);
        assert_eq!(d.update(&[0.3, 0.35, 0.35], ms(1000)), None);
        assert_eq!(d.current(), None);
        d.update(&[0.1, 0.1, 0.8], ms(2000));
        assert_eq!(
            d.update(&[0.1, 0.1, 0.8], ms(2500)).map(|e| e.to),
            Some(Some(2))
        );
        d.update(&[0.3, 0.35, 0.35], ms(3000));
        let event = d
            .update(&[0.3, 0.35, 0.35], ms(3500))
            .expect("falls to unknown");
        assert_eq!((event.from, event.to), (Some(2), None));
    }

    #[test]
    fn postprocessor_reads_each_output_kind() {
        let labels = |n: usize| (0..n).map(|i| format!("l{i}")).collect::<Vec<_>>();
        let config = PostConfig {
            half_life_s: 0.0,
            change: ChangeConfig {
                min_dwell: Duration::ZERO,
                ..ChangeConfig::default()
            },
        };
        let mut p = Postprocessor::new(labels(2), OutputKind::Logits, config).expect("valid");
        let u = p.process(&[0.0, 3f32.ln()], ms(0)).expect("two logits");
        assert!((u.scores[1] - 0.75).abs() < 1e-6);
        assert_eq!(
            (u.label, u.change.map(|e| e.to)),
            (Some("l1"), Some(Some(1)))
        );
        let mut p =
            Postprocessor::new(labels(2), OutputKind::Probabilities, config).expect("valid");
        assert_eq!(
            p.process(&[2.0, 6.0], ms(0)).expect("renormalized").scores,
            [0.25, 0.75]
        );
        assert!(p.process(&[-0.5, 1.5], ms(1)).is_err());
        assert!(p.process(&[f32::NAN, 1.0], ms(1)).is_err());
        let mut p =
            Postprocessor::new(labels(3), OutputKind::MultilabelLogits, config).expect("valid");
        assert_eq!(
            p.process(&[0.0, 0.0, 0.0], ms(0))
                .expect("three logits")
                .scores,
            [0.5; 3]
        );
        let err = p.process(&[0.0; 2], ms(0)).expect_err("wrong length");
        assert_eq!(err.to_string(), "model output has 2 values; expected 3");
        let mut p =
            Postprocessor::new(labels(2), OutputKind::ValenceArousal, config).expect("valid");
        let u = p.process(&[-0.3, 0.9], ms(0)).expect("valence, arousal");
        assert_eq!(
            (u.scores, u.label, u.change),
            (&[-0.3, 0.9][..], None, None)
        );
        assert!(Postprocessor::new(labels(3), OutputKind::ValenceArousal, config).is_err());
    }
}
