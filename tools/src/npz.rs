//! A small, bounded reader for NumPy `.npz` files (a zip of `.npy` arrays),
//! as written by `numpy.savez` and `numpy.savez_compressed`.
//!
//! Supported: stored and deflated entries (zip64 sizes and offsets
//! included, CRC-32 checked), `.npy` format versions 1–3, C order,
//! little-endian `f4`, `f8` (read as f32), `i8`, `i4`, `i1`, `u1` (read as
//! i64). Anything else is refused with the entry and the field named.
//!
//! Every size in the file is untrusted: offsets and lengths are checked
//! against the bytes actually there, element counts are multiplied with
//! overflow checks, and nothing is allocated beyond what the file's own
//! length allows (an inflated entry at most [`MAX_DEFLATE_RATIO`] times
//! its compressed bytes, the most deflate can expand data).
//!
//! # Why not the `npyz` crate
//!
//! `npyz` 0.9.1 (the newest release) with its `npz` feature was measured
//! against crafted files (a 1 GB address-space limit, as on a small board)
//! and falls short on exactly this:
//! * a 240-byte `.npz` whose `.npy` v2 header declares a header length of
//!   `0xFFFF_FFF0` makes it allocate 4 GiB before reading (`vec![0;
//!   header_size]` in its `read_header`): the process aborts with "memory
//!   allocation of 4294967280 bytes failed";
//! * a shape whose element count overflows `u64` panics in debug builds
//!   ("attempt to multiply with overflow") and, in release builds, wraps
//!   to 0 and returns an empty array for a declared 2⁸⁰ elements;
//! * it pulls in `zip` 0.6.6 (seven major versions behind) with its default
//!   features: 55 crates, among them C builds of zstd and bzip2, AES and
//!   PBKDF2, and a `pest` parser generator (about 1.5 min of extra build on
//!   two cores), to read the two compression methods NumPy writes.
//!
//! Guarding the first two would mean parsing the `.npy` preamble ourselves
//! and bypassing `NpzArchive::by_name`, i.e. keeping half of this reader
//! anyway. The crafted files are in this module's tests.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Deflate expands data at most about 1032-fold (a 258-byte match per
/// two bits); a larger declared size is a lie, and is refused before any
/// allocation.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const MAX_ZIP_COMMENT: usize = 65_535;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const LOCAL_LEN: usize = 30;
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// A 16-bit field set to all ones: the real value is in the zip64 record.
const ZIP64_MARK_16: u16 = 0xFFFF;
/// A 32-bit field set to all ones: the real value is in the zip64 extra field.
const ZIP64_MARK_32: u32 = 0xFFFF_FFFF;
const FLAG_ENCRYPTED: u16 = 1;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Values of one array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One array of an `.npz` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Entry name without the `.npy` suffix.
    pub name: String,
    pub shape: Vec<usize>,
    pub data: NpyData,
}

/// What is wrong inside an `.npz` file: the entry (when inside one), the
/// structure or header field, and what was expected. [`read_npz`] adds the
/// file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {message}", entry.as_ref().map(|e| format!("entry `{e}`: ")).unwrap_or_default())]
pub struct NpzError {
    /// The zip entry (`x.npy`), when the fault is inside one.
    pub entry: Option<String>,
    /// Where: `end of central directory`, `local header`, `descr`, `shape`.
    pub field: String,
    /// What it holds, and what was expected.
    pub message: String,
}

type Parse<T> = std::result::Result<T, NpzError>;

fn fault(field: impl Into<String>, message: impl Into<String>) -> NpzError {
    NpzError {
        entry: None,
        field: field.into(),
        message: message.into(),
    }
}

impl NpzError {
    fn in_entry(mut self, entry: &str) -> Self {
        self.entry.get_or_insert_with(|| entry.to_string());
        self
    }
}

/// `N` bytes at `at`, or an error naming `field` when the file ends first.
fn bytes_at<const N: usize>(b: &[u8], at: usize, field: &str) -> Parse<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            fault(
                field,
                format!(
                    "{N} bytes at offset {at} are past the end of the file ({} bytes)",
                    b.len()
                ),
            )
        })
}

fn u16_at(b: &[u8], at: usize, field: &str) -> Parse<u16> {
    bytes_at::<2>(b, at, field).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize, field: &str) -> Parse<u32> {
    bytes_at::<4>(b, at, field).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize, field: &str) -> Parse<u64> {
    bytes_at::<8>(b, at, field).map(u64::from_le_bytes)
}

/// An offset read from the file, as an index into it.
fn offset(value: u64, field: &str, len: usize) -> Parse<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v <= len)
        .ok_or_else(|| {
            fault(
                field,
                format!("offset {value} is past the end of the file ({len} bytes)"),
            )
        })
}

fn expect_signature(b: &[u8], at: usize, want: u32, field: &str) -> Parse<()> {
    let got = u32_at(b, at, field)?;
    if got == want {
        Ok(())
    } else {
        Err(fault(
            field,
            format!("signature {got:#010x} at offset {at}; expected {want:#010x}"),
        ))
    }
}

/// Reads every array of an `.npz` file, in the file's order.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Npz`] when it is not
/// a zip, an entry is not a supported `.npy` array, or sizes disagree; the
/// message names the file, the entry and the field.
pub fn read_npz(path: &Path) -> Result<Vec<NpyArray>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    parse_npz(&bytes).map_err(|source| Error::Npz {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes arrays as an uncompressed `.npz` (a zip of `.npy` v1.0 files,
/// stored, as `numpy.savez` writes them), through a temp file and a rename.
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::Usage`] for an archive of 4 GiB
/// or more (this writer does not write zip64).
pub fn write_npz(path: &Path, arrays: &[NpyArray]) -> Result<()> {
    let mut out: Vec<u8> = Vec::new();
    let mut central: Vec<u8> = Vec::new();
    let too_big = || {
        Error::usage(format!(
            "{}: the arrays need 4 GiB or more; write fewer samples per file",
            path.display()
        ))
    };
    for a in arrays {
        let (descr, data): (&str, Vec<u8>) = match &a.data {
            NpyData::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::I64(v) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let shape = match a.shape.len() {
            1 => format!("({},)", a.shape[0]),
            _ => format!(
                "({})",
                a.shape
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Magic (6) + version (2) + length (2) + header, padded to 64 bytes, ending in \n.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut npy = Vec::with_capacity(10 + header.len() + data.len());
        npy.extend_from_slice(NPY_MAGIC);
        npy.extend_from_slice(&[1, 0]);
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&data);
        let mut crc = flate2::Crc::new();
        crc.update(&npy);
        let name = format!("{}.npy", a.name);
        let size = u32::try_from(npy.len()).map_err(|_| too_big())?;
        let offset = u32::try_from(out.len()).map_err(|_| too_big())?;
        let common = |b: &mut Vec<u8>| {
            b.extend_from_slice(&20u16.to_le_bytes()); // version needed
            b.extend_from_slice(&0u16.to_le_bytes()); // flags
            b.extend_from_slice(&METHOD_STORED.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes()); // time
            b.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
            b.extend_from_slice(&crc.sum().to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&npy);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attrs
        central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let dir_offset = u32::try_from(out.len()).map_err(|_| too_big())?;
    let dir_len = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = arrays.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&dir_len.to_le_bytes());
    out.extend_from_slice(&dir_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    u32::try_from(out.len()).map_err(|_| too_big())?;
    crate::atomic::write_bytes(path, &out)
}

/// Where the central directory is, and how many entries it claims.
struct Directory {
    offset: usize,
    entries: u64,
}

fn find_directory(b: &[u8]) -> Parse<Directory> {
    const FIELD: &str = "end of central directory";
    // The last EOCD signature within the longest possible comment of the end.
    let start = b.len().saturating_sub(EOCD_LEN + MAX_ZIP_COMMENT);
    let last = b.len().checked_sub(EOCD_LEN).ok_or_else(|| {
        fault(
            FIELD,
            format!(
                "the file has {} bytes, fewer than a zip's {EOCD_LEN}; expected an .npz (zip) file",
                b.len()
            ),
        )
    })?;
    let eocd = (start..=last)
        .rev()
        .find(|&i| b[i..i + 4] == EOCD_SIGNATURE.to_le_bytes())
        .ok_or_else(|| {
            fault(
                FIELD,
                "no end-of-central-directory record; expected an .npz (zip) file",
            )
        })?;
    let entries = u16_at(b, eocd + 10, FIELD)?;
    let cd = u32_at(b, eocd + 16, FIELD)?;
    if entries != ZIP64_MARK_16 && cd != ZIP64_MARK_32 {
        return Ok(Directory {
            offset: offset(cd.into(), FIELD, b.len())?,
            entries: entries.into(),
        });
    }
    const LOCATOR: &str = "zip64 end-of-central-directory locator";
    const RECORD: &str = "zip64 end-of-central-directory record";
    let locator = eocd.checked_sub(ZIP64_LOCATOR_LEN).ok_or_else(|| {
        fault(
            LOCATOR,
            "missing; the end record points to one but the file starts first",
        )
    })?;
    expect_signature(b, locator, ZIP64_LOCATOR_SIGNATURE, LOCATOR)?;
    let record = offset(u64_at(b, locator + 8, LOCATOR)?, LOCATOR, b.len())?;
    expect_signature(b, record, ZIP64_EOCD_SIGNATURE, RECORD)?;
    Ok(Directory {
        entries: u64_at(b, record + 32, RECORD)?,
        offset: offset(u64_at(b, record + 48, RECORD)?, RECORD, b.len())?,
    })
}

/// One central directory entry.
struct Entry {
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    uncompressed: u64,
    local: u64,
    /// Where the next entry starts.
    next: usize,
}

fn read_entry(b: &[u8], p: usize, index: u64) -> Parse<Entry> {
    let field = format!("central directory entry {index}");
    let f = field.as_str();
    expect_signature(b, p, CENTRAL_SIGNATURE, f)?;
    let name_len = usize::from(u16_at(b, p + 28, f)?);
    let extra_len = usize::from(u16_at(b, p + 30, f)?);
    let comment_len = usize::from(u16_at(b, p + 32, f)?);
    let name_at = p + CENTRAL_LEN;
    let name = b
        .get(name_at..name_at + name_len)
        .ok_or_else(|| fault(f, "its name runs past the end of the file"))?;
    let mut e = Entry {
        name: String::from_utf8_lossy(name).into_owned(),
        flags: u16_at(b, p + 8, f)?,
        method: u16_at(b, p + 10, f)?,
        crc: u32_at(b, p + 16, f)?,
        compressed: u32_at(b, p + 20, f)?.into(),
        uncompressed: u32_at(b, p + 24, f)?.into(),
        local: u32_at(b, p + 42, f)?.into(),
        next: name_at + name_len + extra_len + comment_len,
    };
    // The zip64 extra field holds, in this order, the fields set to all ones.
    let extra_end = name_at + name_len + extra_len;
    let mut x = name_at + name_len;
    while x + 4 <= extra_end {
        let id = u16_at(b, x, f)?;
        let len = usize::from(u16_at(b, x + 2, f)?);
        if id == ZIP64_EXTRA_ID {
            let (mut at, end) = (x + 4, (x + 4 + len).min(extra_end));
            for value in [&mut e.uncompressed, &mut e.compressed, &mut e.local] {
                if *value == u64::from(ZIP64_MARK_32) {
                    if at + 8 > end {
                        return Err(fault(
                            "zip64 extra field",
                            format!("{len} bytes, too short for the sizes it must hold"),
                        )
                        .in_entry(&e.name));
                    }
                    *value = u64_at(b, at, "zip64 extra field")?;
                    at += 8;
                }
            }
        }
        x += 4 + len;
    }
    Ok(e)
}

/// The entry's stored bytes, inflated when deflated, with the CRC checked.
fn entry_bytes<'a>(b: &'a [u8], e: &Entry) -> Parse<Cow<'a, [u8]>> {
    if e.flags & FLAG_ENCRYPTED != 0 {
        return Err(fault(
            "flags",
            "the entry is encrypted; expected a plain .npy",
        ));
    }
    let local = offset(e.local, "local header offset", b.len())?;
    expect_signature(b, local, LOCAL_SIGNATURE, "local header")?;
    let start = local
        + LOCAL_LEN
        + usize::from(u16_at(b, local + 26, "local header")?)
        + usize::from(u16_at(b, local + 28, "local header")?);
    let raw = usize::try_from(e.compressed)
        .ok()
        .and_then(|len| b.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            fault(
                "compressed size",
                format!(
                    "{} bytes from offset {start} run past the end of the file ({} bytes)",
                    e.compressed,
                    b.len()
                ),
            )
        })?;
    let data: Cow<[u8]> = match e.method {
        METHOD_STORED if e.uncompressed == e.compressed => Cow::Borrowed(raw),
        METHOD_STORED => {
            return Err(fault(
                "uncompressed size",
                format!(
                    "{} for a stored entry of {} bytes; expected the same",
                    e.uncompressed, e.compressed
                ),
            ));
        }
        METHOD_DEFLATE => Cow::Owned(inflate(raw, e.uncompressed)?),
        m => {
            return Err(fault(
                "compression method",
                format!("{m}; expected stored ({METHOD_STORED}) or deflate ({METHOD_DEFLATE})"),
            ));
        }
    };
    let mut crc = flate2::Crc::new();
    crc.update(&data);
    if crc.sum() != e.crc {
        return Err(fault(
            "crc-32",
            format!(
                "the data's is {:#010x}, the directory says {:#010x}; the file is damaged",
                crc.sum(),
                e.crc
            ),
        ));
    }
    Ok(data)
}

/// Inflates `raw`, which must expand to exactly `declared` bytes.
fn inflate(raw: &[u8], declared: u64) -> Parse<Vec<u8>> {
    let bound = (raw.len() as u64).saturating_mul(MAX_DEFLATE_RATIO);
    if declared > bound {
        return Err(fault(
            "uncompressed size",
            format!(
                "{declared} bytes from {} compressed; deflate expands at most {MAX_DEFLATE_RATIO}-fold",
                raw.len()
            ),
        ));
    }
    // Bounded by the check above: at most MAX_DEFLATE_RATIO × the file's bytes.
    let capacity = usize::try_from(declared).map_err(|_| {
        fault(
            "uncompressed size",
            format!("{declared} bytes do not fit in memory"),
        )
    })?;
    let mut out = Vec::with_capacity(capacity);
    flate2::read::DeflateDecoder::new(raw)
        .take(declared.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| fault("deflate data", format!("cannot be inflated: {e}")))?;
    if out.len() as u64 != declared {
        return Err(fault(
            "uncompressed size",
            format!(
                "the directory says {declared} bytes, the data inflates to {}{}",
                out.len(),
                if out.len() as u64 > declared {
                    " or more"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(out)
}

/// [`read_npz`] on bytes in memory.
///
/// # Errors
/// [`NpzError`] naming the entry and the field.
pub fn parse_npz(b: &[u8]) -> Parse<Vec<NpyArray>> {
    let dir = find_directory(b)?;
    // Each entry takes at least CENTRAL_LEN bytes of the directory.
    let room = (b.len() - dir.offset) / CENTRAL_LEN;
    if dir.entries > room as u64 {
        return Err(fault(
            "central directory",
            format!(
                "{} entries claimed, but only {room} fit in the {} bytes after offset {}",
                dir.entries,
                b.len() - dir.offset,
                dir.offset
            ),
        ));
    }
    let mut arrays = Vec::new();
    let mut p = dir.offset;
    for index in 0..dir.entries {
        let e = read_entry(b, p, index)?;
        p = e.next;
        let npy = entry_bytes(b, &e).map_err(|err| err.in_entry(&e.name))?;
        let mut array = parse_npy(&npy).map_err(|err| err.in_entry(&e.name))?;
        array.name = e.name.strip_suffix(".npy").unwrap_or(&e.name).to_string();
        arrays.push(array);
    }
    Ok(arrays)
}

/// The value after `'key':` in an `.npy` header dictionary.
fn header_field<'h>(header: &'h str, key: &str) -> Parse<&'h str> {
    let quoted = format!("'{key}'");
    let at = header.find(&quoted).ok_or_else(|| {
        fault(
            key,
            format!("missing from the header `{}`", header.trim_end()),
        )
    })?;
    let rest = header[at + quoted.len()..].trim_start();
    rest.strip_prefix(':')
        .map(str::trim_start)
        .ok_or_else(|| fault(key, "has no `:` after it"))
}

/// The element types read, by `.npy` `descr`.
#[derive(Debug, Clone, Copy)]
enum Dtype {
    F4,
    F8,
    I8,
    I4,
    I1,
    U1,
}

/// A chunk of exactly `N` bytes as an array (chunks come from `chunks_exact(N)`).
fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

impl Dtype {
    fn parse(descr: &str) -> Parse<Self> {
        Ok(match descr {
            "<f4" | "|f4" => Dtype::F4,
            "<f8" => Dtype::F8,
            "<i8" => Dtype::I8,
            "<i4" => Dtype::I4,
            "|i1" => Dtype::I1,
            "|u1" => Dtype::U1,
            d => {
                return Err(fault(
                    "descr",
                    format!(
                        "dtype `{d}`; expected little-endian float32, float64, int64, int32, int8 or uint8"
                    ),
                ));
            }
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F8 | Dtype::I8 => 8,
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::I1 | Dtype::U1 => 1,
        }
    }

    /// `data` holds a whole number of elements.
    fn decode(self, data: &[u8]) -> NpyData {
        let chunks = data.chunks_exact(self.size());
        match self {
            Dtype::F4 => NpyData::F32(chunks.map(|c| f32::from_le_bytes(arr(c))).collect()),
            Dtype::F8 => NpyData::F32(chunks.map(|c| f64::from_le_bytes(arr(c)) as f32).collect()),
            Dtype::I8 => NpyData::I64(chunks.map(|c| i64::from_le_bytes(arr(c))).collect()),
            Dtype::I4 => NpyData::I64(chunks.map(|c| i32::from_le_bytes(arr(c)).into()).collect()),
            Dtype::I1 => NpyData::I64(chunks.map(|c| i8::from_le_bytes(arr(c)).into()).collect()),
            Dtype::U1 => NpyData::I64(chunks.map(|c| u8::from_le_bytes(arr(c)).into()).collect()),
        }
    }
}

/// Parses one `.npy` array (its name left empty).
///
/// # Errors
/// [`NpzError`] naming the header field: magic, version, descr,
/// fortran_order, shape, or the data when it is shorter than the shape.
pub fn parse_npy(b: &[u8]) -> Parse<NpyArray> {
    if b.len() < 10 || &b[..NPY_MAGIC.len()] != NPY_MAGIC {
        return Err(fault(
            "magic",
            "missing; expected an .npy array starting with \\x93NUMPY",
        ));
    }
    let (header_len, header_at): (usize, usize) = match b[6] {
        1 => (usize::from(u16_at(b, 8, "header length")?), 10),
        2 | 3 => (
            usize::try_from(u32_at(b, 8, "header length")?).unwrap_or(usize::MAX),
            12,
        ),
        v => {
            return Err(fault(
                "version",
                format!("npy format version {v}; expected 1, 2 or 3"),
            ));
        }
    };
    let header = b
        .get(header_at..header_at.saturating_add(header_len))
        .ok_or_else(|| {
            fault(
                "header length",
                format!(
                    "{header_len} bytes, past the end of the array's {} bytes",
                    b.len()
                ),
            )
        })?;
    let body = &b[header_at + header.len()..];
    let header = std::str::from_utf8(header).map_err(|_| fault("header", "is not text"))?;
    let descr = header_field(header, "descr")?
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| fault("descr", "is not a quoted string"))?;
    if !header_field(header, "fortran_order")?.starts_with("False") {
        return Err(fault(
            "fortran_order",
            "is True; expected C order (np.ascontiguousarray)",
        ));
    }
    let inner = header_field(header, "shape")?
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fault("shape", "is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| fault("shape", format!("entry `{s}` is not a size")))
        })
        .collect::<Parse<Vec<usize>>>()?;
    let dtype = Dtype::parse(descr)?;
    let need = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            fault(
                "shape",
                format!("{shape:?} of `{descr}` holds more bytes than memory can address"),
            )
        })?;
    let data = body.get(..need).ok_or_else(|| {
        fault(
            "data",
            format!(
                "{need} bytes of data for shape {shape:?} of `{descr}`, found {}",
                body.len()
            ),
        )
    })?;
    let data = dtype.decode(data);
    Ok(NpyArray {
        name: String::new(),
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// How an entry is written, and what its directory claims.
    struct Spec<'a> {
        name: &'a str,
        npy: Vec<u8>,
        deflate: bool,
        /// Overrides the uncompressed size the directory claims.
        claim_uncompressed: Option<u64>,
        /// Overrides the local header offset the directory claims.
        claim_local: Option<u64>,
        /// Overrides the CRC the directory claims.
        claim_crc: Option<u32>,
    }

    fn spec(name: &str, npy: Vec<u8>, deflate: bool) -> Spec<'_> {
        Spec {
            name,
            npy,
            deflate,
            claim_uncompressed: None,
            claim_local: None,
            claim_crc: None,
        }
    }

    /// A zip as `numpy.savez` (stored) or `savez_compressed` (deflated)
    /// writes it; with `zip64`, every size and offset goes through the
    /// zip64 extra field and end record, with an entry count of `entries`.
    fn zip(specs: &[Spec], zip64: bool, entries: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for s in specs {
            let data = if s.deflate {
                let mut enc =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(&s.npy).unwrap();
                enc.finish().unwrap()
            } else {
                s.npy.clone()
            };
            let mut crc = flate2::Crc::new();
            crc.update(&s.npy);
            let crc = s.claim_crc.unwrap_or(crc.sum());
            let method: u16 = if s.deflate { 8 } else { 0 };
            let local = out.len() as u64;
            out.extend_from_slice(&LOCAL_SIGNATURE.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(s.npy.len() as u32).to_le_bytes());
            out.extend_from_slice(&(s.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(s.name.as_bytes());
            out.extend_from_slice(&data);
            let (usize_, local) = (
                s.claim_uncompressed.unwrap_or(s.npy.len() as u64),
                s.claim_local.unwrap_or(local),
            );
            let mut extra = Vec::new();
            let small = |v: u64| -> u32 {
                if zip64 {
                    ZIP64_MARK_32
                } else {
                    u32::try_from(v).unwrap()
                }
            };
            if zip64 {
                extra.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
                extra.extend_from_slice(&24u16.to_le_bytes());
                for v in [usize_, data.len() as u64, local] {
                    extra.extend_from_slice(&v.to_le_bytes());
                }
            }
            central.extend_from_slice(&CENTRAL_SIGNATURE.to_le_bytes());
            central.extend_from_slice(&[45, 0, 45, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 4]);
            central.extend_from_slice(&crc.to_le_bytes());
            central.extend_from_slice(&small(data.len() as u64).to_le_bytes());
            central.extend_from_slice(&small(usize_).to_le_bytes());
            central.extend_from_slice(&(s.name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 10]);
            central.extend_from_slice(&small(local).to_le_bytes());
            central.extend_from_slice(s.name.as_bytes());
            central.extend_from_slice(&extra);
        }
        let cd = out.len() as u64;
        out.extend_from_slice(&central);
        let count = entries.unwrap_or(specs.len() as u64);
        if zip64 {
            let record = out.len() as u64;
            out.extend_from_slice(&ZIP64_EOCD_SIGNATURE.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&cd.to_le_bytes());
            out.extend_from_slice(&ZIP64_LOCATOR_SIGNATURE.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&record.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&EOCD_SIGNATURE.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let n16 = if zip64 {
            ZIP64_MARK_16
        } else {
            u16::try_from(count).unwrap()
        };
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        let cd32 = if zip64 {
            ZIP64_MARK_32
        } else {
            u32::try_from(cd).unwrap()
        };
        out.extend_from_slice(&cd32.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn two_arrays(deflate: bool) -> Vec<Spec<'static>> {
        vec![
            spec(
                "x.npy",
                npy("<f4", "(1, 2)", &f32_bytes(&[1.5, -2.0])),
                deflate,
            ),
            spec(
                "ids.npy",
                npy("<i8", "(3,)", &[1i64, 2, 3].map(i64::to_le_bytes).concat()),
                deflate,
            ),
        ]
    }

    fn err(b: &[u8]) -> String {
        parse_npz(b).unwrap_err().to_string()
    }

    #[test]
    fn written_npz_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npz");
        let arrays = vec![
            NpyArray {
                name: "face".into(),
                shape: vec![2, 3],
                data: NpyData::F32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0]),
            },
            NpyArray {
                name: "labels".into(),
                shape: vec![2],
                data: NpyData::I64(vec![3, -7]),
            },
        ];
        write_npz(&p, &arrays).unwrap();
        assert_eq!(read_npz(&p).unwrap(), arrays);
    }

    #[test]
    fn parses_npy_headers_and_types() {
        let v: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(1, 2)", &v)).unwrap();
        assert_eq!(a.shape, vec![1, 2]);
        assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0]));
        let v: Vec<u8> = [7i64].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = parse_npy(&npy("<i8", "(1,)", &v)).unwrap();
        assert_eq!(a.data, NpyData::I64(vec![7]));
        let e = parse_npy(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(format!("{e:#}").contains(">f4"), "{e:#}");
        let e = parse_npy(&npy("<f4", "(3,)", &[0; 4])).unwrap_err();
        assert!(format!("{e:#}").contains("12 bytes"), "{e:#}");
    }

    #[test]
    fn reads_every_supported_dtype() {
        let cases: [(&str, Vec<u8>, NpyData); 6] = [
            ("|f4", f32_bytes(&[0.25]), NpyData::F32(vec![0.25])),
            (
                "<f8",
                (-0.5f64).to_le_bytes().to_vec(),
                NpyData::F32(vec![-0.5]),
            ),
            (
                "<i4",
                (-9i32).to_le_bytes().to_vec(),
                NpyData::I64(vec![-9]),
            ),
            ("|i1", vec![0xFE], NpyData::I64(vec![-2])),
            ("|u1", vec![0xFE], NpyData::I64(vec![254])),
            (
                "<i8",
                (1i64 << 40).to_le_bytes().to_vec(),
                NpyData::I64(vec![1 << 40]),
            ),
        ];
        for (descr, bytes, want) in cases {
            assert_eq!(
                parse_npy(&npy(descr, "(1,)", &bytes)).unwrap().data,
                want,
                "{descr}"
            );
        }
        // A 0-d array holds one value; a 0-sized one none.
        assert_eq!(
            parse_npy(&npy("<f4", "()", &f32_bytes(&[3.0])))
                .unwrap()
                .data,
            NpyData::F32(vec![3.0])
        );
        assert_eq!(
            parse_npy(&npy("<f4", "(0, 5)", &[])).unwrap().data,
            NpyData::F32(vec![])
        );
    }

    #[test]
    fn reads_stored_deflated_and_zip64_archives() {
        for (deflate, zip64) in [(false, false), (true, false), (false, true), (true, true)] {
            let arrays = parse_npz(&zip(&two_arrays(deflate), zip64, None))
                .unwrap_or_else(|e| panic!("deflate {deflate}, zip64 {zip64}: {e}"));
            assert_eq!(arrays.len(), 2);
            assert_eq!(arrays[0].name, "x");
            assert_eq!(arrays[0].shape, vec![1, 2]);
            assert_eq!(arrays[0].data, NpyData::F32(vec![1.5, -2.0]));
            assert_eq!(arrays[1].name, "ids");
            assert_eq!(arrays[1].data, NpyData::I64(vec![1, 2, 3]));
        }
    }

    #[test]
    fn reads_the_numpy_written_fixtures() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quantize");
        // savez_compressed: one deflated array.
        let inputs = read_npz(&dir.join("swiglu_inputs.npz")).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(
            (inputs[0].name.as_str(), &inputs[0].shape[..]),
            ("x", &[64, 1, 64][..])
        );
        assert!(matches!(&inputs[0].data, NpyData::F32(v) if v.len() == 64 * 64));
        // savez: stored int8 and float32 arrays.
        let reference = read_npz(&dir.join("qdq_reference.npz")).unwrap();
        assert_eq!(reference.len(), 32);
        let q = &reference[0];
        assert_eq!(q.name, "m.model.embed_tokens.weight.q");
        assert!(matches!(&q.data, NpyData::I64(v) if v.len() == 96 * 64));
    }

    #[test]
    fn errors_name_the_file_the_entry_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        std::fs::write(
            &path,
            zip(
                &[spec("x.npy", npy(">f4", "(1,)", &[0; 4]), true)],
                false,
                None,
            ),
        )
        .unwrap();
        let e = read_npz(&path).unwrap_err().to_string();
        for needle in [
            path.to_str().unwrap(),
            "not a readable .npz file",
            "entry `x.npy`",
            "descr",
            "`>f4`",
            "expected little-endian",
        ] {
            assert!(e.contains(needle), "`{needle}` missing: {e}");
        }
        let e = read_npz(&dir.path().join("missing.npz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reading") && e.contains("missing.npz"), "{e}");
        std::fs::write(&path, b"not a zip at all, but long enough to look for one").unwrap();
        let e = read_npz(&path).unwrap_err().to_string();
        assert!(e.contains("end-of-central-directory"), "{e}");
        let mut fortran = npy("<f4", "(1,)", &[0; 4]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let e = parse_npy(&fortran).unwrap_err().to_string();
        assert!(e.contains("fortran_order") && e.contains("C order"), "{e}");
    }

    /// The crafted files that made `npyz` allocate 4 GiB or overflow, and
    /// the old reader's zip64 preallocation: refused, nothing large allocated.
    #[test]
    fn crafted_sizes_are_refused_without_allocating() {
        // npy v2 header claiming 4 GiB of header.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        v2.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n");
        v2.extend_from_slice(&[0; 4]);
        let e = err(&zip(&[spec("x.npy", v2, false)], false, None));
        assert!(
            e.contains("entry `x.npy`: header length: 4294967280 bytes"),
            "{e}"
        );
        // A shape whose element count overflows.
        let e = err(&zip(
            &[spec(
                "x.npy",
                npy("<f4", "(1099511627776, 1099511627776)", &[0; 8]),
                false,
            )],
            false,
            None,
        ));
        assert!(
            e.contains("shape") && e.contains("more bytes than memory"),
            "{e}"
        );
        let e = err(&zip(
            &[spec(
                "x.npy",
                npy("<f4", "(4294967296, 4294967296, 1)", &[]),
                false,
            )],
            false,
            None,
        ));
        assert!(e.contains("more bytes than memory"), "{e}");
        // A huge shape over a few bytes of data.
        let e = err(&zip(
            &[spec(
                "x.npy",
                npy("<f4", "(4611686018427387904,)", &[0; 8]),
                false,
            )],
            false,
            None,
        ));
        assert!(e.contains("shape") || e.contains("data"), "{e}");
        // zip64: a deflated entry claiming a terabyte.
        let mut big = spec("x.npy", npy("<f4", "(1,)", &[0; 4]), true);
        big.claim_uncompressed = Some(1 << 40);
        let e = err(&zip(&[big], true, None));
        assert!(
            e.contains("uncompressed size: 1099511627776 bytes") && e.contains("1032-fold"),
            "{e}"
        );
        // A deflated entry claiming less or more than it inflates to.
        for claim in [10, 200] {
            let mut lie = spec("x.npy", npy("<f4", "(1,)", &[0; 4]), true);
            lie.claim_uncompressed = Some(claim);
            let e = err(&zip(&[lie], true, None));
            assert!(e.contains("the directory says"), "{e}");
        }
        // A stored entry whose sizes differ.
        let mut stored = spec("x.npy", npy("<f4", "(1,)", &[0; 4]), false);
        stored.claim_uncompressed = Some(1 << 40);
        let e = err(&zip(&[stored], true, None));
        assert!(e.contains("stored entry"), "{e}");
        // A local header offset near the end of the address space.
        let mut far = spec("x.npy", npy("<f4", "(1,)", &[0; 4]), false);
        far.claim_local = Some(u64::MAX - 3);
        let e = err(&zip(&[far], true, None));
        assert!(e.contains("local header offset"), "{e}");
        // A zip64 directory claiming 2^40 entries.
        let e = err(&zip(&two_arrays(false), true, Some(1 << 40)));
        assert!(e.contains("1099511627776 entries claimed"), "{e}");
        // Damaged data.
        let mut bad = spec("x.npy", npy("<f4", "(1,)", &[0; 4]), false);
        bad.claim_crc = Some(0x1234_5678);
        let e = err(&zip(&[bad], false, None));
        assert!(e.contains("crc-32") && e.contains("damaged"), "{e}");
    }

    /// Every prefix and every one-byte change of valid archives is read or
    /// refused; none panics.
    #[test]
    fn truncated_and_mutated_archives_never_panic() {
        for (deflate, zip64) in [(false, false), (true, false), (false, true), (true, true)] {
            let good = zip(&two_arrays(deflate), zip64, None);
            for len in 0..good.len() {
                assert!(parse_npz(&good[..len]).is_err(), "prefix {len} accepted");
            }
            for i in 0..good.len() {
                for v in [0x00, 0xFF, good[i] ^ 0x80, good[i].wrapping_add(1)] {
                    let mut b = good.clone();
                    b[i] = v;
                    let _ = parse_npz(&b);
                }
            }
        }
    }
}
