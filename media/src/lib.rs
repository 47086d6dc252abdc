//! # emogate-media
//!
//! The vocabulary every other emogate crate speaks, and nothing else: no
//! capture, no model, no I/O. A brief overview:
//!
//! * [`Frame`] — one image as capture delivers it and preprocessing reads
//!   it: tightly packed bytes in a [`PixelLayout`], the [`YuvRange`] of a
//!   YUV source, and when it was captured. Its bytes are shared
//!   ([`bytes::Bytes`]), so handing a frame from a capture thread to the
//!   pipeline, or replaying a clip in a loop, never copies pixels.
//! * [`PixelLayout::planes`] — the plane sizes of a layout, computed in one
//!   place for capture (which repacks padded rows) and preprocessing (which
//!   reads them).
//! * [`Nanos`] — a capture time: nanoseconds on the pipeline's clock.
//! * [`StopFlag`] — the shared "please stop" that capture threads, the
//!   pipeline and signal handlers agree on.
//!
//! Capture (`emogate-device`) produces these types and inference
//! (`emogate-infer`) consumes them; neither depends on the other.

mod frame;
mod stop;

pub use frame::{Frame, FrameError, PixelLayout, PlaneShape, Planes, YuvRange};
pub use stop::StopFlag;

/// Nanoseconds since a clock's origin: the capture time of a frame or a
/// sample on the pipeline's clock (live capture: a monotonic clock started
/// with the process; replay: the clip's start).
pub type Nanos = u64;
