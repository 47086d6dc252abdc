//! The library side of `emogate-convert merge`, `quantize` and `manifest`:
//! which option combinations make sense, loading the inputs (errors say
//! which file was being loaded), the output folder, the conversion itself
//! (in `emogate-models`), and the report the binary prints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use emogate_models::manifest::{MANIFEST_KEY, Manifest};
use emogate_models::merge::{MergeOptions, MergeReport, merge_to_file};
use emogate_models::onnx::{OnnxModel, SaveOptions, save_model};
use emogate_models::peft::Adapter;
use emogate_models::quantize::fp16::Fp16Options;
use emogate_models::quantize::int8::{Int8Options, ScaleMethod};
use emogate_models::quantize::{Mode, QuantizeReport, Selection, quantize_to_file};

use crate::atomic::create_parent_dir;
use crate::calibrate;
use crate::error::{Error, Result};

/// Seed of the calibration inputs of `quantize --calibrate`.
pub const CALIBRATION_SEED: u64 = 0;

fn load_model(what: &str, path: &Path) -> Result<OnnxModel> {
    OnnxModel::load(path).map_err(|e| Error::model(format!("loading {what}{}", path.display()), e))
}

/// `merge`: a PEFT LoRA adapter into an ONNX model's weights.
#[derive(Debug, Clone)]
pub struct MergeJob {
    /// The base model (.onnx).
    pub model: PathBuf,
    /// The PEFT adapter folder.
    pub adapter: PathBuf,
    /// Where to write the merged model.
    pub out: PathBuf,
    /// Keep unchanged tensors in the base model's data file.
    pub share_base_data: bool,
    /// `fsync` outputs before renaming them into place.
    pub sync: bool,
    /// Merge threads (`None`: all cores).
    pub threads: Option<usize>,
}

/// Runs a [`MergeJob`], calling `progress(done, total)` after each module.
///
/// # Errors
/// [`Error::Model`] naming the file being loaded or merged; on error no
/// output is left behind.
pub fn merge(job: &MergeJob, progress: &mut dyn FnMut(usize, usize)) -> Result<MergeReport> {
    let base = load_model("base model ", &job.model)?;
    let adapter = Adapter::load(&job.adapter)
        .map_err(|e| Error::model(format!("loading adapter {}", job.adapter.display()), e))?;
    let options = MergeOptions {
        save: SaveOptions {
            share_base_data: job.share_base_data,
            sync: job.sync,
            ..SaveOptions::default()
        },
        threads: job.threads,
    };
    create_parent_dir(&job.out)?;
    let started = Instant::now();
    let report = merge_to_file(&base, &adapter, &job.out, &options, progress).map_err(|e| {
        Error::model(
            format!(
                "merging {} into {}",
                job.adapter.display(),
                job.model.display()
            ),
            e,
        )
    })?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "merge done"
    );
    Ok(report)
}

/// The conversion `quantize` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeKind {
    /// `--fp16`.
    Fp16,
    /// `--int8`: QDQ, per output channel (TensorRT).
    Int8,
    /// `--int8-dynamic`: DynamicQuantizeLinear + MatMulInteger (CPU runtimes).
    Int8Dynamic,
}

/// `quantize`: a smaller model, with the CLI's options.
#[derive(Debug, Clone)]
pub struct QuantizeJob {
    /// The f32 model.
    pub model: PathBuf,
    /// Where to write the converted model.
    pub out: PathBuf,
    pub kind: QuantizeKind,
    /// `--modules` / `--exclude-modules`.
    pub selection: Selection,
    /// fp16: keep f32 graph inputs and outputs.
    pub keep_io_types: bool,
    /// fp16: more op types or node patterns to keep in f32.
    pub keep_f32: Vec<String>,
    /// fp16: keep normalization and Softmax in f32.
    pub keep_sensitive: bool,
    /// int8: weights with fewer elements stay f32.
    pub min_elements: usize,
    /// `--int8`: how each channel's scale is chosen.
    pub scale: ScaleMethod,
    /// `--int8`: round with GPTQ on this many seeded calibration inputs.
    pub calibrate: Option<usize>,
    /// `--int8-dynamic`: one scale per output column.
    pub per_channel: bool,
    /// `fsync` outputs before renaming them into place.
    pub sync: bool,
}

impl QuantizeJob {
    /// Refuses options that do not apply to the chosen conversion.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the option and the conversion it applies to.
    pub fn check(&self) -> Result<()> {
        let fp16 = self.kind == QuantizeKind::Fp16;
        if let Some(n) = self.calibrate {
            if self.kind != QuantizeKind::Int8 {
                return Err(Error::usage("--calibrate applies to --int8 only"));
            }
            if n == 0 {
                return Err(Error::usage("--calibrate needs at least 1 input"));
            }
        }
        if !fp16 && (!self.keep_f32.is_empty() || !self.keep_sensitive) {
            return Err(Error::usage(
                "--keep-f32 and --no-keep-sensitive apply to --fp16 only",
            ));
        }
        if self.kind != QuantizeKind::Int8Dynamic && self.per_channel {
            return Err(Error::usage(
                "--per-channel applies to --int8-dynamic only (--int8 is always per channel)",
            ));
        }
        Ok(())
    }

    /// The conversion for `model`, calibrated when asked.
    fn mode(&self, model: &OnnxModel) -> Result<Mode> {
        if self.kind == QuantizeKind::Fp16 {
            return Ok(Mode::Fp16(Fp16Options {
                keep_io_types: self.keep_io_types,
                keep_sensitive: self.keep_sensitive,
                keep_f32: self.keep_f32.clone(),
                selection: self.selection.clone(),
            }));
        }
        let mut int8 = Int8Options {
            selection: self.selection.clone(),
            min_elements: self.min_elements,
            per_channel: self.per_channel,
            scale: self.scale,
            ..Int8Options::default()
        };
        if let Some(n) = self.calibrate {
            let started = Instant::now();
            int8.hessians = calibrate::hessians(model, n, CALIBRATION_SEED)?;
            tracing::info!(
                layers = int8.hessians.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "calibrated"
            );
        }
        Ok(match self.kind {
            QuantizeKind::Int8 => Mode::Int8(int8),
            _ => Mode::Int8Dynamic(int8),
        })
    }
}

/// Runs a [`QuantizeJob`].
///
/// # Errors
/// [`Error::Usage`] from [`QuantizeJob::check`] (before anything is
/// read), [`Error::Model`] naming the file being loaded or converted, the
/// errors of [`calibrate::hessians`]. On error no output is left behind.
pub fn quantize(job: &QuantizeJob) -> Result<QuantizeReport> {
    job.check()?;
    let base = load_model("", &job.model)?;
    let mode = job.mode(&base)?;
    create_parent_dir(&job.out)?;
    let save = SaveOptions {
        sync: job.sync,
        ..SaveOptions::default()
    };
    let started = Instant::now();
    let report = quantize_to_file(&base, &mode, &job.out, &save).map_err(|e| {
        Error::model(
            format!("{} conversion of {}", mode.name(), job.model.display()),
            e,
        )
    })?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "quantize done"
    );
    Ok(report)
}

/// `manifest set`: writes `model` with the manifest file embedded to
/// `out`, after checking the manifest against the model's real inputs and
/// outputs. Returns the manifest.
///
/// # Errors
/// [`Error::Model`] naming the model or manifest file and the field that
/// does not fit.
pub fn set_manifest(model: &Path, manifest: &Path, out: &Path) -> Result<Manifest> {
    let base = load_model("", model)?;
    let m = Manifest::from_file(manifest)
        .map_err(|e| Error::model(format!("reading {}", manifest.display()), e))?;
    m.check_against(&base)
        .map_err(|e| Error::model(format!("the manifest does not fit {}", model.display()), e))?;
    let mut proto = base.proto.clone();
    m.embed(&mut proto);
    create_parent_dir(out)?;
    save_model(
        &base,
        proto,
        std::iter::empty(),
        out,
        &SaveOptions::default(),
    )
    .map_err(|e| Error::model(format!("writing {}", out.display()), e))?;
    Ok(m)
}

/// `manifest show`: the manifest embedded in `model`.
///
/// # Errors
/// [`Error::Model`] for a model or manifest that cannot be read,
/// [`Error::Field`] when the model has none.
pub fn embedded_manifest(model: &Path) -> Result<Manifest> {
    let base = load_model("", model)?;
    Manifest::from_model(&base)
        .map_err(|e| Error::model(format!("reading the manifest of {}", model.display()), e))?
        .ok_or_else(|| {
            Error::field(
                model,
                "metadata_props",
                format!("no embedded manifest; expected one under the key `{MANIFEST_KEY}`"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: QuantizeKind) -> QuantizeJob {
        QuantizeJob {
            model: "in.onnx".into(),
            out: "out.onnx".into(),
            kind,
            selection: Selection::default(),
            keep_io_types: true,
            keep_f32: Vec::new(),
            keep_sensitive: true,
            min_elements: 256,
            scale: ScaleMethod::Mse,
            calibrate: None,
            per_channel: false,
            sync: true,
        }
    }

    #[test]
    fn options_must_apply_to_the_conversion() {
        use QuantizeKind::*;
        for kind in [Fp16, Int8, Int8Dynamic] {
            job(kind).check().unwrap();
        }
        let refused = |j: QuantizeJob, needle: &str| {
            let e = j.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        refused(
            QuantizeJob {
                calibrate: Some(8),
                ..job(Fp16)
            },
            "--calibrate applies to --int8 only",
        );
        refused(
            QuantizeJob {
                calibrate: Some(0),
                ..job(Int8)
            },
            "at least 1",
        );
        refused(
            QuantizeJob {
                keep_f32: vec!["Softmax".into()],
                ..job(Int8)
            },
            "--keep-f32",
        );
        refused(
            QuantizeJob {
                keep_sensitive: false,
                ..job(Int8Dynamic)
            },
            "--no-keep-sensitive",
        );
        refused(
            QuantizeJob {
                per_channel: true,
                ..job(Int8)
            },
            "--per-channel applies to --int8-dynamic only",
        );
        QuantizeJob {
            per_channel: true,
            ..job(Int8Dynamic)
        }
        .check()
        .unwrap();
    }

    #[test]
    fn manifests_are_embedded_checked_and_shown() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let reference = root.join("models/reference/emogate-ref.onnx");
        let dir = tempfile::tempdir().unwrap();
        let shown = embedded_manifest(&reference).unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(&file, serde_json::to_vec(&shown).unwrap()).unwrap();
        // The reference's own manifest, embedded into a copy without one.
        let bare = root.join("tests/fixtures/merge/llama.legacy/model.onnx");
        let e = embedded_manifest(&bare).unwrap_err().to_string();
        assert!(
            e.contains("model.onnx: metadata_props: no embedded manifest")
                && e.contains(MANIFEST_KEY),
            "{e}"
        );
        let e = set_manifest(&bare, &file, &dir.path().join("x.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the manifest does not fit"), "{e}");
        assert!(!dir.path().join("x.onnx").exists());
        let out = dir.path().join("sub/with.onnx");
        let set = set_manifest(&reference, &file, &out).unwrap();
        assert_eq!(set.name, shown.name);
        assert_eq!(embedded_manifest(&out).unwrap().name, shown.name);
    }
}
