//! Log-mel of a sliding window, computing only the frames a hop adds.
//!
//! A pipeline asks for the log-mel of the last 2 s every 250 ms: of the
//! window's 201 STFT frames, about 25 are new and the rest were computed
//! one hop before. [`MelStream`] keeps the previous window's samples and
//! output; for the next window it finds how far the signal moved, copies
//! the columns whose samples it has already transformed, and computes the
//! others with [`MelSpec`].
//!
//! Why it compares samples instead of trusting a position the caller
//! gives: a column is reused only when the samples it was computed from
//! are bit for bit the samples it would be computed from now, so the
//! output equals [`MelSpec::compute_into`] exactly, whatever happened to
//! the stream in between (a gap filled with silence, a restarted source, a
//! hop of another size, a window that jumped). Finding the shift costs one
//! comparison per candidate hop multiple, usually failing at the first
//! sample, and one pass over the window when it succeeds: a few
//! microseconds, against about 2 µs per frame saved.
//!
//! Frames that touch the window's padding (the first and last ones when
//! `center` is set) are always computed: their values depend on where the
//! window ends, not only on their samples.

use super::PreError;
use super::mel::{MelConfig, MelSpec};

/// How much work the stream has done and saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MelStreamStats {
    /// Windows computed.
    pub windows: u64,
    /// Frames transformed (FFT, filterbank, logarithm).
    pub frames_computed: u64,
    /// Frames copied from the previous window.
    pub frames_reused: u64,
}

/// A [`MelSpec`] that remembers the previous window.
#[derive(Debug)]
pub struct MelStream {
    spec: MelSpec,
    previous: Vec<f32>,
    previous_out: Vec<f32>,
    /// The shift (in frames) found last time, tried first.
    last_shift: Option<usize>,
    stats: MelStreamStats,
}

impl MelStream {
    /// Plans the underlying [`MelSpec`].
    ///
    /// # Errors
    /// As [`MelSpec::new`].
    pub fn new(config: MelConfig) -> Result<Self, PreError> {
        Ok(MelStream {
            spec: MelSpec::new(config)?,
            previous: Vec::new(),
            previous_out: Vec::new(),
            last_shift: None,
            stats: MelStreamStats::default(),
        })
    }

    pub fn config(&self) -> &MelConfig {
        self.spec.config()
    }

    /// Frames for a window of `samples` samples; see [`MelSpec::frames`].
    ///
    /// # Errors
    /// As [`MelSpec::frames`].
    pub fn frames(&self, samples: usize) -> Result<usize, PreError> {
        self.spec.frames(samples)
    }

    pub fn stats(&self) -> MelStreamStats {
        self.stats
    }

    /// Forgets the previous window: the next one is computed in full.
    pub fn reset(&mut self) {
        self.previous.clear();
        self.previous_out.clear();
        self.last_shift = None;
    }

    /// Features of `signal` into `out`, `[n_mels, frames]` row-major, equal
    /// to [`MelSpec::compute_into`]; returns the frame count. Allocates only
    /// when the window is longer than any before.
    ///
    /// # Errors
    /// As [`MelSpec::compute_into`]. After an error the next window is
    /// computed in full.
    pub fn compute_into(&mut self, signal: &[f32], out: &mut [f32]) -> Result<usize, PreError> {
        let frames = match self.spec.frames(signal.len()) {
            Ok(frames) => frames,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        if let Err(e) = PreError::check_len(
            "mel output buffer",
            out.len(),
            self.spec.config().n_mels * frames,
        ) {
            self.reset();
            return Err(e);
        }
        let shift = self.find_shift(signal);
        self.last_shift = shift;
        let n_mels = self.spec.config().n_mels;
        // The frames inside the part of the window the previous one also
        // held form one run `reused`; the rest are computed.
        let reused = shift.map_or(0..0, |j| self.reusable_frames(signal.len(), frames, j));
        for t in (0..frames).filter(|t| !reused.contains(t)) {
            self.spec.frame_into(signal, t, frames, out);
        }
        if let (Some(j), false) = (shift, reused.is_empty()) {
            for m in 0..n_mels {
                let row = m * frames;
                out[row + reused.start..row + reused.end].copy_from_slice(
                    &self.previous_out[row + reused.start + j..row + reused.end + j],
                );
            }
        }
        self.stats.frames_reused += reused.len() as u64;
        self.stats.frames_computed += (frames - reused.len()) as u64;
        self.stats.windows += 1;
        self.previous.clear();
        self.previous.extend_from_slice(signal);
        self.previous_out.clear();
        self.previous_out.extend_from_slice(out);
        Ok(frames)
    }

    /// The frames of a window of `len` samples shifted by `j` frames whose
    /// samples all lie in what the previous window held (and so none in
    /// the padding).
    fn reusable_frames(&self, len: usize, frames: usize, j: usize) -> std::ops::Range<usize> {
        let n_fft = self.spec.config().n_fft as isize;
        let held = (len - j * self.spec.config().hop_length) as isize;
        let first = (0..frames).find(|&t| self.spec.frame_start(t) >= 0);
        let Some(first) = first else {
            return 0..0;
        };
        let end = (first..frames)
            .find(|&t| self.spec.frame_start(t) + n_fft > held)
            .unwrap_or(frames);
        first..end.max(first)
    }

    /// The smallest shift, in frames, such that `signal` starts with the
    /// previous window minus its first `shift × hop` samples; `None` when
    /// there is no previous window of the same length or nothing matches.
    fn find_shift(&self, signal: &[f32]) -> Option<usize> {
        let len = signal.len();
        if self.previous.len() != len || len == 0 {
            return None;
        }
        let hop = self.spec.config().hop_length;
        let matches = |j: usize| {
            let k = j * hop;
            k < len && same_bits(&self.previous[k..], &signal[..len - k])
        };
        if let Some(j) = self.last_shift.filter(|&j| matches(j)) {
            return Some(j);
        }
        (1..len.div_ceil(hop)).find(|&j| matches(j))
    }
}

/// Bitwise equality, so that `-0.0` and `0.0` (equal as floats, different
/// inputs to the FFT's sign handling) or NaNs never count as the same.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.first().map(|x| x.to_bits()) == b.first().map(|x| x.to_bits())
        && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pre::mel::PadMode;

    /// Seeded noise plus a sweep, so every frame differs.
    fn signal(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05;
                let t = i as f32 / 16_000.0;
                0.3 * (2.0 * std::f32::consts::PI * (200.0 + 50.0 * t) * t).sin() + noise
            })
            .collect()
    }

    fn config(pad: PadMode) -> MelConfig {
        let mut c = MelConfig::new(16_000, 400, 160, 64);
        c.pad_mode = pad;
        c
    }

    /// Slides a 2 s window over `stream` by `hops` (in samples), comparing
    /// the stream's output with a full computation at every hop.
    fn check_stream(stream_samples: &[f32], starts: &[usize], pad: PadMode) -> MelStreamStats {
        let window = 32_000;
        let mut full = MelSpec::new(config(pad)).unwrap();
        let mut inc = MelStream::new(config(pad)).unwrap();
        let frames = full.frames(window).unwrap();
        let mut want = vec![0f32; 64 * frames];
        let mut got = vec![0f32; 64 * frames];
        for (i, &s) in starts.iter().enumerate() {
            let w = &stream_samples[s..s + window];
            full.compute_into(w, &mut want).unwrap();
            inc.compute_into(w, &mut got).unwrap();
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "hop {i} (window at sample {s}): incremental differs from full"
            );
        }
        inc.stats()
    }

    #[test]
    fn steady_hops_reuse_all_but_the_new_frames() {
        let stream = signal(16_000 * 12, 1);
        let starts: Vec<usize> = (0..=40).map(|i| i * 4000).collect();
        let stats = check_stream(&stream, &starts, PadMode::Constant);
        // 201 frames per window; after the first, 25 new + 2 at the start
        // that touch padding + 2 at the end = 29 computed, 172 copied.
        assert_eq!(stats.windows, 41);
        assert_eq!(stats.frames_computed, 201 + 40 * 29);
        assert_eq!(stats.frames_reused, 40 * 172);
    }

    #[test]
    fn gaps_restarts_and_odd_hops_stay_exact() {
        let mut stream = signal(16_000 * 20, 2);
        // A gap: half a second of silence, as a pipeline fills a dropout.
        stream[100_000..108_000].iter_mut().for_each(|x| *x = 0.0);
        // A restart: the source comes back with other audio.
        let other = signal(16_000 * 6, 3);
        stream[160_000..256_000].copy_from_slice(&other);
        let mut starts = Vec::new();
        let mut s = 0;
        // Regular hops, hops that are not a multiple of hop_length, one
        // that jumps past the window, and going backwards.
        for step in [4000, 4000, 160, 3999, 4000, 40_000, 4000, 4000, 8000] {
            starts.push(s);
            s += step;
        }
        for _ in 0..40 {
            starts.push(s);
            s += 4000;
        }
        starts.push(1000);
        starts.push(5000);
        let stats = check_stream(&stream, &starts, PadMode::Constant);
        assert!(stats.frames_reused > 0);
        let reflect = check_stream(&stream, &starts, PadMode::Reflect);
        assert_eq!(reflect.frames_reused, stats.frames_reused);
    }

    #[test]
    fn silence_matches_any_shift_and_stays_exact() {
        let stream = vec![0f32; 16_000 * 5];
        let starts: Vec<usize> = (0..10).map(|i| i * 4000).collect();
        let stats = check_stream(&stream, &starts, PadMode::Constant);
        assert!(stats.frames_reused > 0);
    }

    #[test]
    fn errors_reset_the_stream() {
        let mut inc = MelStream::new(config(PadMode::Constant)).unwrap();
        let w = signal(32_000, 4);
        let mut out = vec![0f32; 64 * 201];
        inc.compute_into(&w, &mut out).unwrap();
        let mut short = vec![0f32; 10];
        assert!(inc.compute_into(&w, &mut short).is_err());
        inc.compute_into(&w, &mut out).unwrap();
        assert_eq!(
            inc.stats().frames_reused,
            0,
            "after an error, a full window"
        );
        assert!(inc.compute_into(&[], &mut out).is_err());
    }
}
