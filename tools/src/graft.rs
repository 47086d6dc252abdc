//! `transfer` and `ablate`: module-level changes to an ONNX model, chosen
//! by a regular expression over module paths (and layers).
//!
//! * `transfer --from DONOR --into BASE`: the matched modules of BASE take
//!   DONOR's tensors — bit-exact copies from a tuned ONNX model (any
//!   exporter; modules pair up through merge's resolver, see
//!   [`emogate_models::surgery`]), or, from a PEFT adapter folder, the
//!   adapter's matched modules merged by merge's own code.
//! * `transfer --adapter DIR --out-adapter DIR2`: a PEFT adapter holding only
//!   the matched modules ([`subset_adapter`]).
//! * `ablate`: the matched modules reverted to a base model, zeroed,
//!   replaced by their mean, perturbed by seeded noise, re-initialized
//!   (seeded) or scaled. See [`AblateMode`] for the exact arithmetic.

use std::path::{Path, PathBuf};

use emogate_models::merge::{MergeOptions, ModuleReport, merge_to_file};
use emogate_models::onnx::params::{Param, ParamIndex, Role, stored_to_torch, torch_to_stored};
use emogate_models::onnx::{
    FloatType, OnnxModel, SaveOptions, SaveSummary, TensorBytes, TensorUpdate, save_model,
};
use emogate_models::peft::Adapter;
use emogate_models::staging;
use emogate_models::surgery::{self, CopyReport, ModuleFilter};
use serde::Serialize;

use crate::atomic::create_parent_dir;
use crate::error::{Error, Result};
use crate::rng::Rng;

fn load_model(what: &str, path: &Path) -> Result<OnnxModel> {
    OnnxModel::load(path).map_err(|e| Error::model(format!("loading {what} {}", path.display()), e))
}

/// Whether `path` is a PEFT adapter folder.
pub fn is_adapter_dir(path: &Path) -> bool {
    path.is_dir() && path.join("adapter_config.json").is_file()
}

/// Parses `--layers 0-7` (or `3`).
///
/// # Errors
/// [`Error::Usage`] for anything but `N` or `A-B` with `A ≤ B`.
pub fn parse_layers(text: &str) -> Result<std::ops::RangeInclusive<usize>> {
    let bad = || Error::usage(format!("--layers `{text}`: expected N or A-B (e.g. 0-7)"));
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a, b),
        None => (text, text),
    };
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// What `transfer` and `ablate` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GraftReport {
    /// `transfer` or `ablate:<mode>`.
    pub operation: String,
    pub model: PathBuf,
    /// The donor (transfer, revert) when there is one.
    pub donor: Option<PathBuf>,
    pub output: PathBuf,
    /// Tensors copied from an ONNX donor.
    pub copies: Vec<CopyReport>,
    /// Modules merged from an adapter donor.
    pub merged: Vec<ModuleReport>,
    /// Tensors changed in place by an ablation.
    pub changed: Vec<ChangedTensor>,
    pub warnings: Vec<String>,
    pub save: Option<SaveSummary>,
}

/// One tensor an ablation rewrote.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedTensor {
    pub module: String,
    pub role: Role,
    pub initializer: String,
    pub shape: Vec<usize>,
}

fn save_options(sync: bool) -> SaveOptions {
    SaveOptions {
        sync,
        ..SaveOptions::default()
    }
}

/// Copies the tensors `filter` selects in `into` from `donor` (an ONNX
/// model) and writes the result to `out`.
fn copy_modules(
    into: &OnnxModel,
    donor: &OnnxModel,
    filter: &ModuleFilter,
    out: &Path,
    sync: bool,
) -> Result<(Vec<CopyReport>, SaveSummary)> {
    let into_index = ParamIndex::build(into.graph());
    let donor_index = ParamIndex::build(donor.graph());
    let what = |e| {
        Error::model(
            format!(
                "pairing the modules of {} with {}",
                into.path().display(),
                donor.path().display()
            ),
            e,
        )
    };
    let selected = filter.select(into.path(), &into_index).map_err(what)?;
    let pairs =
        surgery::pair_params(into, &into_index, &selected, donor, &donor_index).map_err(what)?;
    let mut copies = Vec::with_capacity(pairs.len());
    let updates = pairs.iter().map(|pair| {
        surgery::tensor_update(&into_index, donor, &donor_index, *pair).map(|(u, r)| {
            copies.push(r);
            u
        })
    });
    create_parent_dir(out)?;
    let save = save_model(into, into.proto.clone(), updates, out, &save_options(sync))
        .map_err(|e| Error::model(format!("writing {}", out.display()), e))?;
    Ok((copies, save))
}

/// `transfer --from DONOR --into BASE --modules REGEX --out OUT`.
///
/// # Errors
/// [`Error::Model`] naming the file for loading, pairing (a module the
/// donor lacks, shapes that disagree, a pattern that matches nothing — the
/// message lists the real module paths) and writing.
pub fn transfer(
    from: &Path,
    into: &Path,
    modules: &str,
    out: &Path,
    sync: bool,
) -> Result<GraftReport> {
    let base = load_model("the base model", into)?;
    let filter = ModuleFilter::new(modules).map_err(|e| Error::model("--modules", e))?;
    let mut report = GraftReport {
        operation: "transfer".into(),
        model: into.to_path_buf(),
        donor: Some(from.to_path_buf()),
        output: out.to_path_buf(),
        copies: Vec::new(),
        merged: Vec::new(),
        changed: Vec::new(),
        warnings: Vec::new(),
        save: None,
    };
    if is_adapter_dir(from) {
        let mut adapter = Adapter::load(from)
            .map_err(|e| Error::model(format!("loading adapter {}", from.display()), e))?;
        let all: Vec<String> = adapter
            .modules
            .keys()
            .chain(adapter.replacements.keys())
            .cloned()
            .collect();
        adapter.modules.retain(|m, _| filter.pattern.is_match(m));
        adapter
            .replacements
            .retain(|m, _| filter.pattern.is_match(m));
        if adapter.modules.is_empty() && adapter.replacements.is_empty() {
            return Err(Error::field(
                from,
                "--modules",
                format!(
                    "`{modules}` matches no module of the adapter; its modules are: {}",
                    all.join(", ")
                ),
            ));
        }
        create_parent_dir(out)?;
        let merged = merge_to_file(
            &base,
            &adapter,
            out,
            &MergeOptions {
                save: save_options(sync),
                threads: None,
            },
            &mut |_, _| {},
        )
        .map_err(|e| {
            Error::model(
                format!(
                    "merging the matched modules of {} into {}",
                    from.display(),
                    into.display()
                ),
                e,
            )
        })?;
        report.merged = merged.modules;
        report.save = Some(merged.save);
    } else {
        let donor = load_model("the donor model", from)?;
        let (copies, save) = copy_modules(&base, &donor, &filter, out, sync)?;
        report.copies = copies;
        report.save = Some(save);
    }
    Ok(report)
}

/// How `ablate` changes each selected tensor (weights and biases of the
/// matched modules, in PyTorch's orientation and scale).
#[derive(Debug, Clone, PartialEq)]
pub enum AblateMode {
    /// `revert:BASE.onnx`: the base model's tensors, copied bit for bit.
    Revert(PathBuf),
    /// `zero`: every value 0.
    Zero,
    /// `mean`: every value the tensor's mean.
    Mean,
    /// `noise:SIGMA`: plus Gaussian noise of standard deviation SIGMA
    /// (absolute), seeded by [`ABLATE_NOISE_SEED`] and the tensor's module.
    Noise(f64),
    /// `reinit:SEED`: PyTorch's default initialization, seeded: a weight of
    /// two or more dims (and a linear layer's bias) uniform in ±1/√fan_in; a
    /// 1-D weight (a norm's scale) 1; another 1-D bias 0.
    Reinit(u64),
    /// `scale:F`: every value times F.
    Scale(f64),
}

/// Seed of `noise:SIGMA` (per tensor, mixed with its module path).
pub const ABLATE_NOISE_SEED: u64 = 0x0ab1a7e;

impl AblateMode {
    /// Parses `--mode`.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the form expected.
    pub fn parse(text: &str) -> Result<Self> {
        let (name, arg) = match text.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text, None),
        };
        let num = |what: &str| -> Result<f64> {
            arg.and_then(|a| a.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    Error::usage(format!(
                        "--mode `{text}`: expected {name}:{what} with a finite number"
                    ))
                })
        };
        Ok(match (name, arg) {
            ("revert", Some(p)) if !p.is_empty() => AblateMode::Revert(PathBuf::from(p)),
            ("zero", None) => AblateMode::Zero,
            ("mean", None) => AblateMode::Mean,
            ("noise", _) => {
                let s = num("SIGMA")?;
                if s < 0.0 {
                    return Err(Error::usage(format!("--mode `{text}`: SIGMA must be ≥ 0")));
                }
                AblateMode::Noise(s)
            }
            ("reinit", Some(s)) => AblateMode::Reinit(s.parse().map_err(|_| {
                Error::usage(format!(
                    "--mode `{text}`: expected reinit:SEED with SEED a non-negative integer"
                ))
            })?),
            ("scale", _) => AblateMode::Scale(num("F")?),
            _ => {
                return Err(Error::usage(format!(
                    "--mode `{text}`: expected revert:BASE.onnx, zero, mean, noise:SIGMA, reinit:SEED or scale:F"
                )));
            }
        })
    }

    fn name(&self) -> String {
        match self {
            AblateMode::Revert(p) => format!("revert:{}", p.display()),
            AblateMode::Zero => "zero".into(),
            AblateMode::Mean => "mean".into(),
            AblateMode::Noise(s) => format!("noise:{s}"),
            AblateMode::Reinit(s) => format!("reinit:{s}"),
            AblateMode::Scale(f) => format!("scale:{f}"),
        }
    }
}

/// The SwiGLU projections: zeroing any one zeroes the whole MLP output.
const SWIGLU: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// The warning a zero ablation of a SwiGLU projection gets.
pub fn swiglu_zero_warning(types: &[&str]) -> String {
    format!(
        "zeroing {} deletes the whole MLP of those layers: down_proj(SiLU(gate_proj·x) ⊙ up_proj·x) is 0 \
         as soon as any one of the three is 0, so a zero ablation says nothing about that module in particular \
         (zero-gate, zero-up and zero-down give the same outputs). Use --mode revert:BASE.onnx to remove what tuning \
         changed in one module.",
        types.join(", ")
    )
}

/// 64-bit FNV-1a: mixes a tensor's module path into the seed, so a
/// tensor's values do not depend on which other modules were selected.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `ablate --model M --modules REGEX [--layers A-B] --mode MODE --out OUT`.
///
/// # Errors
/// As [`transfer`]; [`Error::Field`] for a shared (tied) tensor.
pub fn ablate(
    model_path: &Path,
    filter: &ModuleFilter,
    mode: &AblateMode,
    out: &Path,
    sync: bool,
) -> Result<GraftReport> {
    let model = load_model("the model", model_path)?;
    let index = ParamIndex::build(model.graph());
    let selected = filter
        .select(model_path, &index)
        .map_err(|e| Error::model(format!("selecting modules of {}", model_path.display()), e))?;
    let mut report = GraftReport {
        operation: format!("ablate:{}", mode.name()),
        model: model_path.to_path_buf(),
        donor: None,
        output: out.to_path_buf(),
        copies: Vec::new(),
        merged: Vec::new(),
        changed: Vec::new(),
        warnings: Vec::new(),
        save: None,
    };
    if *mode == AblateMode::Zero {
        let mut types: Vec<&str> = selected
            .iter()
            .map(|i| index.params[*i].module_type())
            .filter(|t| SWIGLU.contains(t))
            .collect();
        types.sort_unstable();
        types.dedup();
        if !types.is_empty() {
            report.warnings.push(swiglu_zero_warning(&types));
        }
    }
    if let AblateMode::Revert(base_path) = mode {
        let base = load_model("the base model", base_path)?;
        report.donor = Some(base_path.clone());
        let (copies, save) = copy_modules(&model, &base, filter, out, sync)?;
        report.copies = copies;
        report.save = Some(save);
        return Ok(report);
    }
    for i in &selected {
        surgery::check_writable(model_path, &index.params[*i])
            .map_err(|e| Error::model(format!("ablating {}", model_path.display()), e))?;
    }
    let mut changed = Vec::with_capacity(selected.len());
    let updates = selected.iter().map(|i| {
        let p = &index.params[*i];
        let update = ablated(&model, &index, p, mode)?;
        changed.push(ChangedTensor {
            module: p.module.clone(),
            role: p.role,
            initializer: p.initializer.clone(),
            shape: p.torch_dims(),
        });
        Ok(update)
    });
    create_parent_dir(out)?;
    let save = save_model(
        &model,
        model.proto.clone(),
        updates,
        out,
        &save_options(sync),
    )
    .map_err(|e| Error::model(format!("writing {}", out.display()), e));
    let save = save?;
    report.changed = changed;
    report.save = Some(save);
    Ok(report)
}

/// The new stored values of `p` under `mode` (not `revert`).
fn ablated(
    model: &OnnxModel,
    index: &ParamIndex,
    p: &Param,
    mode: &AblateMode,
) -> emogate_models::Result<TensorUpdate> {
    let tensor = model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == p.initializer)
        .expect("indexed from this graph");
    let (ty, stored) = model.float_values(tensor)?;
    let mut v = stored_to_torch(p, stored);
    let seed_of = |base: u64| base ^ fnv1a(&format!("{}.{}", p.module, p.role.name()));
    match mode {
        AblateMode::Revert(_) => unreachable!("revert copies from the base"),
        AblateMode::Zero => v.iter_mut().for_each(|x| *x = 0.0),
        AblateMode::Mean => {
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64;
            v.iter_mut().for_each(|x| *x = mean as f32);
        }
        AblateMode::Scale(f) => v.iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32),
        AblateMode::Noise(sigma) => {
            let mut rng = Rng::new(seed_of(ABLATE_NOISE_SEED));
            v.iter_mut()
                .for_each(|x| *x = (f64::from(*x) + sigma * rng.normal()) as f32);
        }
        AblateMode::Reinit(seed) => {
            let dims = p.torch_dims();
            let fan_in = if dims.len() >= 2 {
                Some(dims[1..].iter().product::<usize>())
            } else if p.role == Role::Bias {
                // A linear layer's bias: the fan-in of its weight.
                index
                    .params
                    .iter()
                    .find(|w| w.role == Role::Weight && w.module == p.module && w.layout.is_some())
                    .map(|w| w.torch_dims().get(1).copied().unwrap_or(1))
            } else {
                None
            };
            match fan_in {
                Some(fan_in) => {
                    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                    let mut rng = Rng::new(seed_of(*seed));
                    v.iter_mut().for_each(|x| *x = rng.symmetric_f32(bound));
                }
                None if p.role == Role::Weight => v.iter_mut().for_each(|x| *x = 1.0),
                None => v.iter_mut().for_each(|x| *x = 0.0),
            }
        }
    }
    let stored = torch_to_stored(p, v);
    Ok(TensorUpdate {
        name: p.initializer.clone(),
        bytes: if ty == FloatType::F32 {
            TensorBytes::F32(stored)
        } else {
            TensorBytes::Raw(ty.encode(&stored))
        },
    })
}

/// What [`subset_adapter`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SubsetReport {
    pub adapter: PathBuf,
    pub output: PathBuf,
    /// LoRA modules kept (the new `target_modules`).
    pub lora_modules: Vec<String>,
    /// `modules_to_save` modules kept.
    pub saved_modules: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
}

const PEFT_PREFIX: &str = "base_model.model.";
const LORA_SUFFIXES: [&str; 5] = [
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_magnitude_vector.weight",
    ".lora_magnitude_vector",
];

/// `transfer --adapter DIR --modules REGEX --out-adapter DIR2`: a PEFT
/// adapter folder holding only the matched modules' tensors (bytes and
/// dtypes as they were), with `target_modules` set to the kept LoRA
/// modules' full paths and `modules_to_save` to the kept saved modules.
///
/// # Errors
/// [`Error::Model`] for an adapter that does not load; [`Error::Field`]
/// when nothing matches (listing the modules) or the output exists.
pub fn subset_adapter(dir: &Path, modules: &str, out: &Path) -> Result<SubsetReport> {
    // Loading checks the adapter as merge would before anything is written.
    let adapter = Adapter::load(dir)
        .map_err(|e| Error::model(format!("loading adapter {}", dir.display()), e))?;
    let filter = ModuleFilter::new(modules).map_err(|e| Error::model("--modules", e))?;
    let weights_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| Error::io("reading", &weights_path, e))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::field(&weights_path, "safetensors header", e.to_string()))?;
    let module_of = |key: &str| -> (String, bool) {
        let stripped = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
        for s in LORA_SUFFIXES {
            if let Some(m) = stripped.strip_suffix(s) {
                return (m.to_string(), true);
            }
        }
        let m = stripped
            .strip_suffix(".weight")
            .or_else(|| stripped.strip_suffix(".bias"))
            .unwrap_or(stripped);
        (m.to_string(), false)
    };
    let mut kept = Vec::new();
    let mut lora = std::collections::BTreeSet::new();
    let mut saved = std::collections::BTreeSet::new();
    for (key, view) in tensors.tensors() {
        let (module, is_lora) = module_of(&key);
        if filter.pattern.is_match(&module) {
            if is_lora {
                lora.insert(module);
            } else {
                saved.insert(module);
            }
            kept.push((key, view));
        }
    }
    if kept.is_empty() {
        let all: Vec<&String> = adapter
            .modules
            .keys()
            .chain(adapter.replacements.keys())
            .collect();
        return Err(Error::field(
            dir,
            "--modules",
            format!(
                "`{modules}` matches no module of the adapter; its modules are: {}",
                all.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if out.exists() {
        return Err(Error::field(
            out,
            "--out-adapter",
            "exists; expected a new folder (nothing is overwritten)",
        ));
    }
    let config_path = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::io("reading", &config_path, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::field(&config_path, "JSON", e.to_string()))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::field(&config_path, "JSON", "expected an object"))?;
    obj.insert(
        "target_modules".into(),
        serde_json::json!(lora.iter().collect::<Vec<_>>()),
    );
    let saved_entries: Vec<String> = obj
        .get("modules_to_save")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter(|s| {
                    saved
                        .iter()
                        .any(|m| m == s || m.ends_with(&format!(".{s}")))
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    obj.insert(
        "modules_to_save".into(),
        if saved_entries.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(saved_entries)
        },
    );
    let metadata = tensors_metadata(&bytes);
    let serialized =
        safetensors::tensor::serialize(kept.iter().map(|(k, v)| (k.clone(), v.clone())), metadata)
            .map_err(|e| Error::field(&weights_path, "tensors", e.to_string()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io("creating the output folder", parent, e))?;
    // Staged as `.NAME.RANDOM.emogate-tmp` beside the output and locked:
    // a run killed mid-write leaves that folder, and the next run into the
    // same folder removes it (models::staging).
    let out_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::field(out, "--out-adapter", "expected a folder name in UTF-8"))?;
    staging::remove_stale(parent, out_name);
    let tmp = staging::create_dir(parent, out_name)
        .map_err(|e| Error::io("creating a temp folder in", parent, e))?;
    let write = |name: &str, data: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).map_err(|e| Error::io("writing", &p, e))
    };
    write("adapter_model.safetensors", &serialized)?;
    let json = serde_json::to_string_pretty(&config).map_err(|source| Error::Json {
        path: out.join("adapter_config.json"),
        source,
    })?;
    write("adapter_config.json", json.as_bytes())?;
    tmp.persist(out)
        .map_err(|e| Error::io("renaming the adapter folder into", out, e))?;
    Ok(SubsetReport {
        adapter: dir.to_path_buf(),
        output: out.to_path_buf(),
        lora_modules: lora.into_iter().collect(),
        saved_modules: saved.into_iter().collect(),
        tensors: kept.len(),
    })
}

/// The `__metadata__` of a safetensors file, kept in the subset.
fn tensors_metadata(bytes: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_layers_parse() {
        assert_eq!(AblateMode::parse("zero").unwrap(), AblateMode::Zero);
        assert_eq!(
            AblateMode::parse("noise:0.5").unwrap(),
            AblateMode::Noise(0.5)
        );
        assert_eq!(
            AblateMode::parse("reinit:7").unwrap(),
            AblateMode::Reinit(7)
        );
        assert_eq!(
            AblateMode::parse("scale:-1").unwrap(),
            AblateMode::Scale(-1.0)
        );
        assert_eq!(
            AblateMode::parse("revert:b.onnx").unwrap(),
            AblateMode::Revert("b.onnx".into())
        );
        for bad in [
            "revert",
            "revert:",
            "noise",
            "noise:x",
            "noise:-1",
            "reinit:-2",
            "scale:nan",
            "zap",
            "zero:1",
        ] {
            assert!(AblateMode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_layers("0-7").unwrap(), 0..=7);
        assert_eq!(parse_layers("3").unwrap(), 3..=3);
        for bad in ["7-0", "a", "1-", "-1"] {
            assert!(parse_layers(bad).is_err(), "{bad}");
        }
    }
}
