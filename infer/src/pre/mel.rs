//! Log-mel spectrograms computed the way `librosa.feature.melspectrogram`
//! computes them, so a model trained on librosa features sees the same
//! numbers on the device.
//!
//! The steps, each mirroring librosa (0.10+) including its numerical
//! choices where they change the result:
//!
//! 1. Centre padding by `n_fft/2` on both sides (zeros or numpy `reflect`).
//! 2. Frames every `hop_length` samples, times a periodic Hann window of
//!    `win_length` centred in `n_fft` (`scipy.signal.get_window('hann',
//!    N, fftbins=True)`).
//! 3. `|rfft|^power`, computed in f64 as numpy does for f64 windows.
//! 4. A mel filterbank built exactly like `librosa.filters.mel` (weights
//!    rounded to f32, as librosa stores them), then `log(x + log_offset)`.
//!
//! A [`MelSpec`] owns its FFT plan, window, filterbank and scratch, so
//! [`MelSpec::compute_into`] allocates nothing.
//!
//! Why our own rather than a crate's log-mel: the property that matters is
//! equality with librosa, which the models are trained with (filterbank to
//! 1e-6, log-mel to 1e-3 against fixtures written by librosa, tested
//! below); the FFT itself is realfft's (rustfft's, for a real input: half
//! the work of a complex FFT of the same length).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;

use emogate_models::manifest::LogMel;
// The manifest's mel scale, filter norm, padding and log kinds, used as is.
pub use emogate_models::manifest::{LogKind, MelNorm, MelScale, PadMode};

use super::PreError;

/// Log-mel parameters, named as in librosa.
#[derive(Debug, Clone, PartialEq)]
pub struct MelConfig {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    /// Hann window length, at most `n_fft`; centred in the FFT frame.
    pub win_length: usize,
    pub n_mels: usize,
    pub fmin: f32,
    pub fmax: f32,
    pub mel_scale: MelScale,
    pub norm: MelNorm,
    /// 2 for power, 1 for magnitude.
    pub power: f32,
    pub center: bool,
    pub pad_mode: PadMode,
    pub log: LogKind,
    /// Added before the logarithm so silence stays finite; must be > 0
    /// unless `log` is [`LogKind::None`].
    pub log_offset: f32,
}

impl MelConfig {
    /// librosa's defaults for everything but the four sizes: full band,
    /// Slaney scale and norm, power 2, centred with zero padding, and no
    /// logarithm (set `log` and `log_offset` for log-mel).
    pub fn new(sample_rate: u32, n_fft: usize, hop_length: usize, n_mels: usize) -> Self {
        MelConfig {
            sample_rate,
            n_fft,
            hop_length,
            win_length: n_fft,
            n_mels,
            fmin: 0.0,
            fmax: sample_rate as f32 / 2.0,
            mel_scale: MelScale::Slaney,
            norm: MelNorm::Slaney,
            power: 2.0,
            center: true,
            pad_mode: PadMode::Constant,
            log: LogKind::None,
            log_offset: 1e-6,
        }
    }

    /// The configuration a manifest's log-mel features describe, for audio
    /// at `sample_rate` (the manifest's audio input rate). The Hann window
    /// spans `n_fft`; values are checked by [`MelSpec::new`].
    pub fn from_manifest(mel: &LogMel, sample_rate: u32) -> Self {
        MelConfig {
            sample_rate,
            n_fft: mel.n_fft,
            hop_length: mel.hop_length,
            win_length: mel.n_fft,
            n_mels: mel.n_mels,
            fmin: mel.fmin,
            fmax: mel.fmax,
            mel_scale: mel.mel_scale,
            norm: mel.norm,
            power: mel.power,
            center: mel.center,
            pad_mode: mel.pad_mode,
            log: mel.log,
            log_offset: mel.log_offset,
        }
    }

    fn check(&self) -> Result<(), PreError> {
        let positive = [
            ("mel sample_rate", self.sample_rate as usize),
            ("mel n_fft", self.n_fft),
            ("mel hop_length", self.hop_length),
            ("mel n_mels", self.n_mels),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(PreError::invalid(what, 0, "positive"));
            }
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return Err(PreError::invalid(
                "mel win_length",
                self.win_length,
                format!("in 1..={} (n_fft)", self.n_fft),
            ));
        }
        let nyquist = self.sample_rate as f32 / 2.0;
        if !(self.fmin >= 0.0 && self.fmin < self.fmax && self.fmax <= nyquist) {
            return Err(PreError::invalid(
                "mel fmin..fmax",
                format!("{}..{}", self.fmin, self.fmax),
                format!("0 ≤ fmin < fmax ≤ sample_rate/2 = {nyquist}"),
            ));
        }
        if !(self.power.is_finite() && self.power > 0.0) {
            return Err(PreError::invalid(
                "mel power",
                self.power,
                "positive (2 power, 1 magnitude)",
            ));
        }
        let offset_ok = match self.log {
            LogKind::None => self.log_offset.is_finite() && self.log_offset >= 0.0,
            LogKind::Ln | LogKind::Log10 => self.log_offset.is_finite() && self.log_offset > 0.0,
        };
        if !offset_ok {
            return Err(PreError::invalid(
                "mel log_offset",
                self.log_offset,
                "positive and finite, so log(0 + offset) of silence is finite",
            ));
        }
        Ok(())
    }
}

/// A planned log-mel extractor.
pub struct MelSpec {
    config: MelConfig,
    fft: Arc<dyn RealToComplex<f64>>,
    /// Periodic Hann of `win_length`, zero-padded to `n_fft`.
    window: Vec<f64>,
    /// `[n_mels, n_fft/2 + 1]` row-major, as `librosa.filters.mel` returns.
    filters: Vec<f32>,
    /// Per mel band, the bins where its filter is non-zero.
    spans: Vec<std::ops::Range<usize>>,
    /// The windowed frame (the FFT's input, clobbered by it).
    frame: Vec<f64>,
    /// Its `n_fft/2 + 1` bins.
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl std::fmt::Debug for MelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelSpec")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MelSpec {
    /// Plans the FFT and builds the window and filterbank.
    ///
    /// # Errors
    /// [`PreError::Invalid`] naming the parameter that is out of range.
    pub fn new(config: MelConfig) -> Result<Self, PreError> {
        config.check()?;
        let n_fft = config.n_fft;
        let fft = RealFftPlanner::new().plan_fft_forward(n_fft);
        let mut window = vec![0.0; n_fft];
        let lpad = (n_fft - config.win_length) / 2;
        let n = config.win_length as f64;
        for (i, w) in window[lpad..lpad + config.win_length]
            .iter_mut()
            .enumerate()
        {
            *w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        }
        let filters = mel_filters(
            config.sample_rate,
            n_fft,
            config.n_mels,
            config.fmin,
            config.fmax,
            config.mel_scale,
            config.norm,
        );
        let n_bins = n_fft / 2 + 1;
        let spans = filters
            .chunks_exact(n_bins)
            .map(|row| {
                let start = row.iter().position(|w| *w != 0.0).unwrap_or(0);
                let end = row.iter().rposition(|w| *w != 0.0).map_or(start, |e| e + 1);
                start..end
            })
            .collect();
        let scratch_len = fft.get_scratch_len();
        Ok(MelSpec {
            config,
            fft,
            window,
            filters,
            spans,
            frame: vec![0.0; n_fft],
            spectrum: vec![Complex::default(); n_bins],
            scratch: vec![Complex::default(); scratch_len],
            power: vec![0.0; n_bins],
        })
    }

    pub fn config(&self) -> &MelConfig {
        &self.config
    }

    /// The filterbank, `[n_mels, n_fft/2 + 1]` row-major.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// Frames for a signal of `samples` samples: `1 + samples/hop` when
    /// centred (for even `n_fft`), `1 + (samples − n_fft)/hop` otherwise.
    ///
    /// # Errors
    /// [`PreError::Invalid`] for an empty signal, or one shorter than
    /// `n_fft` when not centred (librosa refuses both).
    pub fn frames(&self, samples: usize) -> Result<usize, PreError> {
        let c = &self.config;
        let padded = if c.center {
            samples + 2 * (c.n_fft / 2)
        } else {
            samples
        };
        if samples == 0 || padded < c.n_fft {
            return Err(PreError::invalid(
                "mel input length",
                samples,
                format!("at least {} samples", if c.center { 1 } else { c.n_fft }),
            ));
        }
        Ok(1 + (padded - c.n_fft) / c.hop_length)
    }

    /// Features of `signal` into `out`, `[n_mels, frames]` row-major;
    /// returns the frame count.
    ///
    /// # Errors
    /// As [`MelSpec::frames`]; [`PreError::BufferSize`] if `out` is not
    /// `n_mels × frames` long.
    pub fn compute_into(&mut self, signal: &[f32], out: &mut [f32]) -> Result<usize, PreError> {
        let frames = self.frames(signal.len())?;
        PreError::check_len("mel output buffer", out.len(), self.config.n_mels * frames)?;
        for t in 0..frames {
            self.frame_into(signal, t, frames, out);
        }
        Ok(frames)
    }

    /// Where frame `t` starts in `signal`; negative, or reaching past its
    /// end, where the frame covers padding.
    pub(crate) fn frame_start(&self, t: usize) -> isize {
        let pad = if self.config.center {
            (self.config.n_fft / 2) as isize
        } else {
            0
        };
        (t * self.config.hop_length) as isize - pad
    }

    /// Column `t` of the `[n_mels, frames]` output: one windowed FFT, the
    /// power spectrum, the filterbank and the logarithm. Each frame
    /// depends on its own samples only, which is what lets
    /// [`MelStream`](super::mel_stream::MelStream) reuse the columns of the
    /// previous window.
    ///
    /// The caller has checked `frames` against the signal and `out`.
    pub(crate) fn frame_into(&mut self, signal: &[f32], t: usize, frames: usize, out: &mut [f32]) {
        let start = self.frame_start(t);
        for (i, (slot, w)) in self.frame.iter_mut().zip(&self.window).enumerate() {
            let x = sample_at(signal, start + i as isize, self.config.pad_mode);
            *slot = f64::from(x) * w;
        }
        // The lengths are the plan's own, so this cannot fail.
        let planned =
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch);
        debug_assert!(planned.is_ok());
        let power = f64::from(self.config.power);
        for (p, x) in self.power.iter_mut().zip(&self.spectrum) {
            *p = if power == 2.0 {
                x.norm_sqr()
            } else {
                x.norm().powf(power)
            };
        }
        let n_bins = self.power.len();
        let offset = f64::from(self.config.log_offset);
        for (m, span) in self.spans.iter().enumerate() {
            let row = &self.filters[m * n_bins + span.start..m * n_bins + span.end];
            let energy: f64 = row
                .iter()
                .zip(&self.power[span.clone()])
                .map(|(w, p)| f64::from(*w) * p)
                .sum();
            out[m * frames + t] = match self.config.log {
                LogKind::Ln => (energy + offset).ln(),
                LogKind::Log10 => (energy + offset).log10(),
                LogKind::None => energy,
            } as f32;
        }
    }

    /// Features of `signal` in a new buffer; see [`MelSpec::compute_into`].
    ///
    /// # Errors
    /// As [`MelSpec::frames`].
    pub fn compute(&mut self, signal: &[f32]) -> Result<Vec<f32>, PreError> {
        let mut out = vec![0.0; self.config.n_mels * self.frames(signal.len())?];
        self.compute_into(signal, &mut out)?;
        Ok(out)
    }
}

/// The padded signal at `index` (which may lie before or after it).
fn sample_at(signal: &[f32], index: isize, mode: PadMode) -> f32 {
    let len = signal.len() as isize;
    if (0..len).contains(&index) {
        return signal[index as usize];
    }
    match mode {
        PadMode::Constant => 0.0,
        PadMode::Reflect if len == 1 => signal[0],
        PadMode::Reflect => {
            // numpy's repeated reflection is the mirror image with period 2(len−1).
            let period = 2 * (len - 1);
            let i = index.rem_euclid(period);
            signal[(if i < len { i } else { period - i }) as usize]
        }
    }
}

/// Hz to mel, as `librosa.hz_to_mel`.
pub fn hz_to_mel(hz: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + hz / 700.0).log10(),
        MelScale::Slaney => {
            let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
            let min_log_mel = min_log_hz / f_sp;
            if hz >= min_log_hz {
                min_log_mel + (hz / min_log_hz).ln() / (6.4f64.ln() / 27.0)
            } else {
                hz / f_sp
            }
        }
    }
}

/// Mel to Hz, as `librosa.mel_to_hz`.
pub fn mel_to_hz(mel: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(mel / 2595.0) - 1.0),
        MelScale::Slaney => {
            let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
            let min_log_mel = min_log_hz / f_sp;
            if mel >= min_log_mel {
                min_log_hz * ((6.4f64.ln() / 27.0) * (mel - min_log_mel)).exp()
            } else {
                f_sp * mel
            }
        }
    }
}

/// `np.linspace(start, stop, num)`, including its exact endpoint.
fn linspace(start: f64, stop: f64, num: usize) -> impl Iterator<Item = f64> {
    let step = (stop - start) / (num.max(2) - 1) as f64;
    (0..num).map(move |i| {
        if i + 1 == num && num > 1 {
            stop
        } else {
            i as f64 * step + start
        }
    })
}

/// The mel filterbank `[n_mels, n_fft/2 + 1]`, as `librosa.filters.mel`
/// (float32 output) builds it: triangles between consecutive points of a
/// mel-spaced grid, from the ramps of the FFT bin frequencies.
pub fn mel_filters(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    fmin: f32,
    fmax: f32,
    scale: MelScale,
    norm: MelNorm,
) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    // np.fft.rfftfreq(n_fft, 1/sr)
    let val = 1.0 / (n_fft as f64 * (1.0 / f64::from(sample_rate)));
    let fftfreqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * val).collect();
    let mel_f: Vec<f64> = linspace(
        hz_to_mel(f64::from(fmin), scale),
        hz_to_mel(f64::from(fmax), scale),
        n_mels + 2,
    )
    .map(|m| mel_to_hz(m, scale))
    .collect();
    let mut weights = vec![0f32; n_mels * n_bins];
    for (i, row) in weights.chunks_exact_mut(n_bins).enumerate() {
        let (lo, mid, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
        let enorm = match norm {
            MelNorm::Slaney => Some(2.0 / (hi - lo)),
            MelNorm::None => None,
        };
        for (w, f) in row.iter_mut().zip(&fftfreqs) {
            let lower = -(lo - f) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            // librosa stores the triangle as float32, then scales in place.
            let tri = 0f64.max(lower.min(upper)) as f32;
            *w = enorm.map_or(tri, |e| (f64::from(tri) * e) as f32);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scale: MelScale) -> MelConfig {
        MelConfig {
            mel_scale: scale,
            log: LogKind::Ln,
            ..MelConfig::new(16_000, 400, 160, 64)
        }
    }

    #[test]
    fn mel_scales_match_librosa_values() {
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0, MelScale::Slaney) - 7.5).abs() < 1e-12);
        // librosa.hz_to_mel(4000) = 15 + ln(4)/(ln(6.4)/27)
        let expected = 15.0 + 4f64.ln() / (6.4f64.ln() / 27.0);
        assert!((hz_to_mel(4000.0, MelScale::Slaney) - expected).abs() < 1e-12);
        assert!((hz_to_mel(700.0, MelScale::Htk) - 2595.0 * 2f64.log10()).abs() < 1e-9);
        for hz in [0.0, 300.0, 999.0, 1000.0, 6000.0, 8000.0] {
            for scale in [MelScale::Slaney, MelScale::Htk] {
                assert!((mel_to_hz(hz_to_mel(hz, scale), scale) - hz).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn filterbank_shape_and_unit_area() {
        for scale in [MelScale::Slaney, MelScale::Htk] {
            let fb = mel_filters(16_000, 400, 64, 0.0, 8000.0, scale, MelNorm::Slaney);
            assert_eq!(fb.len(), 64 * 201);
            // Slaney norm gives each triangle unit area in Hz: sum × bin width
            // ≈ 1 once triangles span many bins (a fine FFT grid).
            let fine = mel_filters(16_000, 8192, 64, 0.0, 8000.0, scale, MelNorm::Slaney);
            for (m, row) in fine.chunks_exact(4097).enumerate() {
                let area = row.iter().sum::<f32>() * 16_000.0 / 8192.0;
                assert!((area - 1.0).abs() < 0.01, "{scale:?} band {m}: area {area}");
            }
            let peaked = mel_filters(16_000, 400, 64, 0.0, 8000.0, scale, MelNorm::None);
            for row in peaked.chunks_exact(201) {
                let max = row.iter().copied().fold(0.0, f32::max);
                assert!(max > 0.0 && max <= 1.0);
            }
        }
    }

    #[test]
    fn frame_count_follows_librosa() {
        let spec = MelSpec::new(config(MelScale::Slaney)).expect("valid config");
        assert_eq!(spec.frames(32_000).expect("non-empty"), 201);
        assert_eq!(spec.frames(159).expect("non-empty"), 1);
        assert!(spec.frames(0).is_err());
        let uncentred = MelSpec::new(MelConfig {
            center: false,
            ..config(MelScale::Slaney)
        })
        .expect("valid config");
        assert_eq!(uncentred.frames(400).expect("one frame"), 1);
        assert_eq!(uncentred.frames(720).expect("three frames"), 3);
        assert!(uncentred.frames(399).is_err());
    }

    #[test]
    fn pure_tone_peaks_in_its_band() {
        let mut spec = MelSpec::new(config(MelScale::Slaney)).expect("valid config");
        let tone: Vec<f32> = (0..16_000)
            .map(|n| (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 16_000.0).sin() as f32)
            .collect();
        let out = spec.compute(&tone).expect("non-empty");
        let frames = 101;
        let t = 50;
        let band = (0..64)
            .max_by(|a, b| out[a * frames + t].total_cmp(&out[b * frames + t]))
            .expect("64 bands");
        // The band whose centre is nearest 1 kHz.
        let mels: Vec<f64> = linspace(0.0, hz_to_mel(8000.0, MelScale::Slaney), 66)
            .map(|m| mel_to_hz(m, MelScale::Slaney))
            .collect();
        let nearest = (0..64)
            .min_by(|a, b| {
                (mels[a + 1] - 1000.0)
                    .abs()
                    .total_cmp(&(mels[b + 1] - 1000.0).abs())
            })
            .expect("64 bands");
        assert_eq!(band, nearest);
    }

    #[test]
    fn silence_is_log_offset_and_buffers_are_checked() {
        let mut spec = MelSpec::new(config(MelScale::Htk)).expect("valid config");
        let out = spec.compute(&[0.0; 800]).expect("non-empty");
        let floor = (1e-6f64).ln() as f32;
        assert!(out.iter().all(|v| *v == floor));
        let err = spec
            .compute_into(&[0.0; 800], &mut [0.0; 10])
            .expect_err("short buffer");
        assert_eq!(
            err.to_string(),
            "mel output buffer holds 10 values; expected 384"
        );
    }

    #[test]
    fn reflect_padding_matches_numpy() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let padded: Vec<f32> = (-5..9)
            .map(|i| sample_at(&x, i, PadMode::Reflect))
            .collect();
        // np.pad([1,2,3,4], 5, 'reflect')
        assert_eq!(
            padded,
            [
                2.0, 3.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0
            ]
        );
        assert_eq!(sample_at(&[7.0], -3, PadMode::Reflect), 7.0);
        assert_eq!(sample_at(&x, -1, PadMode::Constant), 0.0);
    }

    #[test]
    fn config_from_manifest_features() {
        let mel: LogMel = serde_json::from_str(
            r#"{"n_fft": 400, "hop_length": 160, "n_mels": 64, "fmin": 0.0, "fmax": 8000.0,
                "mel_scale": "slaney", "log": "ln"}"#,
        )
        .expect("valid log-mel features");
        // The manifest's defaults are librosa's, as are MelConfig::new's.
        assert_eq!(
            MelConfig::from_manifest(&mel, 16_000),
            config(MelScale::Slaney)
        );
        let mel = LogMel {
            mel_scale: MelScale::Htk,
            log: LogKind::Log10,
            pad_mode: PadMode::Reflect,
            norm: MelNorm::None,
            center: false,
            power: 1.0,
            log_offset: 1e-10,
            fmin: 20.0,
            fmax: 7600.0,
            ..mel
        };
        let c = MelConfig::from_manifest(&mel, 16_000);
        assert_eq!(
            (c.mel_scale, c.log, c.pad_mode, c.norm, c.center),
            (
                MelScale::Htk,
                LogKind::Log10,
                PadMode::Reflect,
                MelNorm::None,
                false
            )
        );
        assert_eq!(
            (c.power, c.log_offset, c.fmin, c.fmax),
            (1.0, 1e-10, 20.0, 7600.0)
        );
        assert_eq!((c.win_length, c.sample_rate), (400, 16_000));
        MelSpec::new(c).expect("valid config");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = MelSpec::new(MelConfig {
            fmax: 9000.0,
            ..config(MelScale::Slaney)
        })
        .expect_err("fmax above Nyquist");
        assert!(
            err.to_string().starts_with("mel fmin..fmax is 0..9000"),
            "{err}"
        );
        let err = MelSpec::new(MelConfig {
            log_offset: 0.0,
            ..config(MelScale::Slaney)
        })
        .expect_err("log of zero");
        assert!(err.to_string().starts_with("mel log_offset is 0"), "{err}");
        assert!(MelSpec::new(MelConfig::new(16_000, 400, 0, 64)).is_err());
    }

    // -- librosa fixtures (tools/fixtures/make_engine_fixtures.py) --

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/engine/logmel/"
    );

    /// A `[rows][cols]` array of the fixture JSON under `key`, flattened.
    fn fixture_rows(file: &str, key: &str) -> (Vec<f32>, usize) {
        let path = format!("{FIXTURES}{file}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let rows = json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no array `{key}`"));
        let cols = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
        let flat = rows
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap_or_else(|| panic!("{path}: ragged `{key}`"))
            })
            .map(|v| {
                v.as_f64()
                    .unwrap_or_else(|| panic!("{path}: non-number in `{key}`"))
                    as f32
            })
            .collect();
        (flat, cols)
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn check_fixture(scale: MelScale, name: &str) {
        let (filters, cols) = fixture_rows(&format!("mel_filters_{name}.json"), "filters");
        assert_eq!(cols, 201);
        let mut spec = MelSpec::new(config(scale)).expect("valid config");
        let fb_diff = max_abs_diff(spec.filters(), &filters);
        let (rate, channels, samples) =
            super::super::read_wav_fixture(std::path::Path::new(&format!("{FIXTURES}signal.wav")));
        assert_eq!((rate, channels, samples.len()), (16_000, 1, 32_000));
        let (expected, frames) = fixture_rows(&format!("logmel_{name}.json"), "logmel");
        let out = spec.compute(&samples).expect("non-empty");
        assert_eq!(out.len(), 64 * frames);
        let diff = max_abs_diff(&out, &expected);
        eprintln!("{name}: filterbank max |diff| {fb_diff:e}, log-mel max |diff| {diff:e}");
        assert!(fb_diff <= 1e-6, "{name} filterbank differs by {fb_diff}");
        assert!(diff <= 1e-3, "{name} log-mel differs by {diff}");
    }

    #[test]
    fn matches_librosa_slaney() {
        check_fixture(MelScale::Slaney, "slaney");
    }

    #[test]
    fn matches_librosa_htk() {
        check_fixture(MelScale::Htk, "htk");
    }
}
