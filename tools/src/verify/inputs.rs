//! What `verify` feeds both models: the graph's runtime inputs with
//! concrete shapes, and the input sets, from an `.npz` file or seeded.
//!
//! Seeded inputs come from the model's manifest when it has one (random
//! pixels normalized as the manifest says; random tones and noise through
//! the same log-mel as the runtime), otherwise from the input shapes
//! (standard normal floats; token ids below the vocabulary size of the
//! embedding they index).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use emogate_infer::{Featurizer, Tensor, TensorData};
use emogate_models::manifest::{InputSpec as ManifestInput, Manifest, VideoInput, VideoLayout};
use emogate_models::onnx::proto::tensor_proto::DataType;
use emogate_models::onnx::proto::{tensor_shape_proto, type_proto};
use emogate_models::onnx::{OnnxModel, initializers_by_name, onnx_type_name, runtime_inputs};

use crate::error::{Error, Result};
use crate::npz::{NpyArray, NpyData, read_npz};
use crate::rng::Rng;

/// A symbolic first (batch) axis without a `--dim` value.
pub const DEFAULT_BATCH_DIM: usize = 1;
/// Any other symbolic axis without a `--dim` value.
pub const DEFAULT_DIM: usize = 8;
/// Token ids of an input that indexes no embedding table stay below this.
pub const DEFAULT_VOCAB: usize = 100;

/// Element type of a model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::I64 => "int64",
        }
    }
}

/// One graph input: name, type, concrete shape.
#[derive(Debug, Clone)]
pub struct InputDesc {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<usize>,
    /// For token ids: the row count of the embedding table they index.
    pub vocab: Option<usize>,
}

/// Parses a `--dim NAME=N` value.
///
/// # Errors
/// [`Error::Usage`] for a value without `=` or with an N that is not a
/// positive integer.
pub fn parse_dim(text: &str) -> Result<(String, usize)> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| Error::usage(format!("--dim `{text}`: expected NAME=N")))?;
    match value.parse::<usize>() {
        Ok(n) if n > 0 && !name.is_empty() => Ok((name.to_string(), n)),
        Ok(_) if name.is_empty() => Err(Error::usage(format!(
            "--dim `{text}`: the symbol name is empty; expected NAME=N"
        ))),
        _ => Err(Error::usage(format!(
            "--dim `{text}`: `{value}` is not a positive integer"
        ))),
    }
}

/// The graph's runtime inputs (not initializers) with concrete shapes:
/// symbolic dimensions take `dims[symbol]`, else [`DEFAULT_BATCH_DIM`] on
/// the first axis and [`DEFAULT_DIM`] elsewhere.
///
/// # Errors
/// [`Error::Field`] for an input of a type other than float32 or int64,
/// or without a shape.
pub fn model_inputs(model: &OnnxModel, dims: &HashMap<String, usize>) -> Result<Vec<InputDesc>> {
    let graph = model.graph();
    let initializers = initializers_by_name(graph);
    let mut out = Vec::new();
    for input in runtime_inputs(graph) {
        let name = input.name().to_string();
        let field = || format!("graph input `{name}`");
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(Error::field(
                model.path(),
                field(),
                "is not a tensor; verify feeds float32 and int64 tensors",
            ));
        };
        let elem = match t.elem_type() {
            x if x == DataType::Float as i32 => Elem::F32,
            x if x == DataType::Int64 as i32 => Elem::I64,
            x => {
                return Err(Error::field(
                    model.path(),
                    field(),
                    format!(
                        "has element type {}; verify feeds float32 and int64 inputs",
                        onnx_type_name(x)
                    ),
                ));
            }
        };
        let shape_proto = t.shape.as_ref().ok_or_else(|| {
            Error::field(
                model.path(),
                field(),
                "has no shape; verify needs one to make inputs",
            )
        })?;
        let shape = shape_proto
            .dim
            .iter()
            .enumerate()
            .map(|(axis, d)| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => *v as usize,
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) if dims.contains_key(p) => {
                    dims[p]
                }
                _ if axis == 0 => DEFAULT_BATCH_DIM,
                _ => DEFAULT_DIM,
            })
            .collect();
        // Token ids: the rows of the first Gather table they index.
        let vocab = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "Gather" && n.input.get(1) == Some(&name))
            .find_map(|n| initializers.get(n.input.first()?.as_str()))
            .and_then(|t| t.dims.first())
            .and_then(|&rows| usize::try_from(rows).ok());
        out.push(InputDesc {
            name,
            elem,
            shape,
            vocab,
        });
    }
    Ok(out)
}

/// Where `verify`'s input sets come from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputChoice {
    /// One array per model input in an `.npz` file (see [`npz_inputs`]).
    Npz(PathBuf),
    /// `count` seeded sets (see [`random_inputs`]), float inputs times `scale`.
    Random { count: usize, seed: u64, scale: f32 },
}

impl InputChoice {
    /// Random input sets when neither a file nor a count is given.
    pub const DEFAULT_RANDOM_SETS: usize = 200;

    /// The choice `--inputs FILE`, `--random N`, `--seed S` and
    /// `--input-scale X` make.
    ///
    /// # Errors
    /// [`Error::Usage`] for both a file and a count, a count of 0, a scale
    /// with a file, or a scale that is not a finite number.
    pub fn new(npz: Option<PathBuf>, random: Option<usize>, seed: u64, scale: f32) -> Result<Self> {
        if !scale.is_finite() {
            return Err(Error::usage(format!(
                "--input-scale {scale}: expected a finite number"
            )));
        }
        match (npz, random) {
            (Some(_), Some(_)) => Err(Error::usage(
                "--inputs and --random exclude each other; give one",
            )),
            (Some(_), None) if scale != 1.0 => Err(Error::usage(
                "--input-scale applies to --random inputs only",
            )),
            (Some(path), None) => Ok(InputChoice::Npz(path)),
            (None, Some(0)) => Err(Error::usage("--random must be at least 1")),
            (None, count) => Ok(InputChoice::Random {
                count: count.unwrap_or(Self::DEFAULT_RANDOM_SETS),
                seed,
                scale,
            }),
        }
    }

    /// The input sets for `descs`, and a description of where they came
    /// from for the report.
    ///
    /// # Errors
    /// Those of [`npz_inputs`] and [`random_inputs`].
    pub fn sets(
        &self,
        descs: &[InputDesc],
        manifest: Option<&Manifest>,
    ) -> Result<(Vec<Vec<Tensor>>, String)> {
        match self {
            InputChoice::Npz(path) => Ok((npz_inputs(path, descs)?, path.display().to_string())),
            &InputChoice::Random { count, seed, scale } => {
                let how = if manifest.is_some() {
                    "manifest"
                } else {
                    "input shapes"
                };
                Ok((
                    random_inputs(descs, manifest, count, seed, scale)?,
                    format!("random ({count} sets from the {how}, seed {seed}, scale {scale})"),
                ))
            }
        }
    }
}

/// Seeded audio for the manifest's audio input: one to three tones
/// between 80 Hz and 4 kHz plus noise, at a gain between -60 and 0 dB.
fn random_audio(rng: &mut Rng, len: usize, sample_rate: f64) -> Vec<f32> {
    const MAX_EXTRA_TONES: u64 = 3;
    const LOWEST_HZ: f64 = 80.0;
    const HIGHEST_HZ: f64 = 4000.0;
    const MAX_NOISE: f64 = 0.3;
    let gain = 10f64.powf(-3.0 + 3.0 * rng.uniform());
    let tones: Vec<(f64, f64, f64)> = (0..1 + (rng.next_u64() % MAX_EXTRA_TONES) as usize)
        .map(|_| {
            (
                LOWEST_HZ + (HIGHEST_HZ - LOWEST_HZ) * rng.uniform(),
                rng.uniform(),
                std::f64::consts::TAU * rng.uniform(),
            )
        })
        .collect();
    let noise = MAX_NOISE * rng.uniform();
    (0..len)
        .map(|t| {
            let s: f64 = tones
                .iter()
                .map(|(f, a, ph)| {
                    a * (std::f64::consts::TAU * f * t as f64 / sample_rate + ph).sin()
                })
                .sum();
            (gain * (s + noise * rng.normal())) as f32
        })
        .collect()
}

/// Seeded pixels for a manifest video input of `len` values: a gradient
/// plus noise in 0..255, normalized as the manifest says.
fn random_pixels(rng: &mut Rng, v: &VideoInput, len: usize) -> Vec<f32> {
    const GRADIENT_SIGMA: f64 = 60.0;
    const MEAN_LEVEL: f64 = 128.0;
    const LEVEL_SIGMA: f64 = 40.0;
    const NOISE_SIGMA: f64 = 25.0;
    let c = v.color.channels();
    let (gx, gy, base) = (
        rng.normal() * GRADIENT_SIGMA,
        rng.normal() * GRADIENT_SIGMA,
        MEAN_LEVEL + LEVEL_SIGMA * rng.normal(),
    );
    (0..len)
        .map(|k| {
            let ch = match v.layout {
                VideoLayout::Nhwc => k % c,
                VideoLayout::Nchw => (k / (v.height * v.width)) % c,
            };
            let pix = k / c;
            let (y, x) = ((pix / v.width) % v.height, pix % v.width);
            let p = (base
                + gx * (x as f64 / v.width as f64 - 0.5)
                + gy * (y as f64 / v.height as f64 - 0.5)
                + NOISE_SIGMA * rng.normal())
            .clamp(0.0, 255.0);
            let mean = v.mean.get(ch).or(v.mean.first()).copied().unwrap_or(0.0);
            let std = v.std.get(ch).or(v.std.first()).copied().unwrap_or(1.0);
            ((p / 255.0) as f32 - mean) / std
        })
        .collect()
}

/// The manifest's inputs for one set, by name: audio through the
/// runtime's own features, video as [`random_pixels`].
fn manifest_set(
    manifest: &Manifest,
    featurizer: &mut Featurizer,
    rng: &mut Rng,
) -> Result<HashMap<String, Tensor>> {
    let audio = featurizer
        .audio()
        .map(|a| (a.window_samples(), f64::from(a.sample_rate)));
    let audio = audio.map(|(len, rate)| random_audio(rng, len, rate));
    let tensors = featurizer
        .build(None, audio.as_deref())
        .map_err(|source| Error::Features {
            what: "computing manifest features".into(),
            source,
        })?;
    let mut by_name = HashMap::new();
    for (spec, mut t) in manifest.inputs.iter().zip(tensors) {
        if let ManifestInput::Video(v) = spec {
            let len = t.shape.iter().product::<usize>();
            t = Tensor::f32(t.shape.clone(), random_pixels(rng, v, len));
        }
        by_name.insert(spec.name().to_string(), t);
    }
    Ok(by_name)
}

/// `n` random input sets, seeded. With a manifest, inputs look like what
/// the runtime feeds; without, they follow the input shapes. Every float
/// input is multiplied by `scale` (large-activation tests).
///
/// # Errors
/// [`Error::Features`] for a manifest the featurizer refuses,
/// [`Error::Input`] for a manifest input whose shape the graph does not take.
pub fn random_inputs(
    descs: &[InputDesc],
    manifest: Option<&Manifest>,
    n: usize,
    seed: u64,
    scale: f32,
) -> Result<Vec<Vec<Tensor>>> {
    let mut rng = Rng::new(seed);
    let mut featurizer = manifest
        .map(Featurizer::new)
        .transpose()
        .map_err(|source| Error::Features {
            what: "preparing the manifest's preprocessing".into(),
            source,
        })?;
    let mut sets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut by_name = match (manifest, featurizer.as_mut()) {
            (Some(m), Some(f)) => manifest_set(m, f, &mut rng)?,
            _ => HashMap::new(),
        };
        let mut set = Vec::with_capacity(descs.len());
        for d in descs {
            let len: usize = d.shape.iter().product();
            let mut t = match (by_name.remove(&d.name), d.elem) {
                (Some(t), _) if t.shape != d.shape => {
                    return Err(Error::input(
                        &d.name,
                        format!(
                            "the manifest feeds it as {:?} but the graph wants {:?}",
                            t.shape, d.shape
                        ),
                    ));
                }
                (Some(t), _) => t,
                (None, Elem::F32) => Tensor::f32(
                    d.shape.clone(),
                    (0..len).map(|_| rng.normal() as f32).collect(),
                ),
                (None, Elem::I64) => {
                    let vocab = d.vocab.unwrap_or(DEFAULT_VOCAB).max(1) as u64;
                    Tensor::i64(
                        d.shape.clone(),
                        (0..len).map(|_| (rng.next_u64() % vocab) as i64).collect(),
                    )
                }
            };
            if scale != 1.0
                && let TensorData::F32(v) = &mut t.data
            {
                v.iter_mut().for_each(|x| *x *= scale);
            }
            set.push(t);
        }
        sets.push(set);
    }
    Ok(sets)
}

/// How many samples array `a` holds for input `d`: 1 when shaped as the
/// input, N when shaped `[N, ...input shape]`.
fn samples_of(path: &Path, a: &NpyArray, d: &InputDesc) -> Result<usize> {
    let field = || format!("array `{}`", d.name);
    let matches_type = matches!(
        (&a.data, d.elem),
        (NpyData::F32(_), Elem::F32) | (NpyData::I64(_), Elem::I64)
    );
    if !matches_type {
        let kind = match a.data {
            NpyData::F32(_) => "floating point",
            NpyData::I64(_) => "integer",
        };
        return Err(Error::field(
            path,
            field(),
            format!("is {kind}; the input wants {}", d.elem.name()),
        ));
    }
    if d.shape.contains(&0) {
        return Err(Error::field(
            path,
            field(),
            format!(
                "the input's shape {:?} holds no values; give every --dim a positive size",
                d.shape
            ),
        ));
    }
    if a.shape == d.shape {
        Ok(1)
    } else if a.shape.len() == d.shape.len() + 1 && a.shape[1..] == d.shape[..] {
        Ok(a.shape[0])
    } else {
        let dims: Vec<String> = d.shape.iter().map(ToString::to_string).collect();
        Err(Error::field(
            path,
            field(),
            format!(
                "has shape {:?}; expected {:?} or [N, {}]",
                a.shape,
                d.shape,
                dims.join(", ")
            ),
        ))
    }
}

/// Input sets from an `.npz` file: one array per graph input, named after
/// it, shaped either as the input (one set) or with one extra leading axis
/// of N samples (N sets).
///
/// # Errors
/// [`Error::Npz`] for a file that is not a readable `.npz`;
/// [`Error::Field`] naming the array for a missing input, a wrong type or
/// shape, or sample counts that disagree.
pub fn npz_inputs(path: &Path, descs: &[InputDesc]) -> Result<Vec<Vec<Tensor>>> {
    npz_sets(path, &read_npz(path)?, descs)
}

/// [`npz_inputs`] on arrays already read from `path` (other arrays, such
/// as `eval`'s labels, are left alone).
///
/// # Errors
/// As [`npz_inputs`].
pub fn npz_sets(path: &Path, arrays: &[NpyArray], descs: &[InputDesc]) -> Result<Vec<Vec<Tensor>>> {
    let mut n: Option<usize> = None;
    let mut per_input = Vec::new();
    for d in descs {
        let a = arrays.iter().find(|a| a.name == d.name).ok_or_else(|| {
            let names: Vec<&str> = arrays.iter().map(|a| a.name.as_str()).collect();
            Error::field(
                path,
                "arrays",
                format!(
                    "no array named `{}` (the model's input); it has: {}",
                    d.name,
                    names.join(", ")
                ),
            )
        })?;
        let samples = samples_of(path, a, d)?;
        if let Some(prev) = n
            && prev != samples
        {
            return Err(Error::field(
                path,
                format!("array `{}`", d.name),
                format!("holds {samples} samples; the other arrays hold {prev}"),
            ));
        }
        n = Some(samples);
        per_input.push(a);
    }
    // `samples` × the input's (non-zero) size = the array's values, so
    // this is bounded by the file's contents.
    let mut sets = vec![Vec::with_capacity(descs.len()); n.unwrap_or(0)];
    for (d, a) in descs.iter().zip(per_input) {
        let len: usize = d.shape.iter().product();
        for (s, set) in sets.iter_mut().enumerate() {
            let range = s * len..(s + 1) * len;
            set.push(match &a.data {
                NpyData::F32(v) => Tensor::f32(d.shape.clone(), v[range].to_vec()),
                NpyData::I64(v) => Tensor::i64(d.shape.clone(), v[range].to_vec()),
            });
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_parse_as_name_equals_positive_size() {
        assert_eq!(parse_dim("seq=16").unwrap(), ("seq".to_string(), 16));
        for bad in ["seq", "seq=0", "seq=-1", "seq=x", "=4"] {
            let e = parse_dim(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--dim `{bad}`")), "{e}");
        }
    }

    #[test]
    fn input_choice_policy() {
        let random = |count| InputChoice::Random {
            count,
            seed: 3,
            scale: 1.0,
        };
        assert_eq!(
            InputChoice::new(None, None, 3, 1.0).unwrap(),
            random(InputChoice::DEFAULT_RANDOM_SETS)
        );
        assert_eq!(InputChoice::new(None, Some(5), 3, 1.0).unwrap(), random(5));
        let npz = PathBuf::from("in.npz");
        assert_eq!(
            InputChoice::new(Some(npz.clone()), None, 3, 1.0).unwrap(),
            InputChoice::Npz(npz.clone())
        );
        for (file, count, scale, needle) in [
            (None, Some(0), 1.0, "--random must be at least 1"),
            (
                Some(npz.clone()),
                None,
                2.0,
                "--input-scale applies to --random",
            ),
            (Some(npz.clone()), Some(2), 1.0, "exclude each other"),
            (None, None, f32::NAN, "finite"),
        ] {
            let e = InputChoice::new(file, count, 0, scale)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn npz_arrays_must_fit_the_inputs() {
        let d = InputDesc {
            name: "x".into(),
            elem: Elem::F32,
            shape: vec![1, 2],
            vocab: None,
        };
        let array = |shape: Vec<usize>, data| NpyArray {
            name: "x".into(),
            shape,
            data,
        };
        let p = Path::new("in.npz");
        let n = |a| samples_of(p, &a, &d);
        assert_eq!(n(array(vec![1, 2], NpyData::F32(vec![0.0; 2]))).unwrap(), 1);
        assert_eq!(
            n(array(vec![3, 1, 2], NpyData::F32(vec![0.0; 6]))).unwrap(),
            3
        );
        let e = n(array(vec![2, 2], NpyData::F32(vec![0.0; 4])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in.npz: array `x`: has shape [2, 2]; expected [1, 2] or [N, 1, 2]"),
            "{e}"
        );
        let e = n(array(vec![1, 2], NpyData::I64(vec![0; 2])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is integer; the input wants float32"), "{e}");
        // A zero-sized input would let N grow without values behind it.
        let empty = InputDesc {
            shape: vec![0, 2],
            ..d.clone()
        };
        let e = samples_of(p, &array(vec![1 << 60, 0, 2], NpyData::F32(vec![])), &empty)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no values"), "{e}");
    }
}
