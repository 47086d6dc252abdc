//! Voice activity: how much of an audio window is speech. A brief overview:
//!
//! * [`VoiceDetector`] — Silero VAD (`models/vad/silero_vad_16k.onnx`) on
//!   the same runtimes as the affect model (tract, or ONNX Runtime with the
//!   `ort` feature). It runs on 16 kHz audio in chunks of [`CHUNK`] samples
//!   (32 ms), each preceded by the [`CONTEXT`] samples before it (Silero v5
//!   and later), and carries the LSTM state `[2, 1, 128]` from chunk to
//!   chunk: one speech probability per chunk.
//! * [`VoiceDetector::push`] streams 16 kHz samples: whole chunks are run,
//!   the rest waits for the next call.
//! * [`VoiceDetector::observe`] is what the engine calls once per affect
//!   window: it runs only the samples the stream has not seen (windows
//!   overlap), resamples other rates to 16 kHz, starts over after a gap,
//!   and returns the window's `speech_ratio`: the fraction of its chunks
//!   whose probability reaches [`VadOptions::threshold`].
//!
//! Per chunk the detector allocates nothing of its own once warm: the model
//! inputs are refilled in place and the state copied back into them. The
//! runtime allocates its tensors per run ([`crate::backend::Backend::run`]
//! takes and returns owned tensors); at 7.8 chunks per 250 ms hop that is
//! part of the measured cost (docs/benchmarks.md, "Voice activity").
//!
//! The model is the 16 kHz branch of the If-free export in the `silero-vad`
//! 6.2.3 wheel (MIT, Silero Team), cut out by `models/vad/make_silero_vad.py`,
//! which also records what silero-vad's own wrapper computes on a spoken
//! fixture; tests/tests/vad.rs holds the engine to it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use emogate_models::manifest::value_dims;
use emogate_models::onnx::{OnnxModel, runtime_inputs};

use crate::affect::BackendChoice;
use crate::backend::{Backend, BackendError, InputFact};
use crate::pre::PreError;
use crate::pre::resample::Resampler;
use crate::{Tensor, TensorData};

/// The rate the model runs at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per chunk at 16 kHz: one probability each (32 ms).
pub const CHUNK: usize = 512;
/// Samples of the previous chunk put before each chunk (zeros at the start).
pub const CONTEXT: usize = 64;
/// The LSTM state: h and c, one batch, 128 units.
pub const STATE_SHAPE: [usize; 3] = [2, 1, 128];
const STATE_LEN: usize = 2 * 128;
const INPUT_LEN: usize = CONTEXT + CHUNK;

/// Errors of loading and running a voice activity detector.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error(transparent)]
    Model(#[from] emogate_models::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Pre(#[from] PreError),
    /// The file is an ONNX model, but not the 16 kHz Silero VAD.
    #[error("{}: not a Silero VAD 16 kHz model: {what}", path.display())]
    NotAVad { path: PathBuf, what: String },
    #[error("voice activity option `{field}` = {value}: expected {expected}")]
    Option {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("voice activity: audio sample rate {rate} Hz: expected a positive rate")]
    SampleRate { rate: u32 },
    #[error(
        "voice activity: a window of {len} samples cannot end at sample {end_sample}: \
         expected end_sample to be at least the window's length"
    )]
    Window { end_sample: u64, len: u64 },
}

/// How probabilities become a speech ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadOptions {
    /// A chunk whose probability is at least this is speech (Silero: 0.5).
    pub threshold: f32,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions { threshold: 0.5 }
    }
}

/// Where the windows handed to [`VoiceDetector::observe`] have got to.
#[derive(Debug, Clone, Copy)]
struct Stream {
    rate: u32,
    /// Absolute input sample where the detector's 16 kHz stream started
    /// (its chunk 0 begins here).
    origin: u64,
    /// One past the last input sample pushed.
    seen_end: u64,
    /// The longest window seen: how much chunk history to keep.
    longest: u64,
}

/// A loaded voice activity detector with its stream state; one per audio
/// stream.
pub struct VoiceDetector {
    path: PathBuf,
    backend: Box<dyn Backend>,
    options: VadOptions,
    /// `[input [1, 576], state [2, 1, 128]]`, in graph order, refilled in
    /// place for every chunk.
    inputs: Vec<Tensor>,
    /// Which of `inputs` is the audio (the other is the state).
    audio_input: usize,
    /// Output positions of the probability and the next state.
    outputs: (usize, usize),
    /// Samples of the chunk being gathered, after the context.
    pending: usize,
    /// Chunks run since the last reset.
    chunks: u64,
    /// Probabilities of the chunks the last `push`/`observe` completed.
    recent: Vec<f32>,
    stream: Option<Stream>,
    /// For input at another rate than 16 kHz, and its output buffer.
    resampler: Option<(u32, Resampler)>,
    resampled: Vec<f32>,
    /// `(last input sample, probability)` of recent chunks, oldest first.
    history: VecDeque<(u64, f32)>,
}

impl std::fmt::Debug for VoiceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector")
            .field("path", &self.path)
            .field("backend", &self.backend.name())
            .field("options", &self.options)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl VoiceDetector {
    /// Loads the detector at `path` on `backend`.
    ///
    /// # Errors
    /// [`VadError::Model`] for a file that is not a readable ONNX model;
    /// [`VadError::NotAVad`] naming the input or output whose shape does
    /// not fit (inputs: audio `[1, 576]` and state `[2, 1, 128]`; outputs:
    /// probability `[1, 1]` and state `[2, 1, 128]`); [`VadError::Option`]
    /// for a threshold outside 0–1; [`VadError::Backend`] when the runtime
    /// refuses the model.
    pub fn load(
        path: &Path,
        backend: &BackendChoice,
        options: VadOptions,
    ) -> Result<Self, VadError> {
        if !(0.0..=1.0).contains(&options.threshold) {
            return Err(VadError::Option {
                field: "threshold",
                value: options.threshold.to_string(),
                expected: "a number from 0 to 1",
            });
        }
        let onnx = OnnxModel::load(path)?;
        let not_a_vad = |what: String| VadError::NotAVad {
            path: path.to_path_buf(),
            what,
        };
        let (audio_input, outputs) = check_graph(&onnx).map_err(not_a_vad)?;
        let mut facts = vec![InputFact::F32(STATE_SHAPE.to_vec()); 2];
        facts[audio_input] = InputFact::F32(vec![1, INPUT_LEN]);
        let backend = backend.runtime().load(&onnx, None, &facts)?;
        let mut inputs = vec![Tensor::f32(STATE_SHAPE.to_vec(), vec![0.0; STATE_LEN]); 2];
        inputs[audio_input] = Tensor::f32(vec![1, INPUT_LEN], vec![0.0; INPUT_LEN]);
        Ok(VoiceDetector {
            path: path.to_path_buf(),
            backend,
            options,
            inputs,
            audio_input,
            outputs,
            pending: 0,
            chunks: 0,
            recent: Vec::new(),
            stream: None,
            resampler: None,
            resampled: Vec::new(),
            history: VecDeque::new(),
        })
    }

    /// `tract` or `ort`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn options(&self) -> VadOptions {
        self.options
    }

    /// Starts a new stream: zero state and context, no pending samples, no
    /// history.
    pub fn reset(&mut self) {
        for input in &mut self.inputs {
            if let TensorData::F32(values) = &mut input.data {
                values.fill(0.0);
            }
        }
        self.pending = 0;
        self.chunks = 0;
        self.recent.clear();
        self.stream = None;
        if let Some((_, resampler)) = &mut self.resampler {
            resampler.reset();
        }
        self.history.clear();
    }

    /// Feeds 16 kHz samples that continue the stream. Every chunk they
    /// complete is run (its probability is in
    /// [`VoiceDetector::last_probabilities`]); the samples after the last
    /// whole chunk wait for the next call. Non-finite samples count as 0
    /// and samples beyond ±1 as ±1 (clipping), so one bad sample cannot
    /// poison the recurrent state.
    ///
    /// Use either `push` or [`VoiceDetector::observe`] on one detector
    /// (or [`VoiceDetector::reset`] between them): `observe` keeps its own
    /// account of where the stream is.
    ///
    /// # Errors
    /// [`VadError::Backend`] when inference fails; [`VadError::NotAVad`]
    /// when the model returns outputs of other sizes than it declared.
    pub fn push(&mut self, samples: &[f32]) -> Result<(), VadError> {
        self.recent.clear();
        self.feed(samples)
    }

    /// Probabilities of the chunks completed by the last
    /// [`VoiceDetector::push`] or [`VoiceDetector::observe`], in order.
    pub fn last_probabilities(&self) -> &[f32] {
        &self.recent
    }

    /// Chunks run since the last reset (after a gap, `observe` resets).
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The speech ratio of an audio window: `window` holds the last
    /// `window.len()` samples, at `sample_rate`, of a stream whose sample
    /// `end_sample - 1` is the window's last (absolute indices from the
    /// stream's start). Returns `None` when the window holds no whole chunk
    /// yet (it is shorter than 32 ms, or the resampler still holds its
    /// samples).
    ///
    /// * Only samples after the previous call's `end_sample` are run
    ///   (windows overlap); a window that starts after the previous one
    ///   ended (windows were dropped), ends before it (the stream
    ///   restarted), or comes at another rate resets the detector and runs
    ///   the whole window, with its chunks starting at the window's first
    ///   sample.
    /// * Other rates than 16 kHz are resampled to 16 kHz
    ///   ([`crate::pre::resample`]), which holds back the filter's
    ///   look-ahead: the last few milliseconds of a window are counted with
    ///   the next one.
    /// * Which chunks belong to a window: a chunk counts for a window when
    ///   its **last** sample lies in the window (at 16 kHz: chunk `k` of the
    ///   stream covers samples `origin + 512k .. origin + 512(k + 1)`). So a
    ///   chunk that begins before the window's first sample but ends inside
    ///   it counts; the partial chunk at the window's end, not yet run,
    ///   does not (it counts in the next window). A 2 s window at 16 kHz
    ///   thus has 62 or 63 chunks.
    /// * `speech_ratio` = (chunks with probability ≥ `threshold`) / (chunks
    ///   of the window).
    ///
    /// # Errors
    /// [`VadError::SampleRate`] for rate 0; [`VadError::Pre`] for a rate
    /// the resampler refuses (an odd ratio); [`VadError::Window`] when
    /// `window` holds more samples than `end_sample`; as
    /// [`VoiceDetector::push`] otherwise (the detector then resets: the
    /// next call starts a new stream).
    pub fn observe(
        &mut self,
        end_sample: u64,
        window: &[f32],
        sample_rate: u32,
    ) -> Result<Option<f32>, VadError> {
        if sample_rate == 0 {
            return Err(VadError::SampleRate { rate: sample_rate });
        }
        let len = window.len() as u64;
        let start = end_sample
            .checked_sub(len)
            .ok_or(VadError::Window { end_sample, len })?;
        let continues = self.stream.is_some_and(|s| {
            s.rate == sample_rate && start <= s.seen_end && end_sample >= s.seen_end
        });
        if !continues {
            self.reset();
            if sample_rate != SAMPLE_RATE
                && self
                    .resampler
                    .as_ref()
                    .is_none_or(|(r, _)| *r != sample_rate)
            {
                self.resampler = Some((sample_rate, Resampler::new(sample_rate, SAMPLE_RATE)?));
            }
            self.stream = Some(Stream {
                rate: sample_rate,
                origin: start,
                seen_end: start,
                longest: 0,
            });
        }
        let Some(mut stream) = self.stream else {
            unreachable!("set above when absent")
        };
        let new = &window[(stream.seen_end - start) as usize..];
        self.recent.clear();
        let first_chunk = self.chunks;
        let fed = if sample_rate == SAMPLE_RATE {
            self.feed(new)
        } else {
            let mut resampled = std::mem::take(&mut self.resampled);
            resampled.clear();
            if let Some((_, resampler)) = &mut self.resampler {
                resampler.process(new, &mut resampled);
            }
            let fed = self.feed(&resampled);
            self.resampled = resampled;
            fed
        };
        if let Err(e) = fed {
            // Part of the new samples may have run: start over next time
            // rather than run them twice.
            self.reset();
            return Err(e);
        }
        stream.seen_end = end_sample;
        stream.longest = stream.longest.max(len);
        self.stream = Some(stream);
        let rate = u64::from(sample_rate);
        for (k, p) in (first_chunk..).zip(self.recent.iter().copied()) {
            // The chunk's last 16 kHz sample, as an input sample index.
            let last16 = (k + 1) * CHUNK as u64 - 1;
            let last = stream.origin + last16 * rate / u64::from(SAMPLE_RATE);
            self.history.push_back((last, p));
        }
        let keep_from = end_sample.saturating_sub(stream.longest);
        while self
            .history
            .front()
            .is_some_and(|(last, _)| *last < keep_from)
        {
            self.history.pop_front();
        }
        let (mut chunks, mut speech) = (0u32, 0u32);
        for &(last, p) in &self.history {
            if (start..end_sample).contains(&last) {
                chunks += 1;
                speech += u32::from(p >= self.options.threshold);
            }
        }
        Ok((chunks > 0).then(|| speech as f32 / chunks as f32))
    }

    /// Runs every chunk `samples` completes, appending to `recent`.
    fn feed(&mut self, mut samples: &[f32]) -> Result<(), VadError> {
        while !samples.is_empty() {
            let take = (CHUNK - self.pending).min(samples.len());
            let at = CONTEXT + self.pending;
            let TensorData::F32(audio) = &mut self.inputs[self.audio_input].data else {
                unreachable!("built as f32")
            };
            for (slot, &x) in audio[at..at + take].iter_mut().zip(&samples[..take]) {
                *slot = if x.is_nan() { 0.0 } else { x.clamp(-1.0, 1.0) };
            }
            self.pending += take;
            samples = &samples[take..];
            if self.pending == CHUNK {
                let p = self.run_chunk()?;
                self.recent.push(p);
                self.pending = 0;
                self.chunks += 1;
            }
        }
        Ok(())
    }

    /// Runs the model on the assembled context + chunk, keeps the new
    /// state, and moves the chunk's tail into the context.
    fn run_chunk(&mut self) -> Result<f32, VadError> {
        let outputs = self.backend.run(&self.inputs)?;
        let bad = |i: usize, what: &str, len: usize| VadError::NotAVad {
            path: self.path.clone(),
            what: format!("output {i} ({what}) is not {len} f32 values at run time"),
        };
        let (p_at, state_at) = self.outputs;
        let p = outputs
            .get(p_at)
            .and_then(Tensor::as_f32)
            .filter(|v| v.len() == 1)
            .ok_or_else(|| bad(p_at, "speech probability", 1))?[0];
        let state = outputs
            .get(state_at)
            .and_then(Tensor::as_f32)
            .filter(|v| v.len() == STATE_LEN)
            .ok_or_else(|| bad(state_at, "state", STATE_LEN))?;
        let state_input = 1 - self.audio_input;
        if let TensorData::F32(v) = &mut self.inputs[state_input].data {
            v.copy_from_slice(state);
        }
        if let TensorData::F32(audio) = &mut self.inputs[self.audio_input].data {
            audio.copy_within(INPUT_LEN - CONTEXT.., 0);
        }
        Ok(p)
    }
}

/// The position of the audio input among the runtime inputs, and of the
/// probability and state among the outputs; or what does not fit.
fn check_graph(onnx: &OnnxModel) -> Result<(usize, (usize, usize)), String> {
    let graph = onnx.graph();
    let inputs: Vec<_> = runtime_inputs(graph).collect();
    let fits = |dims: &[Option<i64>], want: &[i64]| {
        dims.len() == want.len()
            && dims
                .iter()
                .zip(want)
                .all(|(d, w)| d.is_none_or(|d| d == *w))
    };
    let audio_shape = [1, INPUT_LEN as i64];
    let state_shape = [2, 1, 128];
    let expected_inputs = "two inputs: audio [1, 576] (64 context + 512 samples at 16 kHz) and \
                           state [2, 1, 128] (the 16 kHz model that models/vad/make_silero_vad.py \
                           writes; the wheel's silero_vad.onnx also takes `sr`)";
    if inputs.len() != 2 {
        return Err(format!(
            "{} inputs ({}), expected {expected_inputs}",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let (mut audio, mut state) = (None, None);
    for (i, input) in inputs.iter().enumerate() {
        let dims = value_dims(input).unwrap_or_default();
        if fits(&dims, &audio_shape) && audio.is_none() {
            audio = Some(i);
        } else if fits(&dims, &state_shape) && state.is_none() {
            state = Some(i);
        } else {
            return Err(format!(
                "input `{}` has shape {}, expected [1, 576] (audio) or [2, 1, 128] (state)",
                input.name(),
                show(&dims)
            ));
        }
    }
    let (Some(audio), Some(_)) = (audio, state) else {
        return Err(format!("expected {expected_inputs}"));
    };
    if graph.output.len() != 2 {
        return Err(format!(
            "{} outputs, expected 2: speech probability [1, 1] and state [2, 1, 128]",
            graph.output.len()
        ));
    }
    let mut found = (None, None);
    for (i, output) in graph.output.iter().enumerate() {
        let dims = value_dims(output).unwrap_or_default();
        if fits(&dims, &[1, 1]) && found.0.is_none() {
            found.0 = Some(i);
        } else if fits(&dims, &state_shape) && found.1.is_none() {
            found.1 = Some(i);
        } else {
            return Err(format!(
                "output `{}` has shape {}, expected [1, 1] (speech probability) or [2, 1, 128] (state)",
                output.name(),
                show(&dims)
            ));
        }
    }
    match found {
        (Some(p), Some(s)) => Ok((audio, (p, s))),
        _ => Err(format!(
            "outputs {} and {}: expected one [1, 1] (speech probability) and one [2, 1, 128] (state)",
            graph.output[0].name(),
            graph.output[1].name()
        )),
    }
}

fn show(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// A few chunks against silero-vad's own wrapper: cheap enough to run
    /// emulated on aarch64 (scripts/test-aarch64), where tract uses its
    /// NEON kernels. tests/tests/vad.rs checks the whole fixture.
    #[test]
    fn the_first_chunks_match_silero_vads_wrapper() {
        let dir = repo().join("tests/fixtures/vad");
        let mut reader = hound::WavReader::open(dir.join("speech-silence-noise.wav")).unwrap();
        let chunks = 12;
        let samples: Vec<f32> = reader
            .samples::<i16>()
            .take(chunks * CHUNK + 100)
            .map(|s| f32::from(s.unwrap()) / 32_768.0)
            .collect();
        let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: Vec<f64> = reference["probabilities"].as_array().unwrap()[..chunks]
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        let mut det = VoiceDetector::load(
            &repo().join("models/vad/silero_vad_16k.onnx"),
            &BackendChoice::default(),
            VadOptions::default(),
        )
        .unwrap();
        // In uneven pieces: chunks are assembled across calls.
        let mut got = Vec::new();
        for piece in samples.chunks(700) {
            det.push(piece).unwrap();
            got.extend_from_slice(det.last_probabilities());
        }
        assert_eq!(got.len(), chunks);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5,
                "chunk {k}: {g}, silero-vad's wrapper {w}"
            );
        }
        // Speech starts in chunk 2 of the fixture.
        assert!(got[2] > 0.5 && got[0] < 0.5, "{got:?}");
    }

    #[test]
    fn the_shipped_model_has_audio_then_state_in_and_probability_then_state_out() {
        let onnx = OnnxModel::load(repo().join("models/vad/silero_vad_16k.onnx")).unwrap();
        assert_eq!(check_graph(&onnx), Ok((0, (0, 1))));
    }
}
