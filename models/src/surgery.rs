//! Module-level weight surgery on an ONNX model: choosing modules by a
//! regular expression (and layers), and copying a module's tensors from a
//! donor model of the same architecture (`transfer`, `ablate --mode
//! revert`). The donor may come from another exporter: modules are paired
//! through [`crate::onnx::params::ParamIndex::resolve`], the resolver merge
//! uses.
//!
//! Copies are bit-exact: when both models store a tensor the same way (same
//! type, layout and `Gemm` scale) its bytes are copied as they are; a
//! transposed layout moves values without arithmetic. Only a `Gemm` scale
//! that differs between the two, or a different float type, goes through
//! `f32` arithmetic, and the report says so. Shapes that disagree are
//! refused, as are tensors another layer shares (tied weights), which a copy
//! would change for both.
//!
//! Updates are computed one tensor at a time ([`tensor_update`]), so
//! [`crate::onnx::save_model`] streams a model of any size.

use std::ops::RangeInclusive;
use std::path::Path;

use regex::Regex;

use crate::error::{Error, Result};
use crate::onnx::linear::Resolution;
use crate::onnx::params::{Param, ParamIndex, Role, stored_to_torch, torch_to_stored};
use crate::onnx::{FloatType, OnnxModel, TensorBytes, TensorUpdate};

/// Which modules a command works on.
#[derive(Debug, Clone)]
pub struct ModuleFilter {
    /// Matched against every path a module is known by.
    pub pattern: Regex,
    /// Only modules whose layer index (the last index in the path) is in
    /// this range; modules without one are left out when it is set.
    pub layers: Option<RangeInclusive<usize>>,
    /// Weights only (leave biases alone).
    pub weights_only: bool,
}

impl ModuleFilter {
    /// A filter on `pattern` alone, weights and biases.
    ///
    /// # Errors
    /// [`Error::Field`] naming `--modules` for an invalid expression.
    pub fn new(pattern: &str) -> Result<Self> {
        Ok(ModuleFilter {
            pattern: Regex::new(pattern).map_err(|e| {
                Error::field(
                    "--modules",
                    format!("`{pattern}`"),
                    format!("not a valid regular expression: {e}"),
                )
            })?,
            layers: None,
            weights_only: false,
        })
    }

    /// The selected params of `index`, in index order.
    ///
    /// # Errors
    /// [`Error::Field`] when nothing matches, listing the model's modules.
    pub fn select(&self, model: &Path, index: &ParamIndex) -> Result<Vec<usize>> {
        let selected: Vec<usize> = index
            .matching(&self.pattern)
            .into_iter()
            .filter(|i| {
                let p = &index.params[*i];
                (!self.weights_only || p.role == Role::Weight)
                    && self
                        .layers
                        .as_ref()
                        .is_none_or(|r| p.layer().is_some_and(|l| r.contains(&l)))
            })
            .collect();
        if selected.is_empty() {
            let layers = self
                .layers
                .as_ref()
                .map(|r| format!(" in layers {}-{}", r.start(), r.end()))
                .unwrap_or_default();
            return Err(Error::field(
                model,
                "--modules",
                format!(
                    "`{}` matches no module{layers}; the model's modules are: {}",
                    self.pattern.as_str(),
                    index.modules().join(", ")
                ),
            ));
        }
        Ok(selected)
    }
}

/// One tensor to copy: `into.params[target]` takes `donor.params[source]`.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub target: usize,
    pub source: usize,
}

/// What one copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub module: String,
    pub role: Role,
    /// The initializer written.
    pub initializer: String,
    /// The donor's module path and initializer.
    pub from_module: String,
    pub from_initializer: String,
    pub shape: Vec<usize>,
    /// The bytes were copied as they are (or only moved by a transpose).
    pub bit_exact: bool,
}

/// Pairs each selected param of `into` with the donor's.
///
/// # Errors
/// [`Error::Unresolved`] for modules the donor lacks or names ambiguously;
/// [`Error::Field`] for shapes that disagree, non-float tensors and shared
/// tensors.
pub fn pair_params(
    into: &OnnxModel,
    into_index: &ParamIndex,
    selected: &[usize],
    donor: &OnnxModel,
    donor_index: &ParamIndex,
) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    let mut unmatched = Vec::new();
    let mut ambiguous = Vec::new();
    for &target in selected {
        let p = &into_index.params[target];
        match donor_index.resolve(&p.module, p.role) {
            Resolution::Found(source) => pairs.push(Pair { target, source }),
            Resolution::Unmatched => unmatched.push(format!("{} ({})", p.module, p.role.name())),
            Resolution::Ambiguous(hits) => ambiguous.push((
                format!("{} ({})", p.module, p.role.name()),
                hits.iter().map(|h| donor_index.describe(*h)).collect(),
            )),
        }
    }
    if !unmatched.is_empty() || !ambiguous.is_empty() {
        return Err(Error::Unresolved {
            model: donor.path().to_path_buf(),
            unmatched,
            ambiguous,
        });
    }
    for pair in &pairs {
        let (t, s) = (
            &into_index.params[pair.target],
            &donor_index.params[pair.source],
        );
        check_writable(into.path(), t)?;
        if s.dtype.is_none() {
            return Err(Error::field(
                donor.path(),
                format!("tensor `{}`", s.initializer),
                "is not a float tensor",
            ));
        }
        if t.torch_dims() != s.torch_dims() {
            return Err(Error::field(
                donor.path(),
                format!("module `{}` {}", s.module, s.role.name()),
                format!(
                    "has shape {:?} (as PyTorch holds it) but `{}` in {} has {:?}; \
                     transfer copies between models of the same architecture only",
                    s.torch_dims(),
                    t.module,
                    into.path().display(),
                    t.torch_dims()
                ),
            ));
        }
    }
    Ok(pairs)
}

/// Refuses a tensor a change must not touch: not a float, or shared with
/// another layer.
///
/// # Errors
/// [`Error::Field`] naming the tensor.
pub fn check_writable(model: &Path, p: &Param) -> Result<()> {
    if p.dtype.is_none() {
        return Err(Error::field(
            model,
            format!("tensor `{}`", p.initializer),
            "is not a float tensor",
        ));
    }
    if p.readers > 1 {
        return Err(Error::field(
            model,
            format!("tensor `{}` of module `{}`", p.initializer, p.module),
            format!(
                "is read by {} nodes (a tied or shared weight); changing it would change the other layers too",
                p.readers
            ),
        ));
    }
    Ok(())
}

/// The new values of `pair.target`: the donor's tensor, stored as the
/// target stores it.
///
/// # Errors
/// [`Error::Io`]/[`Error::Field`] reading the donor's tensor.
pub fn tensor_update(
    into_index: &ParamIndex,
    donor: &OnnxModel,
    donor_index: &ParamIndex,
    pair: Pair,
) -> Result<(TensorUpdate, CopyReport)> {
    let t = &into_index.params[pair.target];
    let s = &donor_index.params[pair.source];
    let tensor = donor
        .graph()
        .initializer
        .iter()
        .find(|x| x.name() == s.initializer)
        .ok_or_else(|| {
            Error::field(
                donor.path(),
                format!("initializer `{}`", s.initializer),
                "is not in the graph",
            )
        })?;
    let same_storage =
        t.dtype == s.dtype && t.layout == s.layout && t.scale == s.scale && t.dims == s.dims;
    let (bytes, bit_exact) = if same_storage && let Some(raw) = donor.raw_bytes(tensor)? {
        (TensorBytes::Raw(raw), true)
    } else {
        let (_, values) = donor.float_values(tensor)?;
        let exact = t.dtype == s.dtype && t.scale == s.scale;
        let stored = torch_to_stored(t, stored_to_torch(s, values));
        let ty = t.dtype.unwrap_or(FloatType::F32);
        let bytes = if ty == FloatType::F32 {
            TensorBytes::F32(stored)
        } else {
            TensorBytes::Raw(ty.encode(&stored))
        };
        (bytes, exact)
    };
    Ok((
        TensorUpdate {
            name: t.initializer.clone(),
            bytes,
        },
        CopyReport {
            module: t.module.clone(),
            role: t.role,
            initializer: t.initializer.clone(),
            from_module: s.module.clone(),
            from_initializer: s.initializer.clone(),
            shape: t.torch_dims(),
            bit_exact,
        },
    ))
}
