//! Preparing a merged adapter on ONNX Runtime writes no file (feature
//! `ort`; needs ORT_DYLIB_PATH).
//!
//! TMPDIR points at a fresh empty folder for the whole process, so this is
//! the file's only test: environment variables are process-wide, and a
//! test running beside it could create files there or read TMPDIR while it
//! changes. A temp file that is deleted again before `prepare` returns
//! (`tempfile::TempDir` does that) would leave the folder empty; it still
//! changes the folder's modification time, which is checked too.
//!
//! The folder is compared with itself once ONNX Runtime is running, not
//! with empty: the ONNX Runtime 1.31 wheel writes `$TMPDIR/.ses` (and a
//! device id and a SQLite file under `~/.cache/Microsoft/DeveloperTools`)
//! when its environment starts; 1.19 writes neither. That is the library's
//! start, not the merge.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec, Switching};
use emogate_infer::backend::Runtime;
use emogate_infer::backend::ort::{OrtOptions, OrtRuntime, Provider};
use emogate_models::merge::MergePlan;
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_tests::{
    fp16_reference, reference_expected, reference_inputs, repo_root as root, shared_weight,
};

fn options() -> OrtOptions {
    OrtOptions {
        providers: vec![Provider::Cpu],
        ..OrtOptions::default()
    }
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn modified(dir: &Path) -> SystemTime {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Checks, after each preparation, that TMPDIR is as it was and untouched
/// and that nothing appeared next to the model.
struct Watch {
    tmp: PathBuf,
    tmp_listing: Vec<String>,
    tmp_modified: SystemTime,
}

impl Watch {
    /// Remembers `tmp` as it is now.
    fn new(tmp: PathBuf) -> Self {
        // Directory times tick with the kernel's clock (a few ms): let one
        // pass, so that a file made and removed right after still moves it.
        std::thread::sleep(Duration::from_millis(50));
        Watch {
            tmp_listing: listing(&tmp),
            tmp_modified: modified(&tmp),
            tmp,
        }
    }

    fn check(&self, what: &str, model_dir: &Path, model_dir_before: &[String]) {
        assert_eq!(
            listing(&self.tmp),
            self.tmp_listing,
            "{what}: files left in TMPDIR"
        );
        assert_eq!(
            modified(&self.tmp),
            self.tmp_modified,
            "{what}: something was created in TMPDIR (and removed)"
        );
        assert_eq!(
            listing(model_dir),
            model_dir_before,
            "{what}: files appeared next to the model"
        );
    }
}

#[test]
fn preparing_merged_adapters_writes_no_file() {
    // Every input is written before TMPDIR moves, into the usual temp folder.
    let work = tempfile::tempdir().expect("tempdir");
    let fp16_dir = work.path().join("fp16");
    let inline_dir = work.path().join("shared-inline");
    let external_dir = work.path().join("shared-external");
    for dir in [&fp16_dir, &inline_dir, &external_dir] {
        std::fs::create_dir(dir).expect("case folder");
    }
    let fp16_model = fp16_reference(&fp16_dir);
    let inline = shared_weight::write(&inline_dir, false);
    let external = shared_weight::write(&external_dir, true);
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("TMPDIR folder");
    // SAFETY: this test is the only one in this binary (see the file's
    // comment), and no thread of ours is running: nothing reads the
    // environment while it changes.
    unsafe { std::env::set_var("TMPDIR", &tmp) };
    assert_eq!(std::env::temp_dir(), tmp);

    // The reference model (weights in a side file, f32) and the fp16
    // conversion of it, with both bundled adapters, through the engine's own
    // path, AffectModel::prepare. Loading them starts ONNX Runtime.
    let reference = root().join("models/reference/base/emogate-base.onnx");
    let mut models = Vec::new();
    for model_path in [reference, fp16_model] {
        let model = AffectModel::load(&ModelSpec {
            path: model_path.clone(),
            adapters: vec![
                (
                    "affect-gate".into(),
                    root().join("models/reference/adapters/affect-gate"),
                ),
                (
                    "affect-all".into(),
                    root().join("models/reference/adapters/affect-all"),
                ),
            ],
            backend: BackendChoice::Ort(options()),
            // The merge path: slot switches write and merge nothing.
            switching: Switching::Replan,
            ..ModelSpec::default()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
        models.push((model_path, model));
    }
    let watch = Watch::new(tmp);
    let inputs = reference_inputs(&reference_expected());
    for (model_path, model) in &mut models {
        let model_dir = model_path.parent().expect("model folder");
        let before = listing(model_dir);
        for name in ["affect-gate", "affect-all"] {
            let what = format!("{} + {name}", model_path.display());
            model
                .switch(Some(name))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            watch.check(&what, model_dir, &before);
            model.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
            watch.check(&what, model_dir, &before);
        }
    }

    // Merges that copy a shared weight, so the graph changes: inline, and
    // with a side file.
    let runtime = OrtRuntime { options: options() };
    for case in [&inline, &external] {
        let model_dir = case.model.parent().expect("model folder");
        let before = listing(model_dir);
        let what = case.model.display().to_string();
        let model = OnnxModel::load(&case.model).expect("model loads");
        let adapter = Adapter::load(&case.adapter).expect("adapter loads");
        let plan = MergePlan::new(&model, &adapter).expect("plan");
        assert!(plan.changes_graph(), "{what}: the merge must copy W");
        let mut backend = runtime
            .load(&model, Some(&plan), &[])
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        watch.check(&what, model_dir, &before);
        backend
            .run(std::slice::from_ref(&case.input))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        watch.check(&what, model_dir, &before);
    }
}
