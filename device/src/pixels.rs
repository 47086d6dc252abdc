//! Raw frame buffers from capture APIs into tightly packed [`Frame`] data.
//!
//! V4L2 and GStreamer both pad rows (to 4, 16 or 64 bytes, for DMA and
//! SIMD), and say so with a per-plane stride. The engine's preprocessor
//! reads tightly packed planes, so padded rows are repacked here; frames
//! already tight are copied once.

use emogate_media::PixelLayout;

/// One plane of a frame: `rows` rows of `row_bytes` useful bytes, each
/// starting `stride` bytes after the previous, from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plane {
    pub offset: usize,
    pub stride: usize,
    pub row_bytes: usize,
    pub rows: usize,
}

/// The planes of a `width`×`height` frame in `layout` with the given
/// per-plane strides and offsets (`None`: tightly packed, one after the
/// other).
pub(crate) fn planes(
    layout: PixelLayout,
    width: usize,
    height: usize,
    strides_offsets: Option<&[(usize, usize)]>,
) -> Vec<Plane> {
    let shapes = layout.planes(width, height);
    let mut next = 0usize;
    shapes
        .as_slice()
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let (row_bytes, rows) = (shape.row_bytes, shape.rows);
            let (stride, offset) = strides_offsets
                .and_then(|so| so.get(i).copied())
                .unwrap_or((row_bytes, next));
            next = offset + stride * rows;
            Plane {
                offset,
                stride,
                row_bytes,
                rows,
            }
        })
        .collect()
}

/// Copies `planes` out of `src` tightly packed. `Err` says what is short.
pub(crate) fn pack(src: &[u8], planes: &[Plane]) -> Result<Vec<u8>, String> {
    let total: usize = planes.iter().map(|p| p.row_bytes * p.rows).sum();
    let mut out = Vec::with_capacity(total);
    for (i, p) in planes.iter().enumerate() {
        if p.stride < p.row_bytes {
            return Err(format!(
                "plane {i}: stride {} is shorter than a row ({} bytes)",
                p.stride, p.row_bytes
            ));
        }
        if p.rows == 0 {
            continue;
        }
        // The last row need not carry its padding.
        let end = p.offset + p.stride * (p.rows - 1) + p.row_bytes;
        if end > src.len() {
            return Err(format!(
                "plane {i} needs {end} bytes, the buffer holds {}",
                src.len()
            ));
        }
        if p.stride == p.row_bytes {
            out.extend_from_slice(&src[p.offset..end]);
        } else {
            for r in 0..p.rows {
                let start = p.offset + r * p.stride;
                out.extend_from_slice(&src[start..start + p.row_bytes]);
            }
        }
    }
    Ok(out)
}

// Only GStreamer delivers 4-byte pixels.
#[cfg_attr(not(feature = "gstreamer"), allow(dead_code))]
/// Drops the fourth byte of each 4-byte pixel (RGBx/RGBA/BGRx → 3 bytes),
/// honouring the row stride.
pub(crate) fn strip_alpha(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    offset: usize,
) -> Result<Vec<u8>, String> {
    if stride < width * 4 {
        return Err(format!(
            "stride {stride} is shorter than a row of {width} 4-byte pixels"
        ));
    }
    let end = offset + stride * height.saturating_sub(1) + width * 4;
    if height > 0 && end > src.len() {
        return Err(format!(
            "the frame needs {end} bytes, the buffer holds {}",
            src.len()
        ));
    }
    let mut out = Vec::with_capacity(width * height * 3);
    for r in 0..height {
        let row = &src[offset + r * stride..offset + r * stride + width * 4];
        for px in row.chunks_exact(4) {
            out.extend_from_slice(&px[..3]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_are_repacked_and_short_buffers_refused() {
        // 3×2 gray with rows padded to 4 bytes; the last row unpadded.
        let src = [1, 2, 3, 0xEE, 4, 5, 6];
        let p = planes(PixelLayout::Gray8, 3, 2, Some(&[(4, 0)]));
        assert_eq!(pack(&src, &p).unwrap(), vec![1, 2, 3, 4, 5, 6]);
        assert!(pack(&src[..6], &p).unwrap_err().contains("needs 7 bytes"));
        let bad = planes(PixelLayout::Gray8, 3, 2, Some(&[(2, 0)]));
        assert!(pack(&src, &bad).unwrap_err().contains("stride 2"));
    }

    #[test]
    fn nv12_and_i420_planes_follow_each_other_when_tight() {
        let p = planes(PixelLayout::Nv12, 4, 2, None);
        assert_eq!(
            p,
            vec![
                Plane {
                    offset: 0,
                    stride: 4,
                    row_bytes: 4,
                    rows: 2
                },
                Plane {
                    offset: 8,
                    stride: 4,
                    row_bytes: 4,
                    rows: 1
                },
            ]
        );
        let p = planes(PixelLayout::Yuv420p, 5, 3, None);
        assert_eq!(
            p.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![0, 15, 21]
        );
        assert_eq!(p[1].row_bytes, 3);
        assert_eq!(p[1].rows, 2);
        let src: Vec<u8> = (0..27).collect();
        assert_eq!(pack(&src, &p).unwrap(), src);
    }

    #[test]
    fn alpha_is_stripped_per_padded_row() {
        // 2×2 RGBx, rows padded to 12 bytes.
        let src = [
            1, 2, 3, 9, 4, 5, 6, 9, 0, 0, 0, 0, //
            7, 8, 9, 9, 10, 11, 12, 9,
        ];
        assert_eq!(
            strip_alpha(&src, 2, 2, 12, 0).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
        assert!(strip_alpha(&src[..19], 2, 2, 12, 0).is_err());
    }
}
