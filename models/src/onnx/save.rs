//! Writing a model back to disk without ever leaving a half-written file.
//!
//! The output is built in temp files beside the destination ([`crate::staging`]) and renamed into
//! place only when complete: a crash or an error mid-write leaves nothing
//! under the output's name. Side files are handled so that a multi-gigabyte
//! model streams through in bounded memory:
//!
//! * a model that used external data gets one side file, `<out>.data`,
//!   made by copying the input's side files (the kernel's `copy_file_range`,
//!   so no bytes pass through user space) and then overwriting the changed
//!   tensors in place;
//! * with [`SaveOptions::share_base_data`], unchanged tensors keep pointing
//!   at the input's side file and only changed tensors are written;
//! * an inline model whose protobuf would pass the 2 GB protobuf limit moves
//!   its large tensors to a side file.
//!
//! A tensor is never written both inline and external.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use tempfile::NamedTempFile;

use super::proto::{ModelProto, StringStringEntryProto, TensorProto, tensor_proto::DataLocation};
use super::{OnnxModel, is_external, tensor};
use crate::error::{Error, Result};
use crate::staging;

/// Protobuf messages cannot exceed 2 GiB; stay clear of it.
const PROTOBUF_LIMIT: u64 = 2_000_000_000;

/// How [`save_model`] lays out the output.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Keep unchanged external tensors in the input's side file instead of
    /// copying them. Only possible when the output sits in the input's folder.
    pub share_base_data: bool,
    /// Above this encoded size an inline model moves its large tensors to a
    /// side file (default: just under protobuf's 2 GB limit).
    pub inline_limit: u64,
    /// Tensors smaller than this stay inline even when a side file is used.
    pub external_threshold: usize,
    /// `fsync` the outputs before renaming them, so a power cut cannot leave
    /// a renamed but empty file.
    pub sync: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            share_base_data: false,
            inline_limit: PROTOBUF_LIMIT,
            external_threshold: 1024,
            sync: true,
        }
    }
}

/// New values for one initializer, in the tensor's own `data_type`, which
/// the caller has already set in the proto.
#[derive(Debug, Clone)]
pub struct TensorUpdate {
    pub name: String,
    pub bytes: TensorBytes,
}

/// A tensor's new values: little-endian bytes, or `f32` values written out
/// as they are (no encoding pass over a large weight on little-endian CPUs).
#[derive(Debug, Clone)]
pub enum TensorBytes {
    Raw(Vec<u8>),
    F32(Vec<f32>),
}

impl From<Vec<u8>> for TensorBytes {
    fn from(bytes: Vec<u8>) -> Self {
        TensorBytes::Raw(bytes)
    }
}

impl TensorBytes {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            TensorBytes::Raw(b) => b.len(),
            TensorBytes::F32(v) => v.len() * 4,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The little-endian bytes, borrowed where the CPU is little-endian.
    pub fn as_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            TensorBytes::Raw(b) => b.as_slice().into(),
            #[cfg(target_endian = "little")]
            TensorBytes::F32(v) => bytemuck::cast_slice::<f32, u8>(v).into(),
            #[cfg(not(target_endian = "little"))]
            TensorBytes::F32(v) => tensor::FloatType::F32.encode(v).into(),
        }
    }
}

/// What [`save_model`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveSummary {
    pub model: PathBuf,
    /// The side file, when the output has one.
    pub data: Option<PathBuf>,
    /// Bytes written to the side file by us (not counting kernel copies).
    pub tensor_bytes_written: u64,
    /// Bytes the side file received by copy from the input's side files.
    pub bytes_copied: u64,
    pub external_tensors: usize,
}

/// Writes `proto` (an edited copy of `base.proto`) to `out`, applying
/// `updates` one at a time so only one tensor's bytes are held at once.
///
/// # Errors
/// [`Error::Field`] if `out` is the input itself, an update names a tensor
/// the graph lacks, or `share_base_data` is asked for in another folder;
/// [`Error::Io`] for any failed read or write (the partial output is removed).
pub fn save_model(
    base: &OnnxModel,
    mut proto: ModelProto,
    updates: impl IntoIterator<Item = Result<TensorUpdate>>,
    out: &Path,
    options: &SaveOptions,
) -> Result<SaveSummary> {
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::field(out, "output path", "expected a file name in UTF-8"))?;
    refuse_to_overwrite_input(base, out)?;
    let data_name = format!("{out_name}.data");
    let data_path = out_dir.join(&data_name);
    // A run killed mid-write left its temp files; this one replaces them.
    staging::remove_stale(out_dir, out_name);
    staging::remove_stale(out_dir, &data_name);
    if base.uses_external_data() {
        for tensor in base.all_initializers() {
            if let Some(ext) = base.external_data(tensor)? {
                if same_file(&ext.file, out) {
                    return Err(Error::field(
                        out,
                        "output path",
                        format!(
                            "is the input's external data file {}; inputs are never modified, choose another output",
                            ext.file.display()
                        ),
                    ));
                }
                if same_file(&ext.file, &data_path) {
                    return Err(Error::field(
                        out,
                        "output path",
                        format!(
                            "its side file {} would overwrite the input's data",
                            data_path.display()
                        ),
                    ));
                }
            }
        }
    }

    let mut data = DataFile::new(out_dir, data_name.clone(), data_path.clone());
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::field(base.path(), "graph", "the model has no graph"))?;
    let index = super::initializer_positions(graph);

    // 1. Lay out the side file for tensors that were external in the input.
    let mut sources: Vec<Source> = Vec::new();
    let mut origin: HashMap<String, (usize, u64)> = HashMap::new();
    if base.uses_external_data() && options.share_base_data {
        let base_dir = canonical(base.dir())?;
        if canonical(out_dir)? != base_dir {
            return Err(Error::field(
                out,
                "--share-base-data",
                format!(
                    "the output must be in the input's folder {} so it can point at its data",
                    base_dir.display()
                ),
            ));
        }
    } else if base.uses_external_data() {
        // Every input side file gets a page-aligned span of ours, copied
        // lazily in file order so changed tensors are written in between
        // instead of being copied and then overwritten.
        // Nested subgraphs' initializers too: their side files must follow.
        super::visit_initializers_mut(graph, &mut |tensor| -> Result<()> {
            let Some(ext) = base.external_data(tensor)? else {
                return Ok(());
            };
            let source = match sources.iter().position(|s| s.file == ext.file) {
                Some(i) => i,
                None => {
                    sources.push(Source::open(&ext.file, data.reserve_aligned(&ext.file)?)?);
                    sources.len() - 1
                }
            };
            // Top-level initializers are visited first; a nested one that
            // shadows a name must not take its place.
            origin
                .entry(tensor.name().to_string())
                .or_insert((source, ext.offset));
            set_external(
                tensor,
                &data_name,
                sources[source].base + ext.offset,
                ext.length,
            );
            Ok(())
        })?;
    }

    // 2. Apply the updates, one tensor at a time.
    for update in updates {
        let TensorUpdate { name, bytes } = update?;
        let i = *index.get(&name).ok_or_else(|| {
            Error::field(
                base.path(),
                format!("initializer `{name}`"),
                "is not in the graph",
            )
        })?;
        let tensor = &mut graph.initializer[i];
        let same_size = tensor_length(tensor) == Some(bytes.len() as u64);
        if let (Some(&(source, offset)), true) = (origin.get(&name), same_size) {
            // In our copy of an input side file: copy up to it, then write it.
            let src = &mut sources[source];
            if offset >= src.cursor {
                data.copy_from(src, offset)?;
                src.cursor = offset + bytes.len() as u64;
            }
            data.write_at(&bytes.as_bytes(), src.base + offset)?;
            strip_checksum(tensor);
        } else if is_external(tensor)
            || (data.is_used() && bytes.len() >= options.external_threshold)
        {
            let offset = data.append(&bytes.as_bytes())?;
            set_external(tensor, &data_name, offset, bytes.len() as u64);
        } else {
            set_inline(tensor, bytes.as_bytes().into_owned());
        }
    }
    for src in &mut sources {
        let end = src.size;
        data.copy_from(src, end)?;
        src.cursor = end;
    }

    // 3. Keep the protobuf under its size limit.
    if proto.encoded_len() as u64 > options.inline_limit {
        let graph = proto.graph.as_mut().expect("checked above");
        for tensor in graph.initializer.iter_mut() {
            if is_external(tensor) {
                continue;
            }
            let Some(bytes) = inline_bytes(tensor) else {
                continue;
            };
            if bytes.len() >= options.external_threshold {
                let offset = data.append(&bytes)?;
                set_external(tensor, &data_name, offset, bytes.len() as u64);
            }
        }
    }

    // 4. Write the protobuf, then rename the side file and the model into place.
    let external_tensors = proto
        .graph
        .as_ref()
        .map(|g| g.initializer.iter().filter(|t| is_external(t)).count())
        .unwrap_or(0);
    let mut model_tmp = staging::create(out_dir, out_name).map_err(|e| Error::io(out_dir, e))?;
    // Temp files are created 0600; give outputs the input model's mode.
    let mode = std::fs::metadata(base.path()).map(|m| m.permissions()).ok();
    if let Some(mode) = &mode {
        model_tmp
            .as_file()
            .set_permissions(mode.clone())
            .map_err(|e| Error::io(out, e))?;
    }
    model_tmp
        .write_all(&proto.encode_to_vec())
        .map_err(|e| Error::io(out, e))?;
    if options.sync {
        model_tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(out, e))?;
    }
    // Two files cannot be swapped in one rename. A previous model left
    // beside the new side file would read the wrong bytes at its offsets,
    // so it goes first: a crash in between leaves no model (and a side file
    // nothing points at), never a model paired with the wrong data.
    if data.is_used() {
        match std::fs::remove_file(out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(out, e)),
        }
    }
    let summary_data = data.finish(options.sync, mode)?;
    model_tmp
        .persist(out)
        .map_err(|e| Error::io(out, e.error))?;
    Ok(SaveSummary {
        model: out.to_path_buf(),
        data: summary_data.as_ref().map(|_| data_path.clone()),
        tensor_bytes_written: summary_data.map(|(w, _)| w).unwrap_or(0),
        bytes_copied: data.copied,
        external_tensors,
    })
}

/// An input side file being copied into the output's.
struct Source {
    file: PathBuf,
    handle: File,
    /// Where its span starts in the output's side file.
    base: u64,
    size: u64,
    /// Bytes before this are already in the output.
    cursor: u64,
}

impl Source {
    fn open(file: &Path, base: u64) -> Result<Self> {
        let handle = File::open(file).map_err(|e| Error::io(file, e))?;
        let size = handle.metadata().map_err(|e| Error::io(file, e))?.len();
        Ok(Source {
            file: file.to_path_buf(),
            handle,
            base,
            size,
            cursor: 0,
        })
    }
}

/// The output's side file, created on first use.
struct DataFile {
    dir: PathBuf,
    name: String,
    path: PathBuf,
    tmp: Option<NamedTempFile>,
    len: u64,
    written: u64,
    copied: u64,
}

impl DataFile {
    fn new(dir: &Path, name: String, path: PathBuf) -> Self {
        DataFile {
            dir: dir.to_path_buf(),
            name,
            path,
            tmp: None,
            len: 0,
            written: 0,
            copied: 0,
        }
    }

    fn is_used(&self) -> bool {
        self.tmp.is_some()
    }

    fn file(&mut self) -> Result<&mut NamedTempFile> {
        if self.tmp.is_none() {
            let tmp =
                staging::create(&self.dir, &self.name).map_err(|e| Error::io(&self.dir, e))?;
            self.tmp = Some(tmp);
        }
        Ok(self.tmp.as_mut().expect("just created"))
    }

    /// Pads to `align` and returns the new end.
    fn align(&mut self, align: u64) -> Result<u64> {
        let start = self.len.div_ceil(align) * align;
        if start != self.len {
            let path = self.path.clone();
            self.file()?
                .as_file()
                .set_len(start)
                .map_err(|e| Error::io(&path, e))?;
            self.len = start;
        }
        Ok(start)
    }

    /// Reserves a page-aligned span the size of `source`; returns its start.
    fn reserve_aligned(&mut self, source: &Path) -> Result<u64> {
        let size = std::fs::metadata(source)
            .map_err(|e| Error::io(source, e))?
            .len();
        let start = self.align(4096)?;
        self.len = start + size;
        let path = self.path.clone();
        self.file()?
            .as_file()
            .set_len(start + size)
            .map_err(|e| Error::io(&path, e))?;
        Ok(start)
    }

    /// Copies `src` from its cursor up to `until` into its span of ours.
    fn copy_from(&mut self, src: &mut Source, until: u64) -> Result<()> {
        if until <= src.cursor {
            return Ok(());
        }
        let len = until - src.cursor;
        let path = self.path.clone();
        let mut dst: &File = self.file()?.as_file();
        dst.seek(SeekFrom::Start(src.base + src.cursor))
            .map_err(|e| Error::io(&path, e))?;
        let mut reader: &File = &src.handle;
        reader
            .seek(SeekFrom::Start(src.cursor))
            .map_err(|e| Error::io(&src.file, e))?;
        // File-to-file `io::copy` uses copy_file_range on Linux: the bytes
        // never pass through user space.
        let n = std::io::copy(&mut reader.take(len), &mut dst)
            .map_err(|e| copy_error(&src.file, &path, e))?;
        if n != len {
            return Err(Error::field(
                &src.file,
                "size",
                format!(
                    "shrank while being copied: expected {len} more bytes from offset {}, got {n}",
                    src.cursor
                ),
            ));
        }
        src.cursor = until;
        self.copied += n;
        Ok(())
    }

    /// Appends a tensor's bytes (aligned for mmap); returns its offset.
    fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let align = if bytes.len() >= 64 * 1024 { 4096 } else { 64 };
        let start = self.align(align)?;
        self.write_at(bytes, start)?;
        self.len = self.len.max(start + bytes.len() as u64);
        Ok(start)
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        let path = self.path.clone();
        self.file()?
            .as_file()
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io(&path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Syncs and renames the side file into place, if one was written.
    fn finish(
        &mut self,
        sync: bool,
        mode: Option<std::fs::Permissions>,
    ) -> Result<Option<(u64, u64)>> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(None);
        };
        if let Some(mode) = mode {
            tmp.as_file()
                .set_permissions(mode)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        if sync {
            tmp.as_file()
                .sync_all()
                .map_err(|e| Error::io(&self.path, e))?;
        }
        tmp.persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(Some((self.written, self.len)))
    }
}

/// A failed copy names the side of it that failed: `io::copy` does not
/// say, but a full disk, a size limit or a read-only folder is the
/// output's.
fn copy_error(src: &Path, dst: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        StorageFull | FileTooLarge | QuotaExceeded | ReadOnlyFilesystem => Error::io(dst, e),
        _ => Error::io(src, e),
    }
}

fn refuse_to_overwrite_input(base: &OnnxModel, out: &Path) -> Result<()> {
    if same_file(base.path(), out) {
        return Err(Error::field(
            out,
            "output path",
            "is the input model; inputs are never modified, choose another output",
        ));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize().map_err(|e| Error::io(p, e))
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value),
    }
}

fn set_external(tensor: &mut TensorProto, location: &str, offset: u64, length: u64) {
    tensor.raw_data = None;
    tensor.float_data.clear();
    tensor.double_data.clear();
    tensor.int32_data.clear();
    tensor.int64_data.clear();
    tensor.uint64_data.clear();
    tensor.data_location = Some(DataLocation::External as i32);
    tensor.external_data = vec![
        entry("location", location.to_string()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
}

fn set_inline(tensor: &mut TensorProto, bytes: Vec<u8>) {
    let typed = tensor.raw_data.is_none()
        && (!tensor.float_data.is_empty()
            || !tensor.double_data.is_empty()
            || !tensor.int32_data.is_empty());
    tensor.data_location = None;
    tensor.external_data.clear();
    match tensor::FloatType::from_onnx(tensor.data_type()) {
        // Keep a tensor that used typed fields in typed fields.
        Some(ty) if typed => tensor::set_typed_float_values(tensor, ty, &ty.decode(&bytes)),
        _ => {
            tensor.float_data.clear();
            tensor.double_data.clear();
            tensor.int32_data.clear();
            tensor.raw_data = Some(Bytes::from(bytes));
        }
    }
}

fn inline_bytes(tensor: &TensorProto) -> Option<Vec<u8>> {
    if let Some(raw) = &tensor.raw_data {
        return Some(raw.to_vec());
    }
    let ty = tensor::FloatType::from_onnx(tensor.data_type())?;
    tensor::typed_float_values(tensor, ty).map(|v| ty.encode(&v))
}

fn lookup<'a>(tensor: &'a TensorProto, key: &str) -> Option<&'a str> {
    tensor
        .external_data
        .iter()
        .find(|e| e.key() == key)
        .map(|e| e.value())
}

fn tensor_length(tensor: &TensorProto) -> Option<u64> {
    lookup(tensor, "length").and_then(|v| v.parse().ok())
}

fn strip_checksum(tensor: &mut TensorProto) {
    tensor.external_data.retain(|e| e.key() != "checksum");
}
