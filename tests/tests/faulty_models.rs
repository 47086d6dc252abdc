//! The faulty models of `emogate_tests::faulty_models` do what their docs
//! say, through the same `Featurizer` and `AffectModel` the engine uses:
//! NaN exactly for the marked seconds, an inference error for every
//! window, a forward pass that does not return. What `emogate run` then
//! does with them is tested by the engine's end-to-end tests.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use emogate_infer::affect::{AffectError, AffectModel, BackendChoice, ModelSpec};
use emogate_infer::backend::BackendError;
use emogate_infer::{Featurizer, Tensor};
use emogate_models::manifest::Manifest;
use emogate_models::onnx::OnnxModel;
use emogate_tests::faulty_models::{
    self, BLOCKING_LINKS, BLOCKING_SIZE, INPUT, LABELS, NAN_HOP_MS, WINDOW_SAMPLES,
};
use emogate_tests::{fixtures, repo_root};

/// Seconds of the NaN recording: runs of one and of several NaN windows,
/// and finite windows between them.
const PATTERN: [bool; 8] = [false, true, false, true, true, true, false, false];

fn load(path: &Path, backend: BackendChoice) -> AffectModel {
    AffectModel::load(&ModelSpec {
        path: path.to_path_buf(),
        backend,
        ..ModelSpec::default()
    })
    .unwrap_or_else(|e| panic!("{} should load: {e}", path.display()))
}

/// A 16-bit mono WAV as the engine reads it (`i16 / 32768`).
fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).expect("a readable WAV");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate), (1, 16_000), "{spec:?}");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("a sample")) / 32_768.0)
        .collect()
}

/// The model inputs of every whole window at a hop of `hop` samples, built
/// by the featurizer the engine uses.
fn windows(model: &AffectModel, samples: &[f32], hop: usize) -> Vec<Vec<Tensor>> {
    let mut featurizer = Featurizer::new(model.manifest()).expect("a featurizer");
    (0..)
        .map(|k| k * hop)
        .take_while(|start| start + WINDOW_SAMPLES <= samples.len())
        .map(|start| {
            featurizer
                .build(None, Some(&samples[start..start + WINDOW_SAMPLES]))
                .expect("preprocessing a whole window succeeds")
        })
        .collect()
}

/// Whether each window's logits are NaN, checking that a window is all NaN
/// or all finite and has one value per label; and the finite logits.
fn nan_windows(model: &mut AffectModel, windows: &[Vec<Tensor>]) -> (Vec<bool>, Vec<Vec<f32>>) {
    let mut finite = Vec::new();
    let nan = windows
        .iter()
        .enumerate()
        .map(|(k, inputs)| {
            let out = model.run(inputs).expect("the NaN model runs");
            let logits = out[0].as_f32().expect("f32 logits");
            assert_eq!(logits.len(), LABELS.len(), "window {k}");
            let nan = logits.iter().all(|v| v.is_nan());
            assert!(
                nan || logits.iter().all(|v| v.is_finite()),
                "window {k}: {logits:?}"
            );
            if !nan {
                finite.push(logits.to_vec());
            }
            nan
        })
        .collect();
    (nan, finite)
}

#[test]
fn every_model_carries_a_manifest_that_fits_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let reference = OnnxModel::load(repo_root().join("models/reference/emogate-ref.onnx")).unwrap();
    let labels = Manifest::from_model(&reference).unwrap().unwrap().labels;
    assert_eq!(labels, LABELS, "the reference model's labels changed");
    for path in [
        faulty_models::write_nan_model(dir.path()),
        faulty_models::write_failing_model(dir.path()),
        faulty_models::write_blocking_model(dir.path()),
    ] {
        // Small enough that nothing big hides in an initializer.
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 256 * 1024, "{}: {size} bytes", path.display());
        let onnx = OnnxModel::load(&path).unwrap();
        let manifest = Manifest::from_model(&onnx).unwrap().expect("embedded");
        manifest.check_against(&onnx).unwrap();
        assert_eq!(manifest.inputs.len(), 1);
        assert_eq!(manifest.inputs[0].name(), INPUT);
        assert_eq!(
            Manifest::input_shape(&manifest.inputs[0]),
            vec![1, WINDOW_SAMPLES]
        );
        assert_eq!(manifest.labels, LABELS);
    }
}

#[test]
fn nan_model_is_nan_exactly_for_the_marked_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(
        &faulty_models::write_nan_model(dir.path()),
        BackendChoice::default(),
    );
    assert_eq!(model.manifest().hop_ms, Some(NAN_HOP_MS));
    let samples = read_wav(&faulty_models::write_nan_wav(dir.path(), &PATTERN));
    assert_eq!(samples.len(), PATTERN.len() * WINDOW_SAMPLES);
    let hop = (NAN_HOP_MS / 1000.0 * 16_000.0) as usize;
    let inputs = windows(&model, &samples, hop);
    let (nan, finite) = nan_windows(&mut model, &inputs);
    assert_eq!(nan, PATTERN);
    // Finite windows all read the same DC (+0.25), so they agree.
    for logits in &finite[1..] {
        let diff = emogate_tests::max_abs_diff(logits, &finite[0]);
        assert!(diff < 1e-3, "{logits:?} vs {:?}", finite[0]);
    }

    // Windows cut up to 0.4 s late (an engine whose first window is off
    // the second) keep the pattern.
    for late in [160, 1_600, 6_400] {
        let inputs = windows(&model, &samples[late..], hop);
        let (nan, _) = nan_windows(&mut model, &inputs);
        assert_eq!(nan, PATTERN[..PATTERN.len() - 1], "{late} samples late");
    }

    // Silence (the engine's zero fill) is finite.
    let silence = Featurizer::new(model.manifest())
        .unwrap()
        .build(None, None)
        .unwrap();
    assert_eq!(nan_windows(&mut model, &[silence]).0, [false]);
}

/// Every window fails in the model, never in preprocessing.
fn assert_every_window_fails(model: &mut AffectModel, samples: &[f32]) -> usize {
    let inputs = windows(model, samples, WINDOW_SAMPLES / 4);
    assert!(!inputs.is_empty());
    for (k, window) in inputs.iter().enumerate() {
        match model.run(window) {
            Err(AffectError::Backend(BackendError::Run { message, .. })) => {
                if k == 0 {
                    eprintln!("{}: {message}", model.backend_name());
                }
            }
            other => panic!(
                "window {k}: expected an inference error, got {:?}",
                other.map(|o| o[0].shape.clone())
            ),
        }
    }
    inputs.len()
}

/// Speech, the NaN recording, silence and full scale: nothing gets through.
fn failing_inputs(dir: &Path) -> Vec<f32> {
    let mut samples = read_wav(&fixtures().join("sample/voice.wav"));
    samples.extend(read_wav(&faulty_models::write_nan_wav(dir, &PATTERN)));
    samples.extend(std::iter::repeat_n(0.0, WINDOW_SAMPLES));
    samples.extend((0..WINDOW_SAMPLES).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }));
    samples
}

#[test]
fn failing_model_fails_every_window_at_inference() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(
        &faulty_models::write_failing_model(dir.path()),
        BackendChoice::default(),
    );
    let n = assert_every_window_fails(&mut model, &failing_inputs(dir.path()));
    assert!(n > 40, "{n} windows");
}

#[test]
fn blocking_model_loads_at_once_and_its_forward_pass_does_not_return() {
    let dir = tempfile::tempdir().unwrap();
    let window = vec![Tensor::f32(
        vec![1, WINDOW_SAMPLES],
        read_wav(&faulty_models::write_nan_wav(dir.path(), &[false]))[..WINDOW_SAMPLES].to_vec(),
    )];

    // One product's time, from chains of one and two, before the blocked
    // pass competes for the CPU. The difference cancels what every chain
    // does once (the gain, the table, the last product, which tract narrows
    // to the seven columns it returns); the fastest of three runs is the
    // least disturbed by other work on the machine.
    let per_link = forward_time(&dir.path().join("two"), 2, &window).saturating_sub(forward_time(
        &dir.path().join("one"),
        1,
        &window,
    ));

    let started = Instant::now();
    let mut model = load(
        &faulty_models::write_blocking_model(dir.path()),
        BackendChoice::default(),
    );
    let load_time = started.elapsed();
    let estimate = per_link * BLOCKING_LINKS as u32;
    eprintln!(
        "blocking model: loaded in {load_time:?}; {per_link:?} a product, about {estimate:?} a forward pass"
    );
    assert!(
        load_time < Duration::from_secs(10),
        "loaded in {load_time:?}"
    );

    let (tx, rx) = mpsc::channel();
    // Never joined: the pass outlives the test, and the process's exit
    // ends it.
    std::thread::spawn(move || {
        let _ = tx.send(model.run(&window).map(|_| ()).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(3)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("the forward pass returned within 3 s: {other:?}"),
    }
    assert!(
        estimate >= Duration::from_secs(60),
        "a forward pass would take only about {estimate:?}"
    );
}

/// The fastest of three forward passes of a `links`-product chain.
fn forward_time(dir: &Path, links: usize, window: &[Tensor]) -> Duration {
    let mut model = load(
        &faulty_models::write_matmul_chain(dir, BLOCKING_SIZE, links),
        BackendChoice::default(),
    );
    (0..3)
        .map(|_| {
            let started = Instant::now();
            model.run(window).unwrap();
            started.elapsed()
        })
        .min()
        .expect("three runs")
}

/// ONNX Runtime sees the same NaN windows and the same inference errors.
#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_agrees_on_nan_and_failing_models() {
    use emogate_infer::backend::ort::{OrtOptions, Provider};
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!("ORT_DYLIB_PATH is not set: ONNX Runtime not checked");
        return;
    }
    let ort = || {
        BackendChoice::Ort(OrtOptions {
            providers: vec![Provider::Cpu],
            ..OrtOptions::default()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&faulty_models::write_nan_model(dir.path()), ort());
    assert_eq!(model.backend_name(), "ort");
    let samples = read_wav(&faulty_models::write_nan_wav(dir.path(), &PATTERN));
    let inputs = windows(&model, &samples, WINDOW_SAMPLES);
    assert_eq!(nan_windows(&mut model, &inputs).0, PATTERN);

    let mut model = load(&faulty_models::write_failing_model(dir.path()), ort());
    assert_every_window_fails(&mut model, &failing_inputs(dir.path()));
}
