//! The shipped voice activity detector (models/vad/silero_vad_16k.onnx)
//! against the original runtime: tests/fixtures/vad/reference.json holds
//! the speech probability of every 512-sample chunk of
//! speech-silence-noise.wav (espeak-ng speech, digital silence, white
//! noise) as silero-vad's own `OnnxWrapper` computes it on ONNX Runtime
//! (models/vad/make_silero_vad.py). The engine must match it to
//! [`PROBABILITY_TOLERANCE`] on tract and, with the `ort` feature, on ONNX
//! Runtime; then the speech ratio over each part, the windowing of
//! `observe`, and bad input.

use std::path::Path;

use emogate_infer::affect::BackendChoice;
use emogate_infer::pre::resample::resample;
use emogate_infer::vad::{CHUNK, VadError, VadOptions, VoiceDetector};
use emogate_models::onnx::proto::ModelProto;
use emogate_models::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use emogate_models::onnx::proto::type_proto::Value as TypeValue;
use emogate_tests::repo_root as root;
use prost::Message;
use serde_json::Value;

/// Largest difference allowed between a chunk's probability here and in
/// silero-vad's wrapper. Measured on x86-64 (the `eprintln!`s): 7.2e-7 on
/// tract, 1.2e-7 on ONNX Runtime, over 190 chunks of carried state.
const PROBABILITY_TOLERANCE: f32 = 1e-5;
/// The engine's hop: 250 ms at 16 kHz.
const HOP: usize = 4000;

fn model_path() -> std::path::PathBuf {
    root().join("models/vad/silero_vad_16k.onnx")
}

fn detector(backend: &BackendChoice) -> VoiceDetector {
    VoiceDetector::load(&model_path(), backend, VadOptions::default())
        .expect("the shipped detector loads")
}

struct Fixture {
    samples: Vec<f32>,
    probabilities: Vec<f32>,
    /// `[start, end)` of the speech, the silence and the noise.
    segments: [(usize, usize); 3],
}

fn fixture() -> Fixture {
    let dir = root().join("tests/fixtures/vad");
    let mut reader =
        hound::WavReader::open(dir.join("speech-silence-noise.wav")).expect("a readable WAV");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate), (1, 16_000), "{spec:?}");
    let samples = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("a sample")) / 32_768.0)
        .collect();
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let reference: Value = serde_json::from_str(&text).expect("JSON");
    let probabilities = reference["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .map(|p| p.as_f64().expect("a number") as f32)
        .collect();
    let segment = |name: &str| {
        let s = &reference["segments"][name];
        (
            s[0].as_u64().expect("start") as usize,
            s[1].as_u64().expect("end") as usize,
        )
    };
    Fixture {
        samples,
        probabilities,
        segments: [segment("speech"), segment("silence"), segment("noise")],
    }
}

/// Streams the whole WAV in one push and compares every chunk; returns the
/// largest difference.
fn check_against_reference(det: &mut VoiceDetector) -> f32 {
    let f = fixture();
    det.push(&f.samples).expect("runs");
    let got = det.last_probabilities();
    assert_eq!(got.len(), f.samples.len() / CHUNK, "one per whole chunk");
    assert_eq!(got.len(), f.probabilities.len(), "as many as the reference");
    let worst = got
        .iter()
        .zip(&f.probabilities)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= PROBABILITY_TOLERANCE,
        "probabilities differ from silero-vad's by up to {worst}"
    );
    worst
}

#[test]
fn tract_matches_silero_vads_own_wrapper() {
    let mut det = detector(&BackendChoice::default());
    assert_eq!(det.backend_name(), "tract");
    let worst = check_against_reference(&mut det);
    eprintln!("tract: probabilities at most {worst:.2e} from silero-vad's OnnxWrapper");
}

#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_matches_silero_vads_own_wrapper() {
    use emogate_infer::backend::ort::OrtOptions;
    let mut det = detector(&BackendChoice::Ort(OrtOptions::default()));
    assert_eq!(det.backend_name(), "ort");
    let worst = check_against_reference(&mut det);
    eprintln!("ort: probabilities at most {worst:.2e} from silero-vad's OnnxWrapper");
}

/// `(end_sample, speech_ratio)` of every whole window of `window` samples
/// at the engine's hop, as the engine would call `observe`.
fn stream_windows(
    det: &mut VoiceDetector,
    samples: &[f32],
    rate: u32,
    window: usize,
    hop: usize,
) -> Vec<(usize, Option<f32>)> {
    (window..=samples.len())
        .step_by(hop)
        .map(|end| {
            let ratio = det
                .observe(end as u64, &samples[end - window..end], rate)
                .expect("runs");
            (end, ratio)
        })
        .collect()
}

/// The ratios of the windows lying wholly inside each segment: speech,
/// silence, noise. `scale` converts 16 kHz sample indices to the stream's.
fn ratios_by_segment(
    windows: &[(usize, Option<f32>)],
    window: usize,
    segments: &[(usize, usize); 3],
    scale: f64,
) -> [Vec<f32>; 3] {
    segments.map(|(a, b)| {
        let (a, b) = ((a as f64 * scale) as usize, (b as f64 * scale) as usize);
        windows
            .iter()
            .filter(|(end, _)| *end - window >= a && *end <= b)
            .map(|(_, r)| r.expect("a whole window has chunks"))
            .collect()
    })
}

fn assert_speech_then_silence_then_noise(ratios: &[Vec<f32>; 3], what: &str) {
    let [speech, silence, noise] = ratios;
    for (name, values) in [("speech", speech), ("silence", silence), ("noise", noise)] {
        assert!(!values.is_empty(), "{what}: no window wholly in the {name}");
    }
    assert!(
        speech.iter().all(|r| *r >= 0.8),
        "{what}: speech windows {speech:?}"
    );
    assert!(
        silence.iter().all(|r| *r <= 0.1),
        "{what}: silence windows {silence:?}"
    );
    assert!(
        noise.iter().all(|r| *r <= 0.1),
        "{what}: noise windows {noise:?}"
    );
    eprintln!("{what}: speech {speech:?}, silence {silence:?}, noise {noise:?}");
}

/// The proof: speech, then silence, then noise give a speech ratio
/// high, then low, then low (1 s windows at a 250 ms hop: the silence
/// lasts 1.5 s).
#[test]
fn speech_ratio_is_high_over_speech_and_low_over_silence_and_noise() {
    let f = fixture();
    let mut det = detector(&BackendChoice::default());
    let window = 16_000;
    let windows = stream_windows(&mut det, &f.samples, 16_000, window, HOP);
    let ratios = ratios_by_segment(&windows, window, &f.segments, 1.0);
    assert_speech_then_silence_then_noise(&ratios, "16 kHz");
}

/// The same recording at 48 kHz goes through the resampler and gives the
/// same verdicts.
#[test]
fn audio_at_48_khz_is_resampled_and_gives_the_same_verdicts() {
    let f = fixture();
    let samples = resample(&f.samples, 16_000, 48_000).expect("resamples");
    let mut det = detector(&BackendChoice::default());
    let window = 48_000;
    let windows = stream_windows(&mut det, &samples, 48_000, window, 3 * HOP);
    let ratios = ratios_by_segment(&windows, window, &f.segments, 3.0);
    assert_speech_then_silence_then_noise(&ratios, "48 kHz");
}

/// Overlapping windows run each sample once: the chunks they complete are
/// exactly those of one pass, and each window's ratio is the share of the
/// chunks whose last sample lies in it.
#[test]
fn overlapping_windows_give_the_one_pass_results() {
    let f = fixture();
    let mut one_pass = detector(&BackendChoice::default());
    one_pass.push(&f.samples).unwrap();
    let all = one_pass.last_probabilities().to_vec();

    let mut det = detector(&BackendChoice::default());
    let window = 32_000;
    let mut streamed = Vec::new();
    for end in (window..=f.samples.len()).step_by(HOP) {
        let ratio = det
            .observe(end as u64, &f.samples[end - window..end], 16_000)
            .unwrap()
            .expect("a 2 s window has chunks");
        streamed.extend_from_slice(det.last_probabilities());
        // Chunk k ends at sample 512(k + 1) - 1.
        let mine: Vec<f32> = all
            .iter()
            .enumerate()
            .filter(|(k, _)| ((end - window)..end).contains(&((k + 1) * CHUNK - 1)))
            .map(|(_, p)| *p)
            .collect();
        assert!(mine.len() == 62 || mine.len() == 63, "{}", mine.len());
        let want = mine.iter().filter(|p| **p >= 0.5).count() as f32 / mine.len() as f32;
        assert_eq!(ratio, want, "window ending at {end}");
    }
    let n = streamed.len();
    assert!(n + 8 >= all.len(), "{n} of {} chunks", all.len());
    assert_eq!(streamed, all[..n], "overlapping windows vs one pass");
    assert_eq!(det.chunks(), n as u64);
}

/// Dropped windows (a gap) or a restarted stream reset the detector: the
/// next window is run whole, from a zero state, exactly as by a fresh one.
#[test]
fn a_gap_or_a_restart_resets_the_stream() {
    let f = fixture();
    let window = 32_000;
    let mut det = detector(&BackendChoice::default());
    det.observe(window as u64, &f.samples[..window], 16_000)
        .unwrap();
    let fresh = |end: usize| {
        let mut d = detector(&BackendChoice::default());
        let ratio = d
            .observe(end as u64, &f.samples[end - window..end], 16_000)
            .unwrap();
        (ratio, d.last_probabilities().to_vec())
    };
    for end in [window + 40_000, window + 8_000] {
        // 40 000: the window starts 8000 samples after the last one ended.
        // Then 8000: it ends before the last one did (a restart).
        let ratio = det
            .observe(end as u64, &f.samples[end - window..end], 16_000)
            .unwrap();
        let (want_ratio, want) = fresh(end);
        assert_eq!(det.last_probabilities(), want, "window ending at {end}");
        assert_eq!(ratio, want_ratio);
        assert_eq!(
            det.chunks(),
            (window / CHUNK) as u64,
            "counted from the reset"
        );
    }
    // The same window again: nothing new to run, the same ratio.
    let end = window + 8_000;
    let again = det
        .observe(end as u64, &f.samples[end - window..end], 16_000)
        .unwrap();
    assert!(det.last_probabilities().is_empty());
    assert_eq!(again, fresh(end).0);
}

#[test]
fn a_short_window_has_no_ratio_until_a_chunk_is_whole() {
    let f = fixture();
    let mut det = detector(&BackendChoice::default());
    assert_eq!(det.observe(100, &f.samples[..100], 16_000).unwrap(), None);
    let ratio = det.observe(600, &f.samples[..600], 16_000).unwrap();
    assert_eq!(det.last_probabilities().len(), 1);
    assert!(ratio.is_some());
}

#[test]
fn nan_and_out_of_range_samples_do_not_panic_or_poison_the_state() {
    let f = fixture();
    let mut det = detector(&BackendChoice::default());
    let mut bad = vec![f32::NAN; 8_000];
    bad.extend([f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30].repeat(1000));
    let ratio = det.observe(bad.len() as u64, &bad, 16_000).unwrap();
    assert!(ratio.is_some_and(f32::is_finite), "{ratio:?}");
    assert!(det.last_probabilities().iter().all(|p| p.is_finite()));
    // Speech right after is still found.
    let speech = &f.samples[..32_000];
    let end = bad.len() as u64 + speech.len() as u64;
    let ratio = det.observe(end, speech, 16_000).unwrap().unwrap();
    assert!(ratio >= 0.7, "speech after bad samples: {ratio}");
}

#[test]
fn sample_rate_zero_and_impossible_positions_are_refused() {
    let mut det = detector(&BackendChoice::default());
    let err = det.observe(16_000, &[0.0; 16_000], 0).unwrap_err();
    assert!(matches!(err, VadError::SampleRate { rate: 0 }), "{err}");
    let err = det.observe(10, &[0.0; 16_000], 16_000).unwrap_err();
    assert!(
        matches!(
            err,
            VadError::Window {
                end_sample: 10,
                len: 16_000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("end_sample"), "{err}");
    // A ratio no standard device clock has.
    let err = det.observe(16_000, &[0.0; 16_000], 44_057).unwrap_err();
    assert!(matches!(err, VadError::Pre(_)), "{err}");
}

#[test]
fn a_face_detector_is_not_a_vad() {
    let path = root().join("models/face/blazeface-short.onnx");
    let err = VoiceDetector::load(&path, &BackendChoice::default(), VadOptions::default())
        .expect_err("BlazeFace is no VAD");
    let text = err.to_string();
    assert!(matches!(err, VadError::NotAVad { .. }), "{text}");
    assert!(
        text.contains("blazeface-short.onnx"),
        "names the file: {text}"
    );
    assert!(text.contains("expected"), "says what was expected: {text}");
}

/// The shipped model with its probability output declared `[1, 3]`: the
/// error names that output.
#[test]
fn a_model_with_the_wrong_output_shape_is_refused_naming_the_output() {
    let bytes = std::fs::read(model_path()).unwrap();
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let output = graph
        .output
        .iter_mut()
        .find(|o| o.name() == "output")
        .expect("an output named `output`");
    let Some(TypeValue::TensorType(t)) = output.r#type.as_mut().unwrap().value.as_mut() else {
        panic!("a tensor output")
    };
    t.shape.as_mut().unwrap().dim[1].value = Some(Dim::DimValue(3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three-outputs.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let err = VoiceDetector::load(&path, &BackendChoice::default(), VadOptions::default())
        .expect_err("not a VAD");
    let text = err.to_string();
    assert!(matches!(err, VadError::NotAVad { .. }), "{text}");
    assert!(text.contains("`output`"), "names the output: {text}");
    assert!(text.contains("[?, 3]"), "gives its shape: {text}");
    assert!(
        text.contains("three-outputs.onnx"),
        "names the file: {text}"
    );
}

#[test]
fn a_file_that_is_not_onnx_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vad.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let err = VoiceDetector::load(&path, &BackendChoice::default(), VadOptions::default())
        .expect_err("garbage");
    assert!(err.to_string().contains("vad.onnx"), "{err}");
}

#[test]
fn thresholds_outside_0_to_1_are_refused() {
    for threshold in [1.5, -0.1, f32::NAN] {
        let err = VoiceDetector::load(
            Path::new(&model_path()),
            &BackendChoice::default(),
            VadOptions { threshold },
        )
        .expect_err("out of range");
        assert!(matches!(err, VadError::Option { .. }), "{err}");
    }
}
