//! The training transform is the runtime transform: the reference
//! experiment's numpy preprocessing (`models/reference/prep.py`, used to
//! train the base and every affect-tuned run) and the engine's featurizer
//! give the same model inputs for the same media files, to 1e-5.
//!
//! `tests/fixtures/prep/` (written by `models/reference/make_prep_fixture.py`)
//! holds SynthAffect faces (96x96 gray PNG) and voices (2 s 16 kHz 16-bit WAV)
//! with prep.py's features in `features.npz`. Here the files are read the way
//! `emogate run` reads them (device's PNG and WAV readers) and featurized
//! with the reference model's embedded manifest.

use std::path::Path;
use std::sync::Arc;

use emogate_device::audio::read_wav;
use emogate_device::clip::{Clip, ClipReader};
use emogate_infer::featurizer::Featurizer;
use emogate_models::manifest::Manifest;
use emogate_models::onnx::OnnxModel;
use emogate_tests::{fixtures, max_abs_diff, repo_root};
use emogate_tools::npz::{NpyArray, NpyData, read_npz};

const TOLERANCE: f32 = 1e-5;

fn array<'a>(arrays: &'a [NpyArray], name: &str) -> (&'a [usize], &'a [f32]) {
    let a = arrays
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("features.npz lacks `{name}`"));
    match &a.data {
        NpyData::F32(v) => (&a.shape, v),
        NpyData::I64(_) => panic!("features.npz `{name}` is not f32"),
    }
}

fn featurizer() -> Featurizer {
    let model = OnnxModel::load(repo_root().join("models/reference/base/emogate-base.onnx"))
        .expect("the base model loads");
    let manifest = Manifest::from_model(&model)
        .expect("manifest parses")
        .expect("the base model embeds a manifest");
    Featurizer::new(&manifest).expect("featurizer")
}

fn still(path: &Path) -> emogate_media::Frame {
    let clip = Clip::open(path, 1.0).expect("PNG opens");
    ClipReader::new(Arc::new(clip))
        .expect("reader")
        .frame(0)
        .expect("frame reads")
        .expect("a PNG has one frame")
}

#[test]
fn engine_featurizer_matches_training_preprocessing() {
    let dir = fixtures().join("prep");
    let arrays = read_npz(&dir.join("features.npz")).expect("features.npz");
    let (face_shape, faces) = array(&arrays, "face");
    let (audio_shape, audio) = array(&arrays, "audio");
    assert_eq!(&face_shape[1..], [64, 64, 1]);
    assert_eq!(&audio_shape[1..], [64, 201]);
    let mut feat = featurizer();

    let per_face = 64 * 64;
    for i in 0..face_shape[0] {
        let frame = still(&dir.join(format!("face{i}.png")));
        assert_eq!((frame.width, frame.height), (96, 96));
        let inputs = feat.build(Some(&frame), None).expect("featurize face");
        let got = inputs[0].as_f32().expect("face is f32");
        let want = &faces[i * per_face..(i + 1) * per_face];
        let diff = max_abs_diff(got, want);
        assert!(
            diff <= TOLERANCE,
            "face{i}: max |engine - prep.py| = {diff}"
        );
        // The audio input was not given: the engine zeroes it (`--missing zero`).
        assert!(
            inputs[1]
                .as_f32()
                .expect("audio is f32")
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    let per_voice = 64 * 201;
    for i in 0..audio_shape[0] {
        let wav = read_wav(&dir.join(format!("voice{i}.wav"))).expect("WAV reads");
        assert_eq!((wav.sample_rate, wav.channels), (16_000, 1));
        let samples = wav.to_mono();
        assert_eq!(samples.len(), 32_000);
        let inputs = feat.build(None, Some(&samples)).expect("featurize voice");
        let got = inputs[1].as_f32().expect("audio is f32");
        let want = &audio[i * per_voice..(i + 1) * per_voice];
        let diff = max_abs_diff(got, want);
        assert!(
            diff <= TOLERANCE,
            "voice{i}: max |engine - prep.py| = {diff}"
        );
    }
}
