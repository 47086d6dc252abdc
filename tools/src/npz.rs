//! A small reader for NumPy `.npz` files (a zip of `.npy` arrays), as
//! written by `numpy.savez` and `numpy.savez_compressed`.
//!
//! Supported: stored and deflated entries (zip64 sizes included),
//! `.npy` format versions 1–3, C order, little-endian `f4`, `f8` (read as
//! f32), `i8`, `i4`, `i1`, `u1` (read as i64). Anything else is refused with the entry
//! and the field named.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

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

fn u16_at(b: &[u8], i: usize) -> Result<u16> {
    b.get(i..i + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .context("truncated zip structure")
}

fn u32_at(b: &[u8], i: usize) -> Result<u32> {
    b.get(i..i + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .context("truncated zip structure")
}

fn u64_at(b: &[u8], i: usize) -> Result<u64> {
    b.get(i..i + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
        .context("truncated zip structure")
}

/// Reads every array of an `.npz` file, in the file's order.
///
/// # Errors
/// When the file is not a zip, an entry is not a supported `.npy` array,
/// or sizes disagree; the message names the file and the entry.
pub fn read_npz(path: &Path) -> Result<Vec<NpyArray>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_npz(&bytes).with_context(|| format!("{}: not a readable .npz file", path.display()))
}

/// [`read_npz`] on bytes in memory.
pub fn parse_npz(b: &[u8]) -> Result<Vec<NpyArray>> {
    // End of central directory: the last "PK\x05\x06" within 64 KiB + 22 of the end.
    let start = b.len().saturating_sub(22 + 65_535);
    let eocd = (start..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .context("no zip end-of-central-directory record (is it an .npz file?)")?;
    let mut entries = u16_at(b, eocd + 10)? as u64;
    let mut cd = u32_at(b, eocd + 16)? as u64;
    if (entries == 0xFFFF || cd == 0xFFFF_FFFF) && eocd >= 20 {
        // zip64 locator right before the EOCD.
        let loc = eocd - 20;
        ensure!(u32_at(b, loc)? == 0x0706_4b50, "zip64 locator missing");
        let rec = u64_at(b, loc + 8)? as usize;
        ensure!(u32_at(b, rec)? == 0x0606_4b50, "zip64 end record missing");
        entries = u64_at(b, rec + 32)?;
        cd = u64_at(b, rec + 48)?;
    }
    let mut arrays = Vec::new();
    let mut p = cd as usize;
    for _ in 0..entries {
        ensure!(
            u32_at(b, p)? == 0x0201_4b50,
            "bad central directory entry at byte {p}"
        );
        let method = u16_at(b, p + 10)?;
        let mut csize = u32_at(b, p + 20)? as u64;
        let mut usize_ = u32_at(b, p + 24)? as u64;
        let name_len = u16_at(b, p + 28)? as usize;
        let extra_len = u16_at(b, p + 30)? as usize;
        let comment_len = u16_at(b, p + 32)? as usize;
        let mut local = u32_at(b, p + 42)? as u64;
        let name =
            String::from_utf8_lossy(b.get(p + 46..p + 46 + name_len).context("truncated name")?)
                .into_owned();
        // zip64 extra field: the 0xFFFFFFFF fields, in order.
        let mut e = p + 46 + name_len;
        let extra_end = e + extra_len;
        while e + 4 <= extra_end {
            let id = u16_at(b, e)?;
            let len = u16_at(b, e + 2)? as usize;
            if id == 1 {
                let mut f = e + 4;
                if usize_ == 0xFFFF_FFFF {
                    usize_ = u64_at(b, f)?;
                    f += 8;
                }
                if csize == 0xFFFF_FFFF {
                    csize = u64_at(b, f)?;
                    f += 8;
                }
                if local == 0xFFFF_FFFF {
                    local = u64_at(b, f)?;
                }
            }
            e += 4 + len;
        }
        p = extra_end + comment_len;
        let l = local as usize;
        ensure!(
            u32_at(b, l)? == 0x0403_4b50,
            "entry `{name}`: bad local header"
        );
        let data = l + 30 + u16_at(b, l + 26)? as usize + u16_at(b, l + 28)? as usize;
        let raw = b
            .get(data..data + csize as usize)
            .with_context(|| format!("entry `{name}`: data past the end of the file"))?;
        let npy = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(usize_ as usize);
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut out)
                    .with_context(|| format!("entry `{name}`: inflating"))?;
                out
            }
            m => {
                bail!("entry `{name}`: compression method {m}; expected stored (0) or deflate (8)")
            }
        };
        let stem = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        arrays.push(
            parse_npy(&npy)
                .with_context(|| format!("entry `{name}`"))?
                .named(stem),
        );
    }
    Ok(arrays)
}

impl NpyArray {
    fn named(mut self, name: String) -> Self {
        self.name = name;
        self
    }
}

/// Parses one `.npy` array.
pub fn parse_npy(b: &[u8]) -> Result<NpyArray> {
    ensure!(
        b.len() >= 10 && &b[..6] == b"\x93NUMPY",
        "not an .npy array (magic missing)"
    );
    let (hlen, hstart) = match b[6] {
        1 => (u16_at(b, 8)? as usize, 10),
        2 | 3 => (u32_at(b, 8)? as usize, 12),
        v => bail!("npy format version {v}; expected 1, 2 or 3"),
    };
    let header = std::str::from_utf8(b.get(hstart..hstart + hlen).context("truncated header")?)
        .context("header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("header has no `{key}`: {header}"))?;
        let rest = &header[at + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .context("descr is not a string")?;
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "fortran_order is True; expected C order (np.ascontiguousarray)"
    );
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("shape is not a tuple")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("shape entry `{s}`"))
        })
        .collect::<Result<_>>()?;
    let count: usize = shape.iter().product();
    let body = &b[hstart + hlen..];
    let need = |size: usize| -> Result<&[u8]> {
        body.get(..count * size).with_context(|| {
            format!(
                "{} bytes of data for shape {shape:?} of `{descr}`, found {}",
                count * size,
                body.len()
            )
        })
    };
    let data = match descr {
        "<f4" | "|f4" => NpyData::F32(
            need(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<f8" => NpyData::F32(
            need(8)?
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
        ),
        "<i8" => NpyData::I64(
            need(8)?
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a)
                })
                .collect(),
        ),
        "|i1" => NpyData::I64(need(1)?.iter().map(|&b| b as i8 as i64).collect()),
        "|u1" => NpyData::I64(need(1)?.iter().map(|&b| b as i64).collect()),
        "<i4" => NpyData::I64(
            need(4)?
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        d => bail!(
            "dtype `{d}`; expected little-endian float32, float64, int64, int32, int8 or uint8"
        ),
    };
    Ok(NpyArray {
        name: String::new(),
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
