//! Hugging Face PEFT LoRA adapters, read from a `save_pretrained` folder:
//! `adapter_config.json` and `adapter_model.safetensors`.
//!
//! An [`Adapter`] holds, per adapted module, the low-rank factors and the
//! scale PEFT would apply (`lora_alpha / r`, or `lora_alpha / sqrt(r)` with
//! rsLoRA, after `rank_pattern`/`alpha_pattern`), plus DoRA magnitudes,
//! `lora_bias` terms and `modules_to_save` replacement tensors. Anything in
//! the config that changes the merge arithmetic and that we do not reproduce
//! exactly is refused with an error naming the field: an adapter is never
//! merged approximately.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The prefix `PeftModel` puts in front of every key it saves.
const PEFT_PREFIX: &str = "base_model.model.";

/// A LoRA adapter loaded from a PEFT folder.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// Low-rank updates, keyed by module path (without PEFT's prefix).
    pub modules: BTreeMap<String, LoraModule>,
    /// Full replacement tensors from `modules_to_save`, keyed by module path.
    pub replacements: BTreeMap<String, Replacement>,
}

/// The fields of `adapter_config.json` that affect merging.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub target_modules: Option<Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Pattern keys in the file's order: PEFT takes the first that matches.
    #[serde(skip)]
    pub rank_pattern_order: Vec<String>,
    #[serde(skip)]
    pub alpha_pattern_order: Vec<String>,
}

/// One adapted linear layer. Factors are kept in PyTorch's orientation:
/// `A` is `[rank, in]`, `B` is `[out, rank]`, and the update is
/// `ΔW = scale · B·A` on a `[out, in]` weight.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub alpha: f64,
    pub scale: f64,
    /// Row-major `[rank, in]`.
    pub a: Vec<f32>,
    /// Row-major `[out, rank]`.
    pub b: Vec<f32>,
    /// `lora_B.bias` (`lora_bias=True`), `[out]`.
    pub bias: Option<Vec<f32>>,
    /// DoRA's `lora_magnitude_vector`, `[out]`.
    pub magnitude: Option<Vec<f32>>,
}

/// A `modules_to_save` tensor that replaces the base model's outright.
#[derive(Debug, Clone)]
pub struct Replacement {
    /// Row-major `[out, in]` weight.
    pub weight: Option<(Vec<usize>, Vec<f32>)>,
    pub bias: Option<Vec<f32>>,
}

/// Config fields whose non-default value changes what "merged" means in a
/// way emogate does not reproduce. Each entry: field, why.
const REFUSED: &[(&str, &str)] = &[
    (
        "layer_replication",
        "it duplicates base layers, which changes the graph itself",
    ),
    (
        "target_parameters",
        "LoRA on raw nn.Parameters is not a linear layer emogate can locate",
    ),
    (
        "trainable_token_indices",
        "it trains embedding rows, not gate_proj",
    ),
    (
        "alora_invocation_tokens",
        "activated LoRA only applies after invocation tokens and cannot be merged",
    ),
    (
        "arrow_config",
        "Arrow routing mixes adapters per token and cannot be merged",
    ),
    (
        "kasa_config",
        "KaSA rescales singular values of the base weight",
    ),
    (
        "monteclora_config",
        "MonteCLoRA samples its update and has no single merged weight",
    ),
    (
        "use_bdlora",
        "block-diagonal LoRA is not a plain low-rank update",
    ),
    ("velora_config", "VeLoRA changes the layer's computation"),
];

impl Adapter {
    /// Loads a PEFT adapter folder.
    ///
    /// # Errors
    /// [`Error::Io`] for missing files; [`Error::Field`] naming the config
    /// field or safetensors key that is malformed or unsupported.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| Error::field(&config_path, "JSON", e.to_string()))?;
        let config = parse_config(&config_path, &raw)?;

        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && dir.join("adapter_model.bin").exists() {
                Error::field(
                    &weights_path,
                    "file",
                    "missing; this adapter was saved as adapter_model.bin (pickle), re-save it with safe_serialization=True",
                )
            } else {
                Error::io(&weights_path, e)
            }
        })?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::field(
                &weights_path,
                "safetensors header",
                format!("not a valid safetensors file: {e}"),
            )
        })?;

        let mut parts: BTreeMap<String, LoraTensors> = BTreeMap::new();
        let mut replacements: BTreeMap<String, Replacement> = BTreeMap::new();
        let saved = config.modules_to_save.clone().unwrap_or_default();
        for (key, view) in tensors.tensors() {
            let shape = view.shape().to_vec();
            let values = to_f32(&weights_path, &key, view.dtype(), view.data())?;
            let stripped = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
            if stripped.contains("lora_embedding") {
                return Err(Error::field(
                    &weights_path,
                    key.clone(),
                    "is an embedding LoRA; emogate merges LoRA on linear layers (gate_proj) only",
                ));
            }
            let lora_part = [
                (".lora_A.weight", Part::A),
                (".lora_B.weight", Part::B),
                (".lora_B.bias", Part::Bias),
                (".lora_magnitude_vector.weight", Part::Magnitude),
                (".lora_magnitude_vector", Part::Magnitude),
            ]
            .into_iter()
            .find_map(|(suffix, part)| stripped.strip_suffix(suffix).map(|m| (m, part)));
            if let Some((module, part)) = lora_part {
                parts.entry(module.to_string()).or_default().set(
                    part,
                    shape,
                    values,
                    &weights_path,
                    &key,
                )?;
                continue;
            }
            let (module, is_bias) = match (
                stripped.strip_suffix(".weight"),
                stripped.strip_suffix(".bias"),
            ) {
                (Some(m), _) => (m, false),
                (_, Some(m)) => (m, true),
                _ => {
                    return Err(Error::field(
                        &weights_path,
                        key.clone(),
                        "is neither a LoRA factor nor a modules_to_save weight or bias",
                    ));
                }
            };
            if !saved
                .iter()
                .any(|s| module == s || module.ends_with(&format!(".{s}")))
            {
                return Err(Error::field(
                    &weights_path,
                    key.clone(),
                    format!(
                        "is a full tensor for `{module}`, which is not in modules_to_save {saved:?}; \
                         expected only LoRA factors (lora_A, lora_B, lora_magnitude_vector)"
                    ),
                ));
            }
            let entry = replacements
                .entry(module.to_string())
                .or_insert(Replacement {
                    weight: None,
                    bias: None,
                });
            if is_bias {
                entry.bias = Some(values);
            } else {
                entry.weight = Some((shape, values));
            }
        }

        let mut modules = BTreeMap::new();
        for (module, p) in parts {
            let lora = p.finish(&module, &config, &weights_path)?;
            modules.insert(module, lora);
        }
        if modules.is_empty() && replacements.is_empty() {
            return Err(Error::field(
                &weights_path,
                "tensors",
                "the adapter holds no LoRA factors",
            ));
        }
        Ok(Adapter {
            dir,
            config,
            modules,
            replacements,
        })
    }
}

fn parse_config(path: &Path, raw: &Value) -> Result<AdapterConfig> {
    let obj = raw
        .as_object()
        .ok_or_else(|| Error::field(path, "JSON", "expected an object"))?;
    let peft_type = obj
        .get("peft_type")
        .and_then(Value::as_str)
        .unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(Error::field(
            path,
            "peft_type",
            format!("is `{peft_type}`; emogate merges LoRA adapters (peft_type \"LORA\")"),
        ));
    }
    for (field, why) in REFUSED {
        let set = match obj.get(*field) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(Error::field(
                path,
                *field,
                format!("is set; cannot merge exactly because {why}"),
            ));
        }
    }
    if obj.get("use_qalora").and_then(Value::as_bool) == Some(true) {
        return Err(Error::field(
            path,
            "use_qalora",
            "is true; QALoRA pools inputs of a quantized layer and is not a plain low-rank update",
        ));
    }
    match obj.get("bias").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(other) => {
            return Err(Error::field(
                path,
                "bias",
                format!(
                    "is \"{other}\"; trained base-layer biases are not merged by emogate, expected \"none\" (use lora_bias for a LoRA bias)"
                ),
            ));
        }
    }
    let mut config: AdapterConfig = serde_json::from_value(raw.clone())
        .map_err(|e| Error::field(path, "adapter_config", e.to_string()))?;
    let keys = |field: &str| -> Vec<String> {
        obj.get(field)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    config.rank_pattern_order = keys("rank_pattern");
    config.alpha_pattern_order = keys("alpha_pattern");
    if config.r == 0 {
        return Err(Error::field(path, "r", "is 0; expected a positive rank"));
    }
    for key in config
        .rank_pattern
        .keys()
        .chain(config.alpha_pattern.keys())
    {
        regex::Regex::new(&pattern_regex(key)).map_err(|e| {
            Error::field(
                path,
                format!("rank_pattern/alpha_pattern key `{key}`"),
                format!("is not a valid regex: {e}"),
            )
        })?;
    }
    Ok(config)
}

/// PEFT matches a pattern key against a module name as the regex
/// `(.*\.)?(KEY)$` anchored at the start: the key must match a whole
/// dotted suffix of the name.
fn pattern_regex(key: &str) -> String {
    format!(r"^(?:.*\.)?(?:{key})$")
}

/// The first pattern key (in the config's order) that matches `module`.
fn find_pattern<'a, T>(
    patterns: &'a BTreeMap<String, T>,
    order: &[String],
    module: &str,
) -> Option<&'a T> {
    order.iter().find_map(|key| {
        let re = regex::Regex::new(&pattern_regex(key)).ok()?;
        if re.is_match(module) {
            patterns.get(key)
        } else {
            None
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Part {
    A,
    B,
    Bias,
    Magnitude,
}

type Tensor = (Vec<usize>, Vec<f32>);

/// The tensors an adapter file holds for one module, collected as they come.
#[derive(Default)]
struct LoraTensors {
    a: Option<Tensor>,
    b: Option<Tensor>,
    bias: Option<Tensor>,
    magnitude: Option<Tensor>,
}

impl LoraTensors {
    fn set(
        &mut self,
        part: Part,
        shape: Vec<usize>,
        values: Vec<f32>,
        path: &Path,
        key: &str,
    ) -> Result<()> {
        let slot = match part {
            Part::A => &mut self.a,
            Part::B => &mut self.b,
            Part::Bias => &mut self.bias,
            Part::Magnitude => &mut self.magnitude,
        };
        if slot.is_some() {
            return Err(Error::field(path, key, "appears twice"));
        }
        *slot = Some((shape, values));
        Ok(())
    }

    fn finish(self, module: &str, config: &AdapterConfig, path: &Path) -> Result<LoraModule> {
        let key = |s: &str| format!("{PEFT_PREFIX}{module}.{s}");
        let (a_shape, a) = self
            .a
            .ok_or_else(|| Error::field(path, key("lora_A.weight"), "is missing"))?;
        let (b_shape, b) = self
            .b
            .ok_or_else(|| Error::field(path, key("lora_B.weight"), "is missing"))?;
        let [rank, in_features] = a_shape[..] else {
            return Err(Error::field(
                path,
                key("lora_A.weight"),
                format!(
                    "has shape {a_shape:?}; expected [r, in] (a conv LoRA cannot be merged into gate_proj)"
                ),
            ));
        };
        let [out_features, b_rank] = b_shape[..] else {
            return Err(Error::field(
                path,
                key("lora_B.weight"),
                format!("has shape {b_shape:?}; expected [out, r]"),
            ));
        };
        if b_rank != rank {
            return Err(Error::field(
                path,
                key("lora_B.weight"),
                format!("has rank {b_rank} but lora_A.weight has rank {rank}"),
            ));
        }
        let expected_rank = *find_pattern(&config.rank_pattern, &config.rank_pattern_order, module)
            .unwrap_or(&config.r);
        if expected_rank != rank {
            return Err(Error::field(
                path,
                key("lora_A.weight"),
                format!("has rank {rank} but the config (r / rank_pattern) gives {expected_rank}"),
            ));
        }
        let alpha = *find_pattern(&config.alpha_pattern, &config.alpha_pattern_order, module)
            .unwrap_or(&config.lora_alpha);
        let scale = if config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        let bias = match (self.bias, config.lora_bias) {
            (Some((shape, v)), true) if shape == [out_features] => Some(v),
            (Some((shape, _)), true) => {
                return Err(Error::field(
                    path,
                    key("lora_B.bias"),
                    format!("has shape {shape:?}; expected [{out_features}]"),
                ));
            }
            (Some(_), false) => {
                return Err(Error::field(
                    path,
                    "lora_bias",
                    "is false but the adapter has lora_B.bias tensors",
                ));
            }
            (None, true) => {
                return Err(Error::field(
                    path,
                    key("lora_B.bias"),
                    "is missing although lora_bias is true",
                ));
            }
            (None, false) => None,
        };
        let magnitude = match (self.magnitude, config.use_dora) {
            (Some((shape, v)), true) if shape == [out_features] => Some(v),
            (Some((shape, _)), true) => {
                return Err(Error::field(
                    path,
                    key("lora_magnitude_vector"),
                    format!("has shape {shape:?}; expected [{out_features}]"),
                ));
            }
            (Some(_), false) => {
                return Err(Error::field(
                    path,
                    "use_dora",
                    "is false but the adapter has DoRA magnitude vectors",
                ));
            }
            (None, true) => {
                return Err(Error::field(
                    path,
                    key("lora_magnitude_vector"),
                    "is missing although use_dora is true",
                ));
            }
            (None, false) => None,
        };
        Ok(LoraModule {
            rank,
            in_features,
            out_features,
            alpha,
            scale,
            a,
            b,
            bias,
            magnitude,
        })
    }
}

fn to_f32(path: &Path, key: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    use crate::onnx::FloatType;
    let ty = match dtype {
        Dtype::F32 => FloatType::F32,
        Dtype::F16 => FloatType::F16,
        Dtype::BF16 => FloatType::Bf16,
        Dtype::F64 => FloatType::F64,
        other => {
            return Err(Error::field(
                path,
                key,
                format!("has dtype {other:?}; expected F32, F16, BF16 or F64"),
            ));
        }
    };
    Ok(ty.decode(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_whole_dotted_suffix_like_peft() {
        let re = |k: &str| regex::Regex::new(&pattern_regex(k)).unwrap();
        assert!(re("layers.0.mlp.gate_proj").is_match("model.layers.0.mlp.gate_proj"));
        assert!(re("model.layers.0.mlp.gate_proj").is_match("model.layers.0.mlp.gate_proj"));
        assert!(!re("layers.0.mlp.gate_proj").is_match("model.layers.10.mlp.gate_proj"));
        assert!(!re("0.mlp.gate_proj").is_match("model.layers.10.mlp.gate_proj"));
        assert!(re(r"layers\.\d+\.mlp\.gate_proj").is_match("model.layers.10.mlp.gate_proj"));
    }
}
