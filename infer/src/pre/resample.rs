//! Band-limited sample-rate conversion between any two integer rates.
//!
//! Devices capture at 44.1 or 48 kHz (sometimes 8 kHz) while affect models
//! are trained at 16 kHz. Dropping or interpolating samples would alias
//! everything above the new Nyquist frequency back into the speech band, so
//! this is a proper polyphase windowed-sinc filter:
//!
//! * The ratio `to/from` is reduced to `L/M`. Output sample `n` sits at
//!   input time `n·M/L`, whose fractional part is one of `L` phases; each
//!   phase has its own precomputed row of taps.
//! * The low-pass cutoff is `rolloff · min(from, to) / 2` — below the
//!   lower Nyquist frequency, so the Kaiser transition band ends before it.
//! * Each row is normalized to sum to 1, so DC passes with gain exactly 1.
//!
//! [`Resampler::process`] keeps the input history between calls, so feeding
//! a stream in chunks of any size gives exactly the samples one call gives.
//!
//! Why not rubato: measured by `infer/tests/resampler_vs_rubato.rs` (48 kHz
//! in 10 ms microphone periods to 16 kHz). rubato's `Fft` resampler rejects
//! aliases far better (−146 to −153 dB for a 10 kHz tone, against −92 dB
//! here, which is already below 16-bit noise), but each of its settings
//! with a flat passband adds more latency (p50 7.5 ms with 5 ms chunks,
//! 10 ms with 10 ms chunks, against 6.4 ms here; 2 ms chunks cut it to
//! 6.0 ms but lose 10 dB at 5 kHz), and it takes fixed-size chunks only,
//! where the pipeline hands over whatever the ring holds at each hop.

use std::f64::consts::PI;

use super::PreError;

/// Filter design parameters. The defaults pass 0–0.77·Nyquist flat
/// (0–6.2 kHz at 16 kHz) and attenuate everything that would alias by
/// about 80 dB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResamplerConfig {
    /// Sinc zero crossings on each side of the centre: longer filters give
    /// a narrower transition band at the cost of taps and latency.
    pub zero_crossings: usize,
    /// Cutoff as a fraction of the lower Nyquist frequency, in (0, 1].
    pub rolloff: f64,
    /// Kaiser window β: 8 puts side lobes near −80 dB.
    pub kaiser_beta: f64,
}

impl Default for ResamplerConfig {
    fn default() -> Self {
        ResamplerConfig {
            zero_crossings: 20,
            rolloff: 0.88,
            kaiser_beta: 8.0,
        }
    }
}

/// More phases than this means a ratio such as 16000/44056; rates that
/// odd come from a mis-measured clock and are reported, not approximated.
const MAX_PHASES: usize = 4096;

/// A streaming resampler from one rate to another.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Reduced ratio: `up` output samples for every `down` input samples.
    up: usize,
    down: usize,
    /// Half the taps per phase; a phase reads input `base−half+1 ..= base+half`.
    half: usize,
    /// `up` rows of `2·half` taps.
    table: Vec<f32>,
    /// Pending input; `buf[pos]` is the input sample at the next output's base.
    buf: Vec<f32>,
    pos: usize,
    phase: usize,
    /// Real input samples since the last reset, which fixes the output length.
    consumed: u64,
    passthrough: bool,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz with the default filter.
    ///
    /// # Errors
    /// As [`Resampler::with_config`].
    pub fn new(from: u32, to: u32) -> Result<Self, PreError> {
        Self::with_config(from, to, ResamplerConfig::default())
    }

    /// A resampler with an explicit filter design.
    ///
    /// # Errors
    /// [`PreError::Invalid`] for a zero rate, a rolloff outside (0, 1], no
    /// zero crossings, or a ratio that reduces to more than 4096 phases.
    pub fn with_config(from: u32, to: u32, config: ResamplerConfig) -> Result<Self, PreError> {
        if from == 0 || to == 0 {
            return Err(PreError::invalid(
                "resampling rate",
                format!("{from} Hz → {to} Hz"),
                "both rates positive",
            ));
        }
        if !(config.rolloff > 0.0 && config.rolloff <= 1.0) {
            return Err(PreError::invalid(
                "resampler rolloff",
                config.rolloff,
                "in (0, 1]",
            ));
        }
        if config.zero_crossings == 0 || !config.kaiser_beta.is_finite() {
            return Err(PreError::invalid(
                "resampler zero crossings / Kaiser β",
                format!("{} / {}", config.zero_crossings, config.kaiser_beta),
                "at least 1 / finite",
            ));
        }
        let g = gcd(from, to);
        let (up, down) = ((to / g) as usize, (from / g) as usize);
        if up > MAX_PHASES {
            return Err(PreError::invalid(
                "resampling ratio",
                format!("{to}/{from} = {up}/{down}"),
                format!(
                    "at most {MAX_PHASES} phases (a standard rate such as 8000, 16000, 44100 or 48000)"
                ),
            ));
        }
        // Normalized cutoff c (cycles per input sample ×2): sinc(c·t) has its
        // zero crossings every 1/c input samples.
        let c = config.rolloff * f64::from(from.min(to)) / f64::from(from);
        let width = config.zero_crossings as f64 / c;
        let half = width.ceil() as usize;
        let taps = 2 * half;
        let mut table = vec![0f32; up * taps];
        let norm = bessel_i0(config.kaiser_beta);
        let mut weights = Vec::with_capacity(taps);
        for (p, row) in table.chunks_exact_mut(taps).enumerate() {
            weights.clear();
            weights.extend((0..taps).map(|i| {
                let t = p as f64 / up as f64 + (half - 1) as f64 - i as f64;
                let x = t / width;
                if x.abs() >= 1.0 {
                    return 0.0;
                }
                let window = bessel_i0(config.kaiser_beta * (1.0 - x * x).sqrt()) / norm;
                c * sinc(c * t) * window
            }));
            let sum: f64 = weights.iter().sum();
            for (tap, w) in row.iter_mut().zip(&weights) {
                *tap = (w / sum) as f32;
            }
        }
        let mut r = Resampler {
            up,
            down,
            half,
            table,
            buf: Vec::new(),
            pos: 0,
            phase: 0,
            consumed: 0,
            passthrough: from == to,
        };
        r.reset();
        Ok(r)
    }

    /// Input samples held back before the output covering them can be
    /// computed: the filter's look-ahead.
    pub fn delay(&self) -> usize {
        if self.passthrough { 0 } else { self.half }
    }

    /// Forgets all history, as if newly created.
    pub fn reset(&mut self) {
        self.buf.clear();
        // The signal is taken as silent before its first sample.
        self.buf.resize(self.half.saturating_sub(1), 0.0);
        self.pos = self.buf.len();
        self.phase = 0;
        self.consumed = 0;
    }

    /// Appends to `out` every output sample that `input` (after all earlier
    /// input) makes computable. Allocates only while its history buffer
    /// grows to the largest chunk seen, and when `out` lacks capacity.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.consumed += input.len() as u64;
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        self.drain(out);
    }

    /// Ends the stream: appends the last outputs (the signal is taken as
    /// silent after its last sample), for `ceil(n·to/from)` outputs in all
    /// for `n` inputs, then resets.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        if !self.passthrough {
            // Outputs whose base is before the end need `half` samples past it.
            self.buf.resize(self.buf.len() + self.half, 0.0);
            self.drain(out);
        }
        self.reset();
    }

    /// Computes outputs while the input they need is buffered.
    fn drain(&mut self, out: &mut Vec<f32>) {
        let taps = 2 * self.half;
        out.reserve((self.buf.len().saturating_sub(self.pos)) * self.up / self.down + 1);
        while self.pos + self.half < self.buf.len() {
            let row = &self.table[self.phase * taps..(self.phase + 1) * taps];
            let x = &self.buf[self.pos + 1 - self.half..self.pos + 1 + self.half];
            out.push(x.iter().zip(row).map(|(a, b)| a * b).sum());
            self.phase += self.down;
            self.pos += self.phase / self.up;
            self.phase %= self.up;
        }
        // Keep only what the next output reads.
        let keep_from = (self.pos + 1).saturating_sub(self.half).min(self.buf.len());
        self.buf.drain(..keep_from);
        self.pos -= keep_from;
    }
}

/// Resamples a whole signal at once: `ceil(len·to/from)` samples, aligned
/// so output sample `n` is the signal at time `n/to`.
///
/// # Errors
/// As [`Resampler::new`].
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, PreError> {
    let mut r = Resampler::new(from, to)?;
    let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 1);
    r.process(input, &mut out);
    r.flush(&mut out);
    Ok(out)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series; it
/// converges fast for the β ≤ 20 windows use).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    let q = x * x / 4.0;
    while term > sum * 1e-17 {
        term *= q / (k * k);
        sum += term;
        k += 1.0;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, len: usize, amp: f64) -> Vec<f32> {
        (0..len)
            .map(|n| (amp * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    /// Amplitude and phase of `freq` in `x` by correlation (a single DFT bin).
    fn measure(x: &[f32], freq: f64, rate: u32) -> (f64, f64) {
        let (mut s, mut c) = (0.0, 0.0);
        for (n, v) in x.iter().enumerate() {
            let w = 2.0 * PI * freq * n as f64 / f64::from(rate);
            s += f64::from(*v) * w.sin();
            c += f64::from(*v) * w.cos();
        }
        let k = 2.0 / x.len() as f64;
        ((s * k).hypot(c * k), (c * k).atan2(s * k))
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Resamples a 1 kHz tone and checks it against the ideal tone at the
    /// output rate, away from the edges where the silent padding shows.
    fn check_1khz(from: u32, to: u32) {
        let input = tone(1000.0, from, from as usize, 0.5);
        let out = resample(&input, from, to).expect("valid rates");
        assert_eq!(
            out.len(),
            to as usize,
            "{from}→{to}: one second in, one out"
        );
        // 500 whole cycles from sample `to/4` on.
        let window = &out[to as usize / 4..to as usize / 4 + to as usize / 2];
        let (amp, _) = measure(window, 1000.0, to);
        assert!((amp - 0.5).abs() < 0.005, "{from}→{to}: amplitude {amp}");
        let ideal = tone(1000.0, to, out.len(), 0.5);
        let err: Vec<f32> = out.iter().zip(&ideal).map(|(a, b)| a - b).collect();
        let err = rms(&err[to as usize / 4..3 * to as usize / 4]);
        assert!(
            err < 1e-3,
            "{from}→{to}: rms error {err} against the ideal tone"
        );
    }

    #[test]
    fn tone_48k_to_16k_keeps_frequency_amplitude_and_phase() {
        check_1khz(48_000, 16_000);
    }

    #[test]
    fn tone_44k1_to_16k_and_8k_to_16k() {
        check_1khz(44_100, 16_000);
        check_1khz(8_000, 16_000);
        check_1khz(16_000, 44_100);
    }

    #[test]
    fn tone_above_output_nyquist_is_attenuated_40_db() {
        // 9 kHz would alias to 7 kHz at 16 kHz.
        let input = tone(9000.0, 48_000, 48_000, 0.5);
        let out = resample(&input, 48_000, 16_000).expect("valid rates");
        let level = rms(&out[4000..12_000]) / (0.5 / 2f64.sqrt());
        let db = 20.0 * level.log10();
        assert!(db < -40.0, "9 kHz leaks at {db:.1} dB");
    }

    #[test]
    fn chunked_equals_one_shot() {
        let input = tone(440.0, 44_100, 20_000, 0.8);
        let whole = resample(&input, 44_100, 16_000).expect("valid rates");
        let mut r = Resampler::new(44_100, 16_000).expect("valid rates");
        let mut chunked = Vec::new();
        let mut rest = input.as_slice();
        for size in [1usize, 7, 100, 0, 333, 4096, 2].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            r.process(chunk, &mut chunked);
            rest = tail;
        }
        r.flush(&mut chunked);
        assert_eq!(chunked, whole);
        // After a flush the resampler starts over.
        let mut again = Vec::new();
        r.process(&input, &mut again);
        r.flush(&mut again);
        assert_eq!(again, whole);
    }

    #[test]
    fn identity_ratio_passes_through() {
        let input = tone(1234.0, 16_000, 1000, 0.3);
        assert_eq!(resample(&input, 16_000, 16_000).expect("same rate"), input);
        assert_eq!(
            Resampler::new(16_000, 16_000).expect("same rate").delay(),
            0
        );
    }

    #[test]
    fn dc_passes_with_unit_gain() {
        let out = resample(&[0.25; 3000], 48_000, 16_000).expect("valid rates");
        assert!(out[200..800].iter().all(|v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn bad_rates_are_rejected() {
        let err = Resampler::new(0, 16_000).expect_err("zero rate");
        assert!(err.to_string().contains("0 Hz → 16000 Hz"), "{err}");
        let err = Resampler::new(44_057, 16_000).expect_err("odd clock");
        assert!(err.to_string().contains("phases"), "{err}");
    }

    /// The 44.1 kHz stereo fixture's left channel is soxr's resampling of
    /// `signal.wav`; resampling it back must land on the original, in time.
    #[test]
    fn soxr_fixture_round_trips() {
        use crate::pre::read_wav_fixture;
        use std::path::Path;
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/engine/logmel/"
        );
        let (rate, channels, stereo) =
            read_wav_fixture(Path::new(&format!("{dir}signal_44k1_stereo_i16.wav")));
        assert_eq!((rate, channels, stereo.len()), (44_100, 2, 2 * 88_200));
        let peak = stereo.iter().step_by(2).fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(peak, 20_369.0 / 32_768.0);
        let left: Vec<f32> = stereo.iter().step_by(2).copied().collect();
        let (_, _, original) = read_wav_fixture(Path::new(&format!("{dir}signal.wav")));
        let back = resample(&left, 44_100, 16_000).expect("valid rates");
        assert_eq!(back.len(), original.len());
        let err: Vec<f32> = back.iter().zip(&original).map(|(a, b)| a - b).collect();
        let (err, level) = (rms(&err[1000..31_000]), rms(&original[1000..31_000]));
        // The residue is the white noise above our 6.2 kHz passband edge.
        assert!(
            err < 0.01 && err / level < 0.03,
            "rms error {err} on a signal of rms {level}"
        );
    }
}
