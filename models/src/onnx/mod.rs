//! ONNX model files: decoding, external data, and tensor access.
//!
//! An [`OnnxModel`] is a decoded `ModelProto` plus the folder it came from.
//! Tensors whose values live in side files (`data_location = EXTERNAL`, the
//! form every model over 2 GB must use) are described by an [`ExternalData`]
//! reference; their bytes are read on demand, one tensor at a time, so a
//! multi-gigabyte model never has to fit in memory.

pub mod build;
pub mod proto;
mod save;
mod tensor;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use prost::Message;

pub use save::{SaveOptions, SaveSummary, TensorUpdate, save_model};
pub use tensor::{FloatType, element_count, onnx_type_name};

use crate::error::{Error, Result};
use proto::{ModelProto, TensorProto, tensor_proto::DataLocation};

/// A decoded ONNX model and the folder its external data is relative to.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// The decoded protobuf. Graph surgery edits a clone of it.
    pub proto: ModelProto,
    path: PathBuf,
    dir: PathBuf,
}

/// Where an externally stored tensor's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// `location` as written in the model, relative to the model's folder.
    pub location: String,
    /// The resolved file.
    pub file: PathBuf,
    pub offset: u64,
    pub length: u64,
}

impl OnnxModel {
    /// Reads and decodes `path`, then checks every external data reference
    /// (file present, inside the model's folder, range within the file) so
    /// that a broken model fails here and not halfway through a conversion.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Decode`] if it is
    /// not a `ModelProto`, [`Error::Field`] for a bad external data reference.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let proto = ModelProto::decode(Bytes::from(bytes)).map_err(|source| Error::Decode {
            path: path.clone(),
            source,
        })?;
        if proto.graph.is_none() {
            return Err(Error::field(&path, "graph", "the model has no graph"));
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let model = OnnxModel { proto, path, dir };
        model.check_external_data()?;
        Ok(model)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder external data locations are relative to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The main graph.
    pub fn graph(&self) -> &proto::GraphProto {
        // `load` rejects models without a graph.
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// Whether any initializer keeps its values in a side file.
    pub fn uses_external_data(&self) -> bool {
        self.graph().initializer.iter().any(is_external)
    }

    /// The external data reference of `tensor`, or `None` if it is stored inline.
    ///
    /// # Errors
    /// [`Error::Field`] if `location` is missing, absolute or leaves the
    /// model's folder, or if `offset`/`length` are not numbers.
    pub fn external_data(&self, tensor: &TensorProto) -> Result<Option<ExternalData>> {
        if !is_external(tensor) {
            return Ok(None);
        }
        let name = tensor.name();
        let field = |key: &str| format!("tensor `{name}` external_data.{key}");
        let entries: HashMap<&str, &str> = tensor
            .external_data
            .iter()
            .map(|e| (e.key(), e.value()))
            .collect();
        let location = *entries.get("location").ok_or_else(|| {
            Error::field(&self.path, field("location"), "missing; expected a file name relative to the model's folder")
        })?;
        let parse = |key: &str| -> Result<Option<u64>> {
            entries
                .get(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        Error::field(&self.path, field(key), format!("`{v}` is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = match parse("length")? {
            Some(l) => l,
            None => self.expected_byte_len(tensor)? as u64,
        };
        let file = self.resolve_location(location).map_err(|why| {
            Error::field(&self.path, field("location"), format!("`{location}` {why}"))
        })?;
        Ok(Some(ExternalData {
            location: location.to_string(),
            file,
            offset,
            length,
        }))
    }

    /// The raw little-endian bytes of a tensor stored in `raw_data` or in a
    /// side file. Returns `None` for tensors kept in typed fields.
    ///
    /// # Errors
    /// [`Error::Io`] when the side file cannot be read.
    pub fn raw_bytes(&self, tensor: &TensorProto) -> Result<Option<Vec<u8>>> {
        if let Some(ext) = self.external_data(tensor)? {
            return read_range(&ext.file, ext.offset, ext.length).map(Some);
        }
        Ok(tensor.raw_data.as_ref().map(|b| b.to_vec()))
    }

    /// A float tensor's values as `f32`, wherever they are stored.
    ///
    /// # Errors
    /// [`Error::Field`] for a non-float tensor or a size that disagrees with `dims`.
    pub fn float_values(&self, tensor: &TensorProto) -> Result<(FloatType, Vec<f32>)> {
        let ty = self.float_type(tensor)?;
        let expected = self.expected_len(tensor)?;
        let values = match self.raw_bytes(tensor)? {
            Some(bytes) => {
                if bytes.len() != expected * ty.size() {
                    return Err(Error::field(
                        &self.path,
                        format!("tensor `{}`", tensor.name()),
                        format!(
                            "holds {} bytes but its dims {:?} of {} need {}",
                            bytes.len(),
                            tensor.dims,
                            onnx_type_name(ty.onnx_code()),
                            expected * ty.size()
                        ),
                    ));
                }
                ty.decode(&bytes)
            }
            None => tensor::typed_float_values(tensor, ty).unwrap_or_default(),
        };
        if values.len() != expected {
            return Err(Error::field(
                &self.path,
                format!("tensor `{}`", tensor.name()),
                format!("holds {} values but its dims {:?} need {expected}", values.len(), tensor.dims),
            ));
        }
        Ok((ty, values))
    }

    /// The float type of a tensor, or an error naming its actual type.
    pub fn float_type(&self, tensor: &TensorProto) -> Result<FloatType> {
        FloatType::from_onnx(tensor.data_type()).ok_or_else(|| {
            Error::field(
                &self.path,
                format!("tensor `{}` data_type", tensor.name()),
                format!(
                    "is {}; expected float, float16, bfloat16 or double",
                    onnx_type_name(tensor.data_type())
                ),
            )
        })
    }

    fn expected_len(&self, tensor: &TensorProto) -> Result<usize> {
        element_count(tensor).ok_or_else(|| {
            Error::field(
                &self.path,
                format!("tensor `{}` dims", tensor.name()),
                format!("{:?} is not a valid shape", tensor.dims),
            )
        })
    }

    fn expected_byte_len(&self, tensor: &TensorProto) -> Result<usize> {
        Ok(self.expected_len(tensor)? * self.float_type(tensor)?.size())
    }

    /// Joins a `location` to the model's folder, refusing paths that could
    /// reach outside it (absolute paths, `..`, symlinks pointing away).
    fn resolve_location(&self, location: &str) -> std::result::Result<PathBuf, String> {
        let rel = Path::new(location);
        if location.is_empty() {
            return Err("is empty".into());
        }
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!(
                "leaves the model's folder {}; external data must be a relative path inside it",
                self.dir.display()
            ));
        }
        let joined = self.dir.join(rel);
        let canonical = joined
            .canonicalize()
            .map_err(|e| format!("cannot be opened as {} ({e})", joined.display()))?;
        let dir = self
            .dir
            .canonicalize()
            .map_err(|e| format!("model folder {} cannot be resolved ({e})", self.dir.display()))?;
        if !canonical.starts_with(&dir) {
            return Err(format!(
                "resolves to {}, outside the model's folder {}",
                canonical.display(),
                dir.display()
            ));
        }
        Ok(canonical)
    }

    fn check_external_data(&self) -> Result<()> {
        let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
        for tensor in &self.graph().initializer {
            let Some(ext) = self.external_data(tensor)? else { continue };
            let size = match sizes.get(&ext.file) {
                Some(s) => *s,
                None => {
                    let s = std::fs::metadata(&ext.file)
                        .map_err(|e| Error::io(&ext.file, e))?
                        .len();
                    sizes.insert(ext.file.clone(), s);
                    s
                }
            };
            let end = ext.offset.checked_add(ext.length);
            if end.is_none_or(|end| end > size) {
                return Err(Error::field(
                    &self.path,
                    format!("tensor `{}` external_data", tensor.name()),
                    format!(
                        "offset {} + length {} is past the end of {} ({size} bytes)",
                        ext.offset,
                        ext.length,
                        ext.file.display()
                    ),
                ));
            }
            if let Ok(expected) = self.expected_byte_len(tensor) {
                if expected as u64 != ext.length {
                    return Err(Error::field(
                        &self.path,
                        format!("tensor `{}` external_data.length", tensor.name()),
                        format!("is {} but dims {:?} need {expected} bytes", ext.length, tensor.dims),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether a tensor's values live in a side file.
pub fn is_external(tensor: &TensorProto) -> bool {
    tensor.data_location == Some(DataLocation::External as i32)
}

pub(crate) fn read_range(file: &Path, offset: u64, length: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let len = usize::try_from(length).map_err(|_| {
        Error::field(file, "length", format!("{length} bytes do not fit in memory"))
    })?;
    // `read_to_end` fills spare capacity without zeroing it first.
    let mut buf = Vec::with_capacity(len);
    let mut reader = &f;
    reader.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(file, e))?;
    reader
        .take(length)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(file, e))?;
    if buf.len() != len {
        return Err(Error::field(
            file,
            "length",
            format!("expected {length} bytes at offset {offset}, the file ended after {}", buf.len()),
        ));
    }
    Ok(buf)
}
