//! Hugging Face safetensors checkpoints, read one tensor at a time: a single
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`
//! (`weight_map`: tensor name → shard file).
//!
//! Each shard is memory-mapped (memmap2) and parsed by the `safetensors`
//! crate; a tensor's pages are read when it is decoded and handed back to
//! the kernel (`MADV_DONTNEED`) once it has been, so the resident memory of
//! a pass over a 7B checkpoint stays at the tensors in flight, not the
//! checkpoint.
//!
//! Tensor names are PyTorch parameter names (`model.layers.0.mlp.gate_proj.weight`):
//! the module is the name without `.weight`/`.bias`, matched against other
//! models with the resolver merge uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::onnx::FloatType;
use crate::onnx::params::Role;

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointTensor {
    /// The full tensor name.
    pub name: String,
    pub module: String,
    pub paths: BTreeSet<String>,
    pub role: Role,
    pub shape: Vec<usize>,
    pub dtype: FloatType,
    /// Which shard holds it (index into [`Checkpoint::shards`]).
    pub shard: usize,
}

/// A safetensors checkpoint, mapped.
pub struct Checkpoint {
    pub path: PathBuf,
    pub shards: Vec<PathBuf>,
    maps: Vec<Mmap>,
    pub tensors: Vec<CheckpointTensor>,
}

/// Whether `path` is a safetensors checkpoint (file, folder with one, or
/// an index).
pub fn is_checkpoint(path: &Path) -> bool {
    let ext = |p: &Path| p.extension().is_some_and(|e| e == "safetensors");
    ext(path)
        || path.file_name().is_some_and(|n| n == INDEX_FILE)
        || (path.is_dir()
            && (path.join(INDEX_FILE).is_file() || path.join("model.safetensors").is_file()))
}

fn float_type(path: &Path, name: &str, dtype: Dtype) -> Result<Option<FloatType>> {
    Ok(match dtype {
        Dtype::F32 => Some(FloatType::F32),
        Dtype::F16 => Some(FloatType::F16),
        Dtype::BF16 => Some(FloatType::Bf16),
        Dtype::F64 => Some(FloatType::F64),
        Dtype::I64
        | Dtype::I32
        | Dtype::I16
        | Dtype::I8
        | Dtype::U8
        | Dtype::BOOL
        | Dtype::U16
        | Dtype::U32
        | Dtype::U64 => None,
        other => {
            return Err(Error::field(
                path,
                format!("tensor `{name}` dtype"),
                format!(
                    "is {other:?}; expected F32, F16, BF16 or F64 (or an integer buffer, which is skipped)"
                ),
            ));
        }
    })
}

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, an index file, or a folder
    /// holding either.
    ///
    /// # Errors
    /// [`Error::Io`] for unreadable files; [`Error::Field`] for a malformed
    /// index or header, naming the file and field.
    pub fn open(path: &Path) -> Result<Self> {
        let index = if path.is_dir() {
            let i = path.join(INDEX_FILE);
            if i.is_file() { Some(i) } else { None }
        } else if path.file_name().is_some_and(|n| n == INDEX_FILE) {
            Some(path.to_path_buf())
        } else {
            None
        };
        let shards: Vec<PathBuf> = match &index {
            Some(i) => {
                let text = std::fs::read_to_string(i).map_err(|e| Error::io(i, e))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::field(i, "JSON", e.to_string()))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| {
                        Error::field(
                            i,
                            "weight_map",
                            "missing; expected an object of tensor name → shard file",
                        )
                    })?;
                let dir = i.parent().unwrap_or(Path::new("."));
                let mut files = BTreeSet::new();
                for (name, file) in map {
                    let f = file.as_str().ok_or_else(|| {
                        Error::field(i, format!("weight_map.{name}"), "expected a file name")
                    })?;
                    if f.contains('/') || f.contains("..") {
                        return Err(Error::field(
                            i,
                            format!("weight_map.{name}"),
                            format!("`{f}` leaves the checkpoint's folder"),
                        ));
                    }
                    files.insert(f.to_string());
                }
                files.into_iter().map(|f| dir.join(f)).collect()
            }
            None if path.is_dir() => vec![path.join("model.safetensors")],
            None => vec![path.to_path_buf()],
        };
        let mut maps = Vec::new();
        let mut tensors = Vec::new();
        for (s, shard) in shards.iter().enumerate() {
            let file = std::fs::File::open(shard).map_err(|e| Error::io(shard, e))?;
            // SAFETY: the map is read-only; a checkpoint changed by another
            // process while we read it gives wrong numbers, not unsafety in
            // our code beyond what any reader of a changing file sees.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(shard, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                Error::field(
                    shard,
                    "safetensors header",
                    format!("not a valid safetensors file: {e}"),
                )
            })?;
            for (name, view) in st.tensors() {
                let Some(dtype) = float_type(shard, &name, view.dtype())? else {
                    continue;
                };
                let (module, role) =
                    match (name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
                        (Some(m), _) => (m.to_string(), Role::Weight),
                        (_, Some(m)) => (m.to_string(), Role::Bias),
                        _ => (name.clone(), Role::Weight),
                    };
                tensors.push(CheckpointTensor {
                    paths: BTreeSet::from([module.clone()]),
                    module,
                    role,
                    shape: view.shape().to_vec(),
                    dtype,
                    shard: s,
                    name,
                });
            }
            maps.push(map);
        }
        tensors.sort_by(|a, b| (a.shard, &a.name).cmp(&(b.shard, &b.name)));
        Ok(Checkpoint {
            path: path.to_path_buf(),
            shards,
            maps,
            tensors,
        })
    }

    /// Tensor `i`'s values as `f32`; its pages are released afterwards.
    ///
    /// # Errors
    /// [`Error::Field`] when the shard no longer parses.
    pub fn read(&self, i: usize) -> Result<Vec<f32>> {
        let t = &self.tensors[i];
        let map = &self.maps[t.shard];
        let st = SafeTensors::deserialize(map).map_err(|e| {
            Error::field(&self.shards[t.shard], "safetensors header", e.to_string())
        })?;
        let view = st.tensor(&t.name).map_err(|e| {
            Error::field(
                &self.shards[t.shard],
                format!("tensor `{}`", t.name),
                e.to_string(),
            )
        })?;
        let data = view.data();
        let values = t.dtype.decode(data);
        let offset = data.as_ptr() as usize - map.as_ptr() as usize;
        release(map, offset, data.len());
        Ok(values)
    }

    /// Tensor `i`'s stored little-endian bytes, borrowed from the map: a
    /// caller that streams over them decodes a chunk at a time and then
    /// calls [`Checkpoint::release`].
    ///
    /// # Errors
    /// [`Error::Field`] when the shard no longer parses.
    pub fn bytes(&self, i: usize) -> Result<&[u8]> {
        let t = &self.tensors[i];
        let map = &self.maps[t.shard];
        let st = SafeTensors::deserialize(map).map_err(|e| {
            Error::field(&self.shards[t.shard], "safetensors header", e.to_string())
        })?;
        let view = st.tensor(&t.name).map_err(|e| {
            Error::field(
                &self.shards[t.shard],
                format!("tensor `{}`", t.name),
                e.to_string(),
            )
        })?;
        let data = view.data();
        let offset = data.as_ptr() as usize - map.as_ptr() as usize;
        Ok(&map[offset..offset + data.len()])
    }

    /// Hands tensor `i`'s pages back to the kernel (see the module docs).
    pub fn release(&self, i: usize) {
        if let Ok(data) = self.bytes(i) {
            let map = &self.maps[self.tensors[i].shard];
            let offset = data.as_ptr() as usize - map.as_ptr() as usize;
            release(map, offset, data.len());
        }
    }

    /// Hands the whole pages of `part`, a slice of tensor `i`'s
    /// [`Checkpoint::bytes`], back to the kernel.
    pub fn release_part(&self, i: usize, part: &[u8]) {
        let map = &self.maps[self.tensors[i].shard];
        let start = map.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        if at >= start && at + part.len() <= start + map.len() {
            release(map, at - start, part.len());
        }
    }

    /// Module paths by tensor index, for pairing.
    pub fn paths(&self) -> Vec<&BTreeSet<String>> {
        self.tensors.iter().map(|t| &t.paths).collect()
    }

    /// Tensor names grouped by module, for messages.
    pub fn modules(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for t in &self.tensors {
            *m.entry(t.module.as_str()).or_default() += 1;
        }
        m
    }
}

/// Drops the whole pages of `[offset, offset+len)` from the process's
/// resident set; the file's data stays in the page cache.
fn release(map: &Mmap, offset: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = offset.div_ceil(PAGE) * PAGE;
    let end = (offset + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: the map is a read-only file mapping and no slice into
        // this range outlives this call (the values were decoded into an
        // owned Vec); after DONTNEED the pages read back from the file.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_indexes_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX_FILE);
        let err = |text: &str| {
            std::fs::write(&index, text).unwrap();
            Checkpoint::open(&index)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("{}").contains("weight_map: missing"), "{}", err("{}"));
        let e = err(r#"{"weight_map": {"a.weight": "../x.safetensors"}}"#);
        assert!(
            e.contains("weight_map.a.weight") && e.contains("leaves"),
            "{e}"
        );
        let e = err(r#"{"weight_map": {"a.weight": "gone.safetensors"}}"#);
        assert!(e.contains("gone.safetensors"), "{e}");
        assert!(is_checkpoint(&index) && is_checkpoint(dir.path()));
    }
}
