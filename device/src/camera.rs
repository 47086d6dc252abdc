//! USB (UVC) and other V4L2 cameras.
//!
//! Uses the `v4l` crate (the V4L2 layer nokhwa is built on) directly,
//! because capture needs two things nokhwa 0.10 does not expose: a
//! dequeue timeout, so a stalled camera cannot keep [`VideoStream::next_frame`]
//! from seeing the stop flag, and the kernel's per-frame timestamps.
//!
//! YUYV, NV12, grey, RGB and BGR frames are handed on as they are (only
//! padded rows are repacked): the engine's preprocessor reads those
//! layouts, so converting here would cost a copy for nothing. MJPEG (what
//! most UVC cameras send above 640×480) is decoded to RGB with zune-jpeg,
//! which also supplies the default Huffman tables MJPEG frames omit.
//!
//! Jetson CSI cameras deliver raw Bayer on V4L2 and need the ISP: use the
//! GStreamer source with `nvarguscamerasrc` for them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufferFlags, Type as BufferType};
use v4l::capability::Flags as CapFlags;
use v4l::format::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;

use emogate_media::{Frame, Nanos, PixelLayout, StopFlag, YuvRange};

use crate::device_match::{self, CameraSelector};
use crate::pixels;
use crate::source::{CaptureError, ClockHandle, VideoSource, VideoStream};

/// How long one dequeue waits before the stop flag is looked at again.
const DEQUEUE_TIMEOUT: Duration = Duration::from_millis(200);
/// A camera that delivers nothing this long has failed (USB reset, hub
/// power); the supervisor reopens it.
const STALL: Duration = Duration::from_secs(5);
/// Consecutive undecodable frames (corrupt MJPEG after a USB glitch) that
/// count as a failed stream; fewer are skipped with a warning.
const MAX_BAD_FRAMES: u32 = 30;
/// Buffers queued in the driver: enough to ride out a slow consumer for a
/// few frames, few enough that a frame is never old.
const BUFFERS: u32 = 4;

/// The frame encodings this source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CameraFormat {
    Mjpeg,
    Yuyv,
    Nv12,
    Gray,
    Rgb,
    Bgr,
}

impl CameraFormat {
    /// The format of a V4L2 fourcc, if this source reads it.
    pub fn from_fourcc(fourcc: &[u8; 4]) -> Option<Self> {
        Some(match fourcc {
            b"MJPG" | b"JPEG" => CameraFormat::Mjpeg,
            b"YUYV" => CameraFormat::Yuyv,
            b"NV12" => CameraFormat::Nv12,
            b"GREY" => CameraFormat::Gray,
            b"RGB3" => CameraFormat::Rgb,
            b"BGR3" => CameraFormat::Bgr,
            _ => return None,
        })
    }

    fn fourcc(self) -> [u8; 4] {
        match self {
            CameraFormat::Mjpeg => *b"MJPG",
            CameraFormat::Yuyv => *b"YUYV",
            CameraFormat::Nv12 => *b"NV12",
            CameraFormat::Gray => *b"GREY",
            CameraFormat::Rgb => *b"RGB3",
            CameraFormat::Bgr => *b"BGR3",
        }
    }

    /// Raw formats before MJPEG when everything else is equal: no decode.
    fn cost(self) -> u8 {
        match self {
            CameraFormat::Mjpeg => 1,
            _ => 0,
        }
    }
}

/// One way a camera can run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraMode {
    pub format: CameraFormat,
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 when the driver does not say.
    pub fps: f64,
}

/// The mode closest to `width`×`height` at `fps`: nearest size first (by
/// the ratio of widths and of heights, so 1280×720 is as far from 640×360
/// as 320×180 is), then nearest frame rate (also by ratio), then a raw
/// format over MJPEG. `None` if `modes` is empty.
pub fn choose_mode(modes: &[CameraMode], width: u32, height: u32, fps: f64) -> Option<CameraMode> {
    let ratio = |a: f64, b: f64| (a.max(1.0) / b.max(1.0)).ln().abs();
    let key = |m: &CameraMode| {
        let size = ratio(f64::from(m.width), f64::from(width))
            + ratio(f64::from(m.height), f64::from(height));
        let rate = if m.fps > 0.0 { ratio(m.fps, fps) } else { 1.0 };
        // Rounded so float noise cannot beat a real preference.
        (
            (size * 1e6).round() as i64,
            (rate * 1e6).round() as i64,
            m.format.cost(),
        )
    };
    modes.iter().copied().min_by_key(key)
}

/// A V4L2 camera chosen by index (`/dev/videoN`) or name.
#[derive(Debug, Clone)]
pub struct CameraSource {
    selector: CameraSelector,
    width: u32,
    height: u32,
    fps: f64,
}

impl CameraSource {
    /// A camera asked to run as close as it can to `width`×`height` at
    /// `fps` (see [`choose_mode`]).
    pub fn new(selector: CameraSelector, width: u32, height: u32, fps: f64) -> Self {
        CameraSource {
            selector,
            width,
            height,
            fps,
        }
    }
}

/// A V4L2 video node: its index (`/dev/videoN`) and the driver's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoNode {
    pub index: usize,
    pub name: String,
}

impl VideoNode {
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/video{}", self.index))
    }
}

/// The V4L2 nodes in sysfs, by index. Includes nodes that cannot capture
/// (UVC cameras add a metadata node); [`capture_modes`] tells them apart.
pub fn video_nodes() -> Vec<VideoNode> {
    let Ok(dir) = std::fs::read_dir("/sys/class/video4linux") else {
        return Vec::new();
    };
    let mut nodes: Vec<VideoNode> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name();
            let index = file.to_str()?.strip_prefix("video")?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("name"))
                .map(|n| n.trim().to_string())
                .unwrap_or_default();
            Some(VideoNode { index, name })
        })
        .collect();
    nodes.sort_by_key(|n| n.index);
    nodes
}

/// Picks the node `wanted` names (see [`crate::device_match`]): its name, its
/// path or its index.
pub fn resolve_name(nodes: &[VideoNode], wanted: &str) -> Option<usize> {
    let labels: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.path().display().to_string(),
                n.index.to_string(),
            ]
        })
        .collect();
    device_match::pick(wanted, &labels).map(|i| nodes[i].index)
}

/// Every mode `dev` offers in a format this source reads. Stepwise sizes
/// and rates (rare on UVC) contribute their bounds and the requested
/// value clamped into them, not every step.
pub fn capture_modes(dev: &v4l::Device, want: (u32, u32, f64)) -> std::io::Result<Vec<CameraMode>> {
    let mut modes = Vec::new();
    for desc in dev.enum_formats()? {
        let Some(format) = CameraFormat::from_fourcc(&desc.fourcc.repr) else {
            continue;
        };
        let sizes: Vec<(u32, u32)> = match dev.enum_framesizes(desc.fourcc) {
            Ok(sizes) => sizes
                .into_iter()
                .flat_map(|fs| match fs.size {
                    FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
                    FrameSizeEnum::Stepwise(s) => {
                        let snap = |v: u32, min: u32, max: u32, step: u32| {
                            let v = v.clamp(min, max);
                            min + (v - min) / step.max(1) * step.max(1)
                        };
                        vec![
                            (s.min_width, s.min_height),
                            (s.max_width, s.max_height),
                            (
                                snap(want.0, s.min_width, s.max_width, s.step_width),
                                snap(want.1, s.min_height, s.max_height, s.step_height),
                            ),
                        ]
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for (width, height) in sizes {
            let rates: Vec<f64> = match dev.enum_frameintervals(desc.fourcc, width, height) {
                Ok(intervals) => intervals
                    .into_iter()
                    .flat_map(|fi| match fi.interval {
                        FrameIntervalEnum::Discrete(f) => vec![fps_of(f.numerator, f.denominator)],
                        FrameIntervalEnum::Stepwise(s) => {
                            let fastest = fps_of(s.min.numerator, s.min.denominator);
                            let slowest = fps_of(s.max.numerator, s.max.denominator);
                            vec![want.2.clamp(slowest.min(fastest), fastest.max(slowest))]
                        }
                    })
                    .collect(),
                Err(_) => vec![0.0],
            };
            for fps in rates {
                modes.push(CameraMode {
                    format,
                    width,
                    height,
                    fps,
                });
            }
        }
    }
    Ok(modes)
}

/// Frame rate of a frame interval `num/den` seconds; 0 if undefined.
fn fps_of(num: u32, den: u32) -> f64 {
    if num == 0 {
        0.0
    } else {
        f64::from(den) / f64::from(num)
    }
}

impl VideoSource for CameraSource {
    fn name(&self) -> String {
        format!("v4l:{}", self.selector)
    }

    /// Opens the camera in the mode closest to the request and starts
    /// streaming.
    ///
    /// # Errors
    /// * [`CaptureError::Open`] if no node matches the name (the message
    ///   lists the nodes), or the node cannot be opened (missing, busy,
    ///   permission: the user must be in the `video` group), or streaming
    ///   cannot start;
    /// * [`CaptureError::Config`] if `clock` is not real-time, the node
    ///   cannot capture video (a metadata node), or it offers no format
    ///   this source reads (the message lists what it offers).
    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
        let name = self.name();
        let open_err = |message: String| CaptureError::Open {
            source_name: name.clone(),
            message,
        };
        let config_err = |message: String| CaptureError::Config {
            source_name: name.clone(),
            message,
        };
        if !clock.is_real_time() {
            return Err(config_err("a live camera needs the real-time clock".into()));
        }
        let index = match &self.selector {
            CameraSelector::Index(i) => *i,
            CameraSelector::Name(wanted) => {
                let nodes = video_nodes();
                resolve_name(&nodes, wanted).ok_or_else(|| {
                    let list: Vec<String> = nodes
                        .iter()
                        .map(|n| format!("{} ({})", n.path().display(), n.name))
                        .collect();
                    open_err(format!(
                        "no V4L2 device matches \"{wanted}\"; devices: {}",
                        if list.is_empty() {
                            "none".into()
                        } else {
                            list.join(", ")
                        }
                    ))
                })?
            }
        };
        let path = format!("/dev/video{index}");
        let dev =
            v4l::Device::new(index).map_err(|e| open_err(format!("cannot open {path}: {e}")))?;
        let caps = dev
            .query_caps()
            .map_err(|e| open_err(format!("cannot query {path}: {e}")))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Err(config_err(format!(
                "{path} ({}) cannot capture video (a metadata or output node?)",
                caps.card
            )));
        }
        let want = (self.width, self.height, self.fps);
        let modes = capture_modes(&dev, want)
            .map_err(|e| open_err(format!("cannot list formats of {path}: {e}")))?;
        let Some(mode) = choose_mode(&modes, self.width, self.height, self.fps) else {
            let offered: Vec<String> = dev
                .enum_formats()
                .map(|fs| fs.iter().map(|f| f.fourcc.to_string()).collect())
                .unwrap_or_default();
            return Err(config_err(format!(
                "{path} offers no format this build reads (MJPG, YUYV, NV12, GREY, RGB3, BGR3); it offers: {}",
                offered.join(", ")
            )));
        };
        let asked = v4l::Format::new(mode.width, mode.height, FourCC::new(&mode.format.fourcc()));
        let format = dev.set_format(&asked).map_err(|e| {
            open_err(format!(
                "cannot set {}x{} {}: {e}",
                mode.width, mode.height, asked.fourcc
            ))
        })?;
        let Some(kind) = CameraFormat::from_fourcc(&format.fourcc.repr) else {
            return Err(config_err(format!(
                "{path} switched to {} instead of {}",
                format.fourcc, asked.fourcc
            )));
        };
        if mode.fps > 0.0 {
            // Rates are a request; a camera that keeps its own is still usable.
            if let Err(e) = dev.set_params(&Parameters::with_fps(mode.fps.round() as u32)) {
                tracing::warn!(source = %name, error = %e, "cannot set the frame rate");
            }
        }
        let mut stream = MmapStream::with_buffers(&dev, BufferType::VideoCapture, BUFFERS)
            .map_err(|e| open_err(format!("cannot map buffers of {path}: {e}")))?;
        stream.set_timeout(DEQUEUE_TIMEOUT);
        tracing::info!(
            source = %name,
            device = %caps.card,
            format = %format.fourcc,
            width = format.width,
            height = format.height,
            fps = mode.fps,
            "camera open"
        );
        Ok(Box::new(CameraStream {
            name,
            stream,
            kind,
            width: format.width as usize,
            height: format.height as usize,
            stride: format.stride as usize,
            // V4L2's default quantization for the YUV formats we take is
            // limited range (the kernel's V4L2_MAP_QUANTIZATION_DEFAULT).
            range: match format.quantization {
                v4l::format::Quantization::FullRange => YuvRange::Full,
                _ => YuvRange::Limited,
            },
            clock,
        }))
    }
}

struct CameraStream {
    name: String,
    stream: MmapStream<'static>,
    kind: CameraFormat,
    width: usize,
    height: usize,
    stride: usize,
    range: YuvRange,
    clock: ClockHandle,
}

impl VideoStream for CameraStream {
    /// The next frame, stamped with the kernel's capture time.
    ///
    /// # Errors
    /// [`CaptureError::Stream`] when the device fails (unplugged: ENODEV),
    /// delivers nothing for 5 s, or sends 30 undecodable frames in a row.
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
        let mut waiting_since = Instant::now();
        let mut bad = 0u32;
        loop {
            if stop.is_raised() {
                return Ok(None);
            }
            let fail = |message: String| CaptureError::Stream {
                source_name: self.name.clone(),
                message,
            };
            let (buf, meta) = match CaptureStream::next(&mut self.stream) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if waiting_since.elapsed() >= STALL {
                        return Err(fail(format!("no frame for {} s", STALL.as_secs())));
                    }
                    continue;
                }
                Err(e) => return Err(fail(e.to_string())),
            };
            let now = self.clock.now();
            let captured_at = match frame_age(meta.flags, meta.timestamp.sec, meta.timestamp.usec) {
                Some(age) => now.saturating_sub(age),
                None => now,
            };
            // Some drivers leave bytesused at 0 for fixed-size formats.
            let used = match meta.bytesused as usize {
                0 => buf.len(),
                n => n.min(buf.len()),
            };
            match to_frame(
                self.kind,
                self.width,
                self.height,
                self.stride,
                &buf[..used],
                captured_at,
            ) {
                Ok(frame) => return Ok(Some(frame.with_range(self.range))),
                Err(message) => {
                    bad += 1;
                    tracing::warn!(source = %self.name, bad, %message, "skipping a bad frame");
                    if bad >= MAX_BAD_FRAMES {
                        return Err(fail(format!("{bad} bad frames in a row; last: {message}")));
                    }
                    waiting_since = Instant::now();
                }
            }
        }
    }
}

/// How long ago the kernel stamped a buffer, if its timestamp is on
/// CLOCK_MONOTONIC (the UVC default) and plausible (under 2 s old).
/// Our clock is also monotonic but has its own origin, so only the age
/// carries over.
fn frame_age(flags: BufferFlags, sec: i64, usec: i64) -> Option<Nanos> {
    if !flags.contains(BufferFlags::TIMESTAMP_MONOTONIC) {
        return None;
    }
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_ns = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let ts_ns = i128::from(sec) * 1_000_000_000 + i128::from(usec) * 1_000;
    let age = now_ns - ts_ns;
    (0..2_000_000_000).contains(&age).then_some(age as Nanos)
}

/// Turns one V4L2 buffer into a [`Frame`]: raw formats are repacked to
/// tight rows (`stride` is V4L2's bytesperline of the first plane; 0 means
/// tight), MJPEG is decoded to RGB. `Err` says what is wrong with the data.
pub fn to_frame(
    kind: CameraFormat,
    width: usize,
    height: usize,
    stride: usize,
    data: &[u8],
    captured_at: Nanos,
) -> Result<Frame, String> {
    if kind == CameraFormat::Mjpeg {
        let (w, h, rgb) = decode_mjpeg(data)?;
        return Frame::new(w, h, PixelLayout::Rgb8, rgb, captured_at).map_err(|e| e.to_string());
    }
    let layout = match kind {
        CameraFormat::Yuyv => PixelLayout::Yuyv,
        CameraFormat::Nv12 => PixelLayout::Nv12,
        CameraFormat::Gray => PixelLayout::Gray8,
        CameraFormat::Rgb => PixelLayout::Rgb8,
        CameraFormat::Bgr => PixelLayout::Bgr8,
        CameraFormat::Mjpeg => unreachable!("handled above"),
    };
    let tight = pixels::planes(layout, width, height, None);
    let planes = if stride == 0 || stride == tight[0].row_bytes {
        tight
    } else {
        // V4L2 single-planar NV12: the chroma plane follows the luma plane
        // with the same bytesperline.
        let so: Vec<(usize, usize)> = match layout {
            PixelLayout::Nv12 => vec![(stride, 0), (stride, stride * height)],
            _ => vec![(stride, 0)],
        };
        pixels::planes(layout, width, height, Some(&so))
    };
    let data = pixels::pack(data, &planes)?;
    Frame::new(width, height, layout, data, captured_at).map_err(|e| e.to_string())
}

/// Decodes one MJPEG frame to tightly packed RGB: (width, height, pixels).
pub fn decode_mjpeg(data: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let data = with_default_tables(data);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(&data[..], options);
    let rgb = decoder.decode().map_err(|e| format!("MJPEG: {e:?}"))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| "MJPEG: no frame header".to_string())?;
    if rgb.len() != w * h * 3 {
        return Err(format!(
            "MJPEG: decoded {} bytes for {w}x{h} RGB",
            rgb.len()
        ));
    }
    Ok((w, h, rgb))
}

/// UVC MJPEG frames usually omit their Huffman tables (DHT), meaning the
/// standard ones (JPEG Annex K). zune-jpeg fills those in only for frames
/// marked with an `AVI1` APP0 segment, which not every camera writes; so
/// a frame with neither gets that marker inserted after SOI.
fn with_default_tables(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if data.len() < 4 || data[..2] != [0xFF, 0xD8] {
        return Cow::Borrowed(data);
    }
    let mut i = 2;
    while i + 4 <= data.len() && data[i] == 0xFF {
        let marker = data[i + 1];
        if marker == 0xDA {
            break; // start of scan: headers are over
        }
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        if marker == 0xC4 {
            return Cow::Borrowed(data);
        }
        if marker == 0xE0 && data.get(i + 4..i + 8) == Some(b"AVI1") {
            return Cow::Borrowed(data);
        }
        i += 2 + len;
    }
    let mut out = Vec::with_capacity(data.len() + 9);
    out.extend_from_slice(&data[..2]);
    out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0x00]);
    out.extend_from_slice(&data[2..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(format: CameraFormat, width: u32, height: u32, fps: f64) -> CameraMode {
        CameraMode {
            format,
            width,
            height,
            fps,
        }
    }

    #[test]
    fn chooses_nearest_size_then_rate_then_raw() {
        use CameraFormat::*;
        let modes = [
            mode(Yuyv, 640, 480, 30.0),
            mode(Yuyv, 1280, 720, 10.0),
            mode(Mjpeg, 1280, 720, 30.0),
            mode(Mjpeg, 640, 480, 30.0),
            mode(Mjpeg, 1920, 1080, 30.0),
            mode(Yuyv, 320, 240, 30.0),
        ];
        // Exact size and rate, raw wins the tie with MJPEG.
        assert_eq!(choose_mode(&modes, 640, 480, 30.0), Some(modes[0]));
        // 720p at 30: MJPEG, since raw 720p only does 10 fps.
        assert_eq!(choose_mode(&modes, 1280, 720, 30.0), Some(modes[2]));
        // 720p at 10: raw.
        assert_eq!(choose_mode(&modes, 1280, 720, 10.0), Some(modes[1]));
        // 800×600 is nearer 640×480 than 1280×720 by ratio.
        assert_eq!(choose_mode(&modes, 800, 600, 30.0), Some(modes[0]));
        assert_eq!(choose_mode(&modes, 4000, 3000, 30.0), Some(modes[4]));
        assert_eq!(choose_mode(&[], 640, 480, 30.0), None);
    }

    #[test]
    fn names_resolve_by_name_path_or_index() {
        let nodes = vec![
            VideoNode {
                index: 0,
                name: "HD Pro Webcam C920".into(),
            },
            VideoNode {
                index: 1,
                name: "HD Pro Webcam C920".into(),
            },
            VideoNode {
                index: 2,
                name: "Intel RealSense D435".into(),
            },
        ];
        assert_eq!(resolve_name(&nodes, "realsense"), Some(2));
        assert_eq!(resolve_name(&nodes, "C920"), Some(0));
        assert_eq!(resolve_name(&nodes, "/dev/video1"), Some(1));
        assert_eq!(resolve_name(&nodes, "logitech brio"), None);
    }

    #[test]
    fn fourccs_map_to_formats() {
        assert_eq!(
            CameraFormat::from_fourcc(b"MJPG"),
            Some(CameraFormat::Mjpeg)
        );
        assert_eq!(CameraFormat::from_fourcc(b"YUYV"), Some(CameraFormat::Yuyv));
        assert_eq!(
            CameraFormat::from_fourcc(b"RG10"),
            None,
            "raw Bayer needs an ISP"
        );
        for f in [CameraFormat::Mjpeg, CameraFormat::Nv12, CameraFormat::Bgr] {
            assert_eq!(CameraFormat::from_fourcc(&f.fourcc()), Some(f));
        }
    }

    #[test]
    fn raw_frames_pass_through_and_padded_rows_are_repacked() {
        // 2×2 YUYV, tight: handed on unchanged.
        let yuyv = [16, 128, 235, 128, 81, 90, 145, 240];
        let f = to_frame(CameraFormat::Yuyv, 2, 2, 0, &yuyv, 7).unwrap();
        assert_eq!(
            (f.layout, f.width, f.height, f.captured_at),
            (PixelLayout::Yuyv, 2, 2, 7)
        );
        assert_eq!(f.data[..], yuyv);
        // 2×2 NV12 with bytesperline 4: luma rows and the chroma row padded.
        let nv12 = [1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 0, 0];
        let f = to_frame(CameraFormat::Nv12, 2, 2, 4, &nv12, 0).unwrap();
        assert_eq!(f.data, vec![1, 2, 3, 4, 5, 6]);
        // A truncated buffer is refused, not padded out.
        assert!(to_frame(CameraFormat::Yuyv, 2, 2, 0, &yuyv[..6], 0).is_err());
    }

    const QUADRANTS: &[u8] = include_bytes!("../tests/fixtures/quadrants.jpg");
    /// Pillow's decode of the fixture at the centres of its four
    /// quadrants (a 16×16 JPEG, quality 100, 4:4:4).
    const QUADRANT_RGB: [[u8; 3]; 4] =
        [[220, 30, 40], [29, 200, 60], [40, 50, 210], [240, 240, 240]];

    fn check_quadrants(w: usize, rgb: &[u8]) {
        for (i, (x, y)) in [(3, 3), (12, 3), (3, 12), (12, 12)].into_iter().enumerate() {
            let p = &rgb[(y * w + x) * 3..][..3];
            for c in 0..3 {
                assert!(
                    p[c].abs_diff(QUADRANT_RGB[i][c]) <= 2,
                    "quadrant {i}: {p:?} vs {:?}",
                    QUADRANT_RGB[i]
                );
            }
        }
    }

    #[test]
    fn mjpeg_decodes_to_the_reference_rgb() {
        let f = to_frame(CameraFormat::Mjpeg, 16, 16, 0, QUADRANTS, 3).unwrap();
        assert_eq!((f.layout, f.width, f.height), (PixelLayout::Rgb8, 16, 16));
        check_quadrants(16, &f.data);
    }

    /// UVC cameras send MJPEG without Huffman tables (DHT segments),
    /// relying on the standard ones.
    #[test]
    fn mjpeg_without_huffman_tables_decodes() {
        let mut out = Vec::new();
        let mut i = 2; // after SOI
        out.extend_from_slice(&QUADRANTS[..2]);
        let mut dropped = 0;
        while i + 4 <= QUADRANTS.len() && QUADRANTS[i] == 0xFF && QUADRANTS[i + 1] != 0xDA {
            let len = usize::from(u16::from_be_bytes([QUADRANTS[i + 2], QUADRANTS[i + 3]]));
            if QUADRANTS[i + 1] == 0xC4 {
                dropped += 1;
            } else {
                out.extend_from_slice(&QUADRANTS[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&QUADRANTS[i..]);
        assert!(dropped > 0, "the fixture must carry DHT segments to drop");
        // Pillow (libjpeg, not optimised) encodes with the standard tables,
        // so the frame must decode to the same picture without them.
        let (w, h, rgb) = decode_mjpeg(&out).unwrap();
        assert_eq!((w, h), (16, 16));
        check_quadrants(w, &rgb);
    }

    #[test]
    fn corrupt_mjpeg_is_an_error_not_a_panic() {
        assert!(decode_mjpeg(&QUADRANTS[..100]).is_err());
        assert!(decode_mjpeg(b"not a jpeg").is_err());
    }

    #[test]
    fn opening_a_missing_camera_names_it() {
        // No camera on CI; on a machine with one, index 63 is still absent.
        let mut src = CameraSource::new(CameraSelector::Index(63), 640, 480, 30.0);
        let err = src
            .open(std::sync::Arc::new(crate::clock::RealClock))
            .err()
            .expect("there is no /dev/video63");
        let msg = err.to_string();
        assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
        assert!(
            msg.contains("v4l:63") && msg.contains("/dev/video63"),
            "{msg}"
        );
    }

    #[test]
    fn opening_v4l_0_without_a_camera_is_an_open_error_naming_it() {
        let mut src = CameraSource::new(CameraSelector::Index(0), 640, 480, 30.0);
        let result = src.open(std::sync::Arc::new(crate::clock::RealClock));
        if std::path::Path::new("/dev/video0").exists() {
            // A machine with a camera: it opens, or fails naming it.
            if let Err(e) = result {
                assert!(e.to_string().contains("v4l:0"), "{e}");
            }
            return;
        }
        let err = result.err().expect("there is no /dev/video0");
        let msg = err.to_string();
        assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
        assert_eq!(
            msg,
            "v4l:0: cannot open: cannot open /dev/video0: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn an_unknown_name_lists_the_devices() {
        let mut src = CameraSource::new(
            CameraSelector::Name("no-such-camera-xyz".into()),
            640,
            480,
            30.0,
        );
        let err = src
            .open(std::sync::Arc::new(crate::clock::RealClock))
            .err()
            .expect("no camera has that name");
        let msg = err.to_string();
        assert!(
            msg.contains("no V4L2 device matches \"no-such-camera-xyz\""),
            "{msg}"
        );
        assert!(msg.contains("devices:"), "{msg}");
    }
}
