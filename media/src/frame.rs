//! Frames: shared pixel bytes, their layout, and when they were captured.

use bytes::Bytes;

use crate::Nanos;

/// How a frame's bytes are laid out. Every layout is tightly packed (no
/// row padding: capture repacks padded rows); 4:2:0 chroma planes are
/// `ceil(w/2) × ceil(h/2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    /// One byte of luma per pixel.
    Gray8,
    /// `R G B` per pixel.
    Rgb8,
    /// `B G R` per pixel (OpenCV's and some cameras' order).
    Bgr8,
    /// Planar Y, then U and V at half resolution (4:2:0), "I420".
    Yuv420p,
    /// Packed 4:2:2, `Y0 U Y1 V` per pixel pair (UVC cameras' raw format).
    Yuyv,
    /// Y plane, then interleaved `U V` at half resolution (Jetson ISP output).
    Nv12,
}

/// The size of one plane: `rows` rows of `row_bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneShape {
    pub row_bytes: usize,
    pub rows: usize,
}

/// The planes of a layout at one frame size, in memory order (at most three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    shapes: [PlaneShape; 3],
    count: usize,
}

impl Planes {
    /// The planes, in memory order.
    pub fn as_slice(&self) -> &[PlaneShape] {
        &self.shapes[..self.count]
    }

    /// Bytes in all planes together (saturating: a size no buffer can
    /// hold gives `usize::MAX`).
    pub fn total_bytes(&self) -> usize {
        self.as_slice().iter().fold(0usize, |sum, p| {
            sum.saturating_add(p.row_bytes.saturating_mul(p.rows))
        })
    }
}

impl PixelLayout {
    /// The planes of a tightly packed `width × height` frame.
    pub fn planes(self, width: usize, height: usize) -> Planes {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let plane = |row_bytes, rows| PlaneShape { row_bytes, rows };
        let empty = plane(0, 0);
        let (shapes, count) = match self {
            PixelLayout::Gray8 => ([plane(width, height), empty, empty], 1),
            PixelLayout::Rgb8 | PixelLayout::Bgr8 => {
                ([plane(width.saturating_mul(3), height), empty, empty], 1)
            }
            PixelLayout::Yuyv => ([plane(cw.saturating_mul(4), height), empty, empty], 1),
            PixelLayout::Nv12 => (
                [plane(width, height), plane(cw.saturating_mul(2), ch), empty],
                2,
            ),
            PixelLayout::Yuv420p => ([plane(width, height), plane(cw, ch), plane(cw, ch)], 3),
        };
        Planes { shapes, count }
    }

    /// Bytes in a tightly packed `width × height` frame.
    pub fn frame_len(self, width: usize, height: usize) -> usize {
        self.planes(width, height).total_bytes()
    }

    /// Whether the layout is YUV (so [`YuvRange`] applies).
    pub fn is_yuv(self) -> bool {
        matches!(
            self,
            PixelLayout::Yuv420p | PixelLayout::Yuyv | PixelLayout::Nv12
        )
    }

    /// The layout's usual name (`gray`, `rgb24`, `bgr24`, `i420`, `yuyv`, `nv12`).
    pub fn name(self) -> &'static str {
        match self {
            PixelLayout::Gray8 => "gray",
            PixelLayout::Rgb8 => "rgb24",
            PixelLayout::Bgr8 => "bgr24",
            PixelLayout::Yuv420p => "i420",
            PixelLayout::Yuyv => "yuyv",
            PixelLayout::Nv12 => "nv12",
        }
    }
}

/// The quantization range of a YUV source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YuvRange {
    /// Y in 16–235, chroma in 16–240 (BT.601 "studio swing"): the V4L2,
    /// GStreamer and Y4M default.
    #[default]
    Limited,
    /// Y and chroma in 0–255 (JFIF: what JPEG/MJPEG decoders give).
    Full,
}

/// A frame whose size and bytes disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {width}x{height}: both dimensions must be positive")]
    Empty { width: usize, height: usize },
    #[error(
        "a {width}x{height} {layout} frame needs {expected} bytes; the buffer holds {got}",
        layout = layout.name()
    )]
    Length {
        width: usize,
        height: usize,
        layout: PixelLayout,
        got: usize,
        expected: usize,
    },
}

/// One captured image: tightly packed bytes and when they were captured.
///
/// Cloning a frame shares its bytes. Fields are public for reading; build
/// frames with [`Frame::new`], which checks that the bytes fit the size.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub layout: PixelLayout,
    /// The range of a YUV frame; ignored for RGB, BGR and gray.
    pub range: YuvRange,
    pub data: Bytes,
    /// When the frame was captured, on the pipeline's clock.
    pub captured_at: Nanos,
}

impl Frame {
    /// A frame with limited-range YUV, captured at `captured_at`.
    ///
    /// # Errors
    /// [`FrameError::Empty`] for a zero dimension, [`FrameError::Length`]
    /// when `data` is not [`PixelLayout::frame_len`] bytes.
    pub fn new(
        width: usize,
        height: usize,
        layout: PixelLayout,
        data: impl Into<Bytes>,
        captured_at: Nanos,
    ) -> Result<Self, FrameError> {
        let frame = Frame {
            width,
            height,
            layout,
            range: YuvRange::Limited,
            data: data.into(),
            captured_at,
        };
        frame.check()?;
        Ok(frame)
    }

    /// The same frame with another YUV range.
    pub fn with_range(mut self, range: YuvRange) -> Self {
        self.range = range;
        self
    }

    /// The same pixels (shared, not copied) captured at another time.
    pub fn at(&self, captured_at: Nanos) -> Self {
        Frame {
            captured_at,
            ..self.clone()
        }
    }

    /// Checks that the size is positive and the bytes fill it exactly
    /// (for frames assembled field by field).
    ///
    /// # Errors
    /// As [`Frame::new`].
    pub fn check(&self) -> Result<(), FrameError> {
        if self.width == 0 || self.height == 0 {
            return Err(FrameError::Empty {
                width: self.width,
                height: self.height,
            });
        }
        let expected = self.layout.frame_len(self.width, self.height);
        if expected == self.data.len() {
            return Ok(());
        }
        Err(FrameError::Length {
            width: self.width,
            height: self.height,
            layout: self.layout,
            got: self.data.len(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_sizes_follow_the_layout() {
        assert_eq!(PixelLayout::Yuv420p.frame_len(3, 3), 17);
        assert_eq!(PixelLayout::Yuyv.frame_len(3, 1), 8);
        assert_eq!(PixelLayout::Nv12.frame_len(4, 2), 12);
        assert_eq!(PixelLayout::Rgb8.frame_len(2, 2), 12);
        assert_eq!(PixelLayout::Gray8.frame_len(5, 3), 15);
        let p = PixelLayout::Yuv420p.planes(5, 3);
        assert_eq!(p.as_slice().len(), 3);
        assert_eq!(
            p.as_slice()[1],
            PlaneShape {
                row_bytes: 3,
                rows: 2
            }
        );
    }

    #[test]
    fn frames_check_their_bytes() {
        let err = Frame::new(4, 4, PixelLayout::Rgb8, vec![0u8; 47], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a 4x4 rgb24 frame needs 48 bytes; the buffer holds 47"
        );
        assert!(matches!(
            Frame::new(0, 4, PixelLayout::Gray8, Vec::new(), 0),
            Err(FrameError::Empty { .. })
        ));
        let huge = Frame {
            width: usize::MAX,
            height: 2,
            layout: PixelLayout::Gray8,
            range: YuvRange::Limited,
            data: Bytes::new(),
            captured_at: 0,
        };
        assert!(huge.check().is_err());
    }

    #[test]
    fn retimed_frames_share_their_bytes() {
        let a = Frame::new(1, 1, PixelLayout::Gray8, vec![7u8], 5).unwrap();
        let b = a.at(9);
        assert_eq!(b.captured_at, 9);
        assert_eq!(a.data.as_ptr(), b.data.as_ptr());
    }
}
