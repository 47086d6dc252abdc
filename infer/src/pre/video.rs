//! Camera frames to model input: pixel-format conversion, crop to a region
//! of interest (usually a face), resize, colour order, normalization and
//! tensor layout.
//!
//! YUV sources use BT.601 (what webcams and JPEG use). The range is a
//! property of the source: [`YuvRange::Limited`] (Y in 16–235, the V4L2 and
//! video default) unless the frame says [`YuvRange::Full`] (JPEG/MJPEG
//! decoders, Y in 0–255). Chroma is read from the nearest sample, without
//! interpolation. Conversion stays in f32 (clamped to 0–255), never
//! rounding to 8 bits before the resize.
//!
//! Resizing is separable, chosen per axis: area averaging when shrinking
//! (each output pixel is the coverage-weighted mean of the source pixels
//! under it, like OpenCV `INTER_AREA`), so a small face crop does not
//! alias; bilinear with half-pixel centres when enlarging or keeping the
//! size (like OpenCV `INTER_LINEAR`).

use emogate_models::manifest::VideoInput;
// The manifest's channel order and tensor layout, used as is.
pub use emogate_models::manifest::{ColorOrder, VideoLayout};

use emogate_media::{Frame, PixelLayout, YuvRange};

use super::PreError;

/// Pixels `x0..x1` of row `y` of `frame` as RGB f32 (0–255), into `out`.
/// The frame must have passed [`Frame::check`].
fn row_rgb(frame: &Frame, y: usize, x0: usize, x1: usize, out: &mut [f32]) {
    let (w, d) = (frame.width, &frame.data[..]);
    let px = out.chunks_exact_mut(3);
    match frame.layout {
        PixelLayout::Rgb8 => {
            // Byte for byte: a loop the compiler vectorizes (a per-pixel
            // loop took 7.5 ns a pixel, three quarters of a 640×480
            // letterbox).
            let src = &d[(y * w + x0) * 3..(y * w + x1) * 3];
            for (o, s) in out.iter_mut().zip(src) {
                *o = f32::from(*s);
            }
        }
        PixelLayout::Bgr8 => {
            let src = &d[(y * w + x0) * 3..(y * w + x1) * 3];
            for (o, s) in px.zip(src.chunks_exact(3)) {
                o[0] = f32::from(s[2]);
                o[1] = f32::from(s[1]);
                o[2] = f32::from(s[0]);
            }
        }
        PixelLayout::Gray8 => {
            for (o, s) in px.zip(&d[y * w + x0..y * w + x1]) {
                o.fill(f32::from(*s));
            }
        }
        PixelLayout::Yuv420p | PixelLayout::Nv12 => {
            // The row's planes sliced once, so the loop reads without
            // recomputing offsets or matching the layout per pixel.
            let cw = w.div_ceil(2);
            let plane = w * frame.height;
            let crow = (y / 2) * cw;
            let luma = &d[y * w + x0..y * w + x1];
            let t = YuvTables::of(frame.range);
            if frame.layout == PixelLayout::Nv12 {
                let uv = &d[plane + 2 * crow..plane + 2 * (crow + cw)];
                for ((o, &l), x) in px.zip(luma).zip(x0..) {
                    let c = 2 * (x / 2);
                    t.rgb(l, uv[c], uv[c + 1], o);
                }
            } else {
                let chroma = cw * frame.height.div_ceil(2);
                let u = &d[plane + crow..plane + crow + cw];
                let v = &d[plane + chroma + crow..plane + chroma + crow + cw];
                for ((o, &l), x) in px.zip(luma).zip(x0..) {
                    t.rgb(l, u[x / 2], v[x / 2], o);
                }
            }
        }
        PixelLayout::Yuyv => {
            let row = &d[y * w.div_ceil(2) * 4..];
            let t = YuvTables::of(frame.range);
            for (o, x) in px.zip(x0..x1) {
                let pair = &row[(x / 2) * 4..(x / 2) * 4 + 4];
                t.rgb(pair[2 * (x % 2)], pair[1], pair[3], o);
            }
        }
    }
}

const KR: f32 = 0.299;
const KB: f32 = 0.114;
const KG: f32 = 1.0 - KR - KB;
/// The V and U weights of R and B.
const RV: f32 = 2.0 * (1.0 - KR);
const BU: f32 = 2.0 * (1.0 - KB);

/// Luma offset and scale, chroma scale.
fn range_scales(range: YuvRange) -> (f32, f32, f32) {
    match range {
        YuvRange::Limited => (16.0, 255.0 / 219.0, 255.0 / 224.0),
        YuvRange::Full => (0.0, 1.0, 1.0),
    }
}

/// BT.601 YUV to RGB in 0–255, from the luma weights Kr = 0.299, Kb = 0.114.
/// Frames are converted through [`YuvTables`], which give the same values.
pub fn yuv_to_rgb(y: u8, u: u8, v: u8, range: YuvRange) -> [f32; 3] {
    let (y_off, y_scale, c_scale) = range_scales(range);
    let l = (f32::from(y) - y_off) * y_scale;
    let u = (f32::from(u) - 128.0) * c_scale;
    let v = (f32::from(v) - 128.0) * c_scale;
    let r = l + RV * v;
    let g = l - BU * KB / KG * u - RV * KR / KG * v;
    let b = l + BU * u;
    [
        r.clamp(0.0, 255.0),
        g.clamp(0.0, 255.0),
        b.clamp(0.0, 255.0),
    ]
}

/// [`yuv_to_rgb`]'s products for every byte value, so that a pixel costs
/// five loads, four additions and the clamps: the same f32 operations in
/// the same order, so the same values bit for bit. Converting a 640×480
/// YUV 4:2:0 frame took 4.3 ms with the arithmetic per pixel.
struct YuvTables {
    luma: [f32; 256],
    /// `RV·v`, `BU·KB/KG·u`, `RV·KR/KG·v`, `BU·u` (chroma scaled).
    rv: [f32; 256],
    gu: [f32; 256],
    gv: [f32; 256],
    bu: [f32; 256],
}

impl YuvTables {
    fn of(range: YuvRange) -> &'static YuvTables {
        static LIMITED: std::sync::OnceLock<YuvTables> = std::sync::OnceLock::new();
        static FULL: std::sync::OnceLock<YuvTables> = std::sync::OnceLock::new();
        let cell = match range {
            YuvRange::Limited => &LIMITED,
            YuvRange::Full => &FULL,
        };
        cell.get_or_init(|| {
            let (y_off, y_scale, c_scale) = range_scales(range);
            let mut t = YuvTables {
                luma: [0.0; 256],
                rv: [0.0; 256],
                gu: [0.0; 256],
                gv: [0.0; 256],
                bu: [0.0; 256],
            };
            for i in 0..256 {
                let x = i as f32;
                let c = (x - 128.0) * c_scale;
                t.luma[i] = (x - y_off) * y_scale;
                t.rv[i] = RV * c;
                t.gu[i] = BU * KB / KG * c;
                t.gv[i] = RV * KR / KG * c;
                t.bu[i] = BU * c;
            }
            t
        })
    }

    #[inline(always)]
    fn rgb(&self, y: u8, u: u8, v: u8, out: &mut [f32]) {
        let l = self.luma[usize::from(y)];
        let r = l + self.rv[usize::from(v)];
        let g = l - self.gu[usize::from(u)] - self.gv[usize::from(v)];
        let b = l + self.bu[usize::from(u)];
        out[0] = r.clamp(0.0, 255.0);
        out[1] = g.clamp(0.0, 255.0);
        out[2] = b.clamp(0.0, 255.0);
    }
}

/// A region of interest in frame pixels; it may extend past the frame
/// (a face at the edge), and is clamped to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

/// What the model expects.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSpec {
    pub height: usize,
    pub width: usize,
    pub color: ColorOrder,
    pub layout: VideoLayout,
    /// One value for all channels, or one per channel.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Clip length; 1 for single images (no time axis).
    pub frames: usize,
}

impl VideoSpec {
    /// The spec a manifest's video input describes. Values are checked by
    /// [`VideoPre::new`].
    pub fn from_manifest(input: &VideoInput) -> Self {
        VideoSpec {
            height: input.height,
            width: input.width,
            color: input.color,
            layout: input.layout,
            mean: input.mean.clone(),
            std: input.std.clone(),
            frames: input.frames,
        }
    }
}

impl From<&VideoInput> for VideoSpec {
    fn from(input: &VideoInput) -> Self {
        VideoSpec::from_manifest(input)
    }
}

/// A video preprocessor for one model input. It keeps its scratch buffers
/// and the last `frames` processed frames between calls.
#[derive(Debug)]
pub struct VideoPre {
    spec: VideoSpec,
    mean: [f32; 3],
    std: [f32; 3],
    cols: Axis,
    rows: Axis,
    /// One converted source row, RGB, black outside the frame.
    row: Vec<f32>,
    /// One output row's weighted sum of source rows, at the source width.
    acc: Vec<f32>,
    /// `frames` processed frames, oldest at `head` once full.
    ring: Vec<f32>,
    head: usize,
    seen: usize,
}

impl VideoPre {
    /// # Errors
    /// [`PreError::Invalid`] for a zero size or clip length, `mean`/`std`
    /// not of length 1 or the channel count, or a `std` of 0 or not finite.
    pub fn new(spec: VideoSpec) -> Result<Self, PreError> {
        if spec.height == 0 || spec.width == 0 || spec.frames == 0 {
            return Err(PreError::invalid(
                "video input size (height x width, frames)",
                format!("{}x{}, {}", spec.height, spec.width, spec.frames),
                "all positive",
            ));
        }
        let c = spec.color.channels();
        let expand = |what: &'static str, v: &[f32]| -> Result<[f32; 3], PreError> {
            match v {
                [x] => Ok([*x; 3]),
                [a, b, d] if c == 3 => Ok([*a, *b, *d]),
                _ => Err(PreError::invalid(
                    what,
                    format!("{v:?} ({} values)", v.len()),
                    format!("1 or {c} values (one per {:?} channel)", spec.color),
                )),
            }
        };
        let mean = expand("video mean", &spec.mean)?;
        let std = expand("video std", &spec.std)?;
        if std.iter().chain(&mean).any(|s| !s.is_finite()) || std.contains(&0.0) {
            return Err(PreError::invalid(
                "video mean/std",
                format!("{:?} / {:?}", spec.mean, spec.std),
                "finite values and a non-zero std",
            ));
        }
        let per_frame = c * spec.height * spec.width;
        let ring = if spec.frames > 1 {
            vec![0.0; per_frame * spec.frames]
        } else {
            Vec::new()
        };
        Ok(VideoPre {
            spec,
            mean,
            std,
            cols: Axis::default(),
            rows: Axis::default(),
            row: Vec::new(),
            acc: Vec::new(),
            ring,
            head: 0,
            seen: 0,
        })
    }

    pub fn spec(&self) -> &VideoSpec {
        &self.spec
    }

    /// The tensor shape: `[1, C, H, W]` / `[1, H, W, C]`, with `T` after
    /// the 1 when `frames > 1`.
    pub fn output_shape(&self) -> Vec<usize> {
        let s = &self.spec;
        let c = s.color.channels();
        let mut shape = vec![1];
        if s.frames > 1 {
            shape.push(s.frames);
        }
        match s.layout {
            VideoLayout::Nchw => shape.extend([c, s.height, s.width]),
            VideoLayout::Nhwc => shape.extend([s.height, s.width, c]),
        }
        shape
    }

    /// Values in the output tensor.
    pub fn output_len(&self) -> usize {
        self.frame_len() * self.spec.frames
    }

    fn frame_len(&self) -> usize {
        self.spec.color.channels() * self.spec.height * self.spec.width
    }

    /// Adds `frame` (cropped to `roi`, default the whole frame) and writes
    /// the input tensor to `out`. With `frames > 1` it is the clip of the
    /// last `frames` frames, oldest first; until that many have been seen
    /// the oldest one is repeated at the start.
    ///
    /// # Errors
    /// [`PreError::BufferSize`] for a frame buffer or `out` of the wrong
    /// length; [`PreError::Invalid`] for a ROI that misses the frame.
    pub fn process(
        &mut self,
        frame: &Frame,
        roi: Option<Rect>,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        self.process_inner(frame, roi.map(Region::Clamped), out)
    }

    /// As [`VideoPre::process`], but `roi` is not clamped to the frame: the
    /// parts of it outside the frame are black, so the crop keeps its
    /// aspect ratio and position (letterboxing a frame for a detector, a
    /// face box at the edge of the frame).
    ///
    /// # Errors
    /// As [`VideoPre::process`]; [`PreError::Invalid`] for an empty `roi`
    /// or one larger than [`MAX_PADDED_SIDE`] on a side.
    pub fn process_padded(
        &mut self,
        frame: &Frame,
        roi: Rect,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        self.process_inner(frame, Some(Region::Padded(roi)), out)
    }

    fn process_inner(
        &mut self,
        frame: &Frame,
        roi: Option<Region>,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        PreError::check_len("video output buffer", out.len(), self.output_len())?;
        let t = self.spec.frames;
        if t == 1 {
            return self.render(frame, roi, out);
        }
        let n = self.frame_len();
        let mut ring = std::mem::take(&mut self.ring);
        // Until full, fill after the oldest; then overwrite it.
        let slot = if self.seen < t {
            (self.head + self.seen) % t
        } else {
            self.head
        };
        let rendered = self.render(frame, roi, &mut ring[slot * n..(slot + 1) * n]);
        self.ring = ring;
        rendered?;
        if self.seen == t {
            self.head = (self.head + 1) % t;
        } else {
            self.seen += 1;
        }
        for (i, block) in out.chunks_exact_mut(n).enumerate() {
            let k = i.saturating_sub(t - self.seen);
            let src = (self.head + k) % t;
            block.copy_from_slice(&self.ring[src * n..(src + 1) * n]);
        }
        Ok(())
    }

    /// Writes the clip of the last `frames` of `clip` to `out`, each
    /// cropped to `roi`. Independent of the frames [`VideoPre::process`] saw.
    ///
    /// # Errors
    /// As [`VideoPre::process`]; [`PreError::Invalid`] if `clip` is shorter
    /// than the clip length.
    pub fn process_clip(
        &mut self,
        clip: &[&Frame],
        roi: Option<Rect>,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        PreError::check_len("video output buffer", out.len(), self.output_len())?;
        let t = self.spec.frames;
        if clip.len() < t {
            return Err(PreError::invalid(
                "clip length",
                clip.len(),
                format!("at least {t} frames"),
            ));
        }
        let n = self.frame_len();
        for (frame, block) in clip[clip.len() - t..].iter().zip(out.chunks_exact_mut(n)) {
            self.render(frame, roi.map(Region::Clamped), block)?;
        }
        Ok(())
    }

    /// One frame into `out` (`C·H·W` values in the spec's layout).
    fn render(
        &mut self,
        frame: &Frame,
        roi: Option<Region>,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        frame.check()?;
        // The source rectangle `rx0..rx0 + rw` × `ry0..ry0 + rh` (frame
        // pixels, possibly outside the frame), and the part of it inside the
        // frame, `x0..x1` × `y0..y1`.
        let (rx0, ry0, rw, rh, (x0, y0, x1, y1)) = match roi {
            None => (
                0,
                0,
                frame.width,
                frame.height,
                (0, 0, frame.width, frame.height),
            ),
            Some(Region::Clamped(r)) => {
                let (x0, y0, x1, y1) = clamp_roi(frame, Some(r))?;
                (x0 as i64, y0 as i64, x1 - x0, y1 - y0, (x0, y0, x1, y1))
            }
            Some(Region::Padded(r)) => padded_roi(frame, r)?,
        };
        let (w, h) = (self.spec.width, self.spec.height);
        self.cols.plan(rw, w);
        self.rows.plan(rh, h);
        // Rows first, then columns: each output row sums its source rows
        // (contiguous runs of `rw × 3` values, which vectorize), then
        // resizes that one row. Shrinking 480 rows to 128, as the face
        // detector does with every camera frame, makes the column taps run
        // on 128 rows instead of 480, and the scratch is two rows whatever
        // the crop's height.
        self.row.resize(rw * 3, 0.0);
        self.acc.resize(rw * 3, 0.0);
        // Where the frame's columns x0..x1 sit in the row buffer (x0 ≥ rx0
        // whenever the region meets the frame); outside them the row stays
        // black.
        let inside = x0 < x1 && y0 < y1;
        let left = if inside {
            (x0 as i64 - rx0) as usize * 3
        } else {
            0
        };
        let right = if inside { left + (x1 - x0) * 3 } else { 0 };
        self.row.fill(0.0);
        // The source row now in `row` (a row straddling two output rows
        // is converted once).
        let mut converted = None;
        let c = self.spec.color.channels();
        for oy in 0..h {
            self.acc[left..right].fill(0.0);
            for (sy, wt) in self.rows.taps(oy) {
                let ry = ry0 + sy as i64;
                if ry < y0 as i64 || ry >= y1 as i64 {
                    // A row of the padding: black (a quarter of a 4:3
                    // frame's letterbox for the face detector).
                    continue;
                }
                if converted != Some(ry) {
                    row_rgb(frame, ry as usize, x0, x1, &mut self.row[left..right]);
                    converted = Some(ry);
                }
                for (a, s) in self.acc[left..right].iter_mut().zip(&self.row[left..right]) {
                    *a += wt * s;
                }
            }
            for ox in 0..w {
                let mut rgb = [0f32; 3];
                for (sx, wt) in self.cols.taps(ox) {
                    let at = sx * 3;
                    if at >= left && at < right {
                        for (a, s) in rgb.iter_mut().zip(&self.acc[at..at + 3]) {
                            *a += wt * s;
                        }
                    }
                }
                self.emit(rgb, oy, ox, c, out);
            }
        }
        Ok(())
    }

    /// Writes output pixel `(oy, ox)` from its RGB value (0–255): colour
    /// order, normalization and layout.
    #[inline]
    fn emit(&self, [r, g, b]: [f32; 3], oy: usize, ox: usize, c: usize, out: &mut [f32]) {
        let (h, w) = (self.spec.height, self.spec.width);
        let values = match self.spec.color {
            ColorOrder::Rgb => [r, g, b],
            ColorOrder::Bgr => [b, g, r],
            // Exact for gray sources, where the weights' f32 sum is not 1.
            ColorOrder::Gray if r == g && g == b => [r; 3],
            ColorOrder::Gray => [0.299 * r + 0.587 * g + 0.114 * b; 3],
        };
        for (ch, p) in values.iter().take(c).enumerate() {
            let at = match self.spec.layout {
                VideoLayout::Nchw => (ch * h + oy) * w + ox,
                VideoLayout::Nhwc => (oy * w + ox) * c + ch,
            };
            out[at] = (p / 255.0 - self.mean[ch]) / self.std[ch];
        }
    }

    /// Writes the input tensor for a turned crop: `region`'s rectangle,
    /// rotated by its angle about its centre, resized to the input; black
    /// outside the frame. For single-frame inputs (a face crop with the eyes
    /// levelled).
    ///
    /// Each output pixel averages `k × k` bilinear samples spread over its
    /// footprint, `k` the shrink factor rounded up (at most
    /// [`MAX_SUPERSAMPLING`]): close to the area averaging of the upright
    /// path, so a large face does not alias.
    ///
    /// # Errors
    /// [`PreError::BufferSize`] for a frame buffer or `out` of the wrong
    /// length; [`PreError::Invalid`] for a clip input, or a region that is
    /// empty, not finite, or over [`MAX_PADDED_SIDE`] a side.
    pub fn process_turned(
        &mut self,
        frame: &Frame,
        region: TurnedRect,
        out: &mut [f32],
    ) -> Result<(), PreError> {
        PreError::check_len("video output buffer", out.len(), self.output_len())?;
        if self.spec.frames != 1 {
            return Err(PreError::invalid(
                "turned crop",
                format!("a clip input of {} frames", self.spec.frames),
                "a single-frame input",
            ));
        }
        let max = MAX_PADDED_SIDE as f32;
        let finite = [
            region.cx,
            region.cy,
            region.width,
            region.height,
            region.angle,
        ]
        .iter()
        .all(|v| v.is_finite());
        let fits = |side: f32| (1.0..=max).contains(&side);
        if !(finite && fits(region.width) && fits(region.height)) {
            return Err(PreError::invalid(
                "turned region of interest",
                format!(
                    "{}x{} at ({}, {}), angle {}",
                    region.width, region.height, region.cx, region.cy, region.angle
                ),
                format!("a finite rectangle of 1 to {MAX_PADDED_SIDE} pixels a side"),
            ));
        }
        frame.check()?;
        let (h, w) = (self.spec.height, self.spec.width);
        let c = self.spec.color.channels();
        let (step_x, step_y) = (region.width / w as f32, region.height / h as f32);
        let k = (step_x.max(step_y).ceil() as usize).clamp(1, MAX_SUPERSAMPLING);
        let (sin, cos) = region.angle.sin_cos();
        let mut px = [0f32; 3];
        for oy in 0..h {
            for ox in 0..w {
                let mut acc = [0f32; 3];
                for j in 0..k {
                    let v =
                        (oy as f32 + (j as f32 + 0.5) / k as f32) * step_y - region.height / 2.0;
                    for i in 0..k {
                        let u =
                            (ox as f32 + (i as f32 + 0.5) / k as f32) * step_x - region.width / 2.0;
                        let x = region.cx + u * cos - v * sin;
                        let y = region.cy + u * sin + v * cos;
                        bilinear(frame, x, y, &mut px);
                        for (a, p) in acc.iter_mut().zip(px) {
                            *a += p;
                        }
                    }
                }
                let n = (k * k) as f32;
                self.emit(acc.map(|a| a / n), oy, ox, c, out);
            }
        }
        Ok(())
    }
}

/// The most bilinear samples per output pixel and axis in
/// [`VideoPre::process_turned`]: enough for a face of 8× the input's size;
/// larger ones alias a little.
pub const MAX_SUPERSAMPLING: usize = 8;

/// A rectangle turned about its centre, in frame pixels: output `(u, v)`
/// (from the rectangle's centre, its axes) is frame point
/// `centre + R(angle)·(u, v)`; `angle` in radians, positive turning the
/// rectangle's x axis towards the frame's y axis (clockwise on screen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnedRect {
    pub cx: f32,
    pub cy: f32,
    pub width: f32,
    pub height: f32,
    pub angle: f32,
}

/// The frame's RGB (0–255) at point `(x, y)` (pixel centres at +0.5),
/// bilinear, black outside. The frame must have passed [`Frame::check`].
fn bilinear(frame: &Frame, x: f32, y: f32, out: &mut [f32; 3]) {
    let (x, y) = (x - 0.5, y - 0.5);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    *out = [0.0; 3];
    let mut one = [0f32; 3];
    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
            let (sx, sy) = (x0 + dx, y0 + dy);
            let weight = wx * wy;
            if weight == 0.0
                || sx < 0
                || sy < 0
                || sx >= frame.width as i64
                || sy >= frame.height as i64
            {
                continue;
            }
            row_rgb(frame, sy as usize, sx as usize, sx as usize + 1, &mut one);
            for (o, p) in out.iter_mut().zip(one) {
                *o += weight * p;
            }
        }
    }
}

/// How a region of interest meets the frame's edges.
#[derive(Debug, Clone, Copy)]
enum Region {
    /// Cut to the frame.
    Clamped(Rect),
    /// Kept whole, black outside the frame.
    Padded(Rect),
}

/// The largest side of a padded region: the two row buffers it needs grow
/// with it (a 16384-pixel side is 192 KiB per row).
pub const MAX_PADDED_SIDE: u32 = 16384;

/// A padded ROI as `(x, y, width, height)` of the region and the half-open
/// bounds of its part inside the frame (empty bounds when it misses).
#[allow(clippy::type_complexity)]
fn padded_roi(
    frame: &Frame,
    r: Rect,
) -> Result<(i64, i64, usize, usize, (usize, usize, usize, usize)), PreError> {
    if r.width == 0 || r.height == 0 || r.width > MAX_PADDED_SIDE || r.height > MAX_PADDED_SIDE {
        return Err(PreError::invalid(
            "padded region of interest",
            format!("{}x{} at ({}, {})", r.width, r.height, r.x, r.y),
            format!("a non-empty rectangle of at most {MAX_PADDED_SIDE} pixels a side"),
        ));
    }
    let span = |start: i32, len: u32, max: usize| {
        let lo = i64::from(start).clamp(0, max as i64) as usize;
        let hi = (i64::from(start) + i64::from(len)).clamp(0, max as i64) as usize;
        (lo, hi.max(lo))
    };
    let (mut x0, mut x1) = span(r.x, r.width, frame.width);
    let (mut y0, mut y1) = span(r.y, r.height, frame.height);
    if x0 == x1 || y0 == y1 {
        (x0, x1, y0, y1) = (0, 0, 0, 0);
    }
    let (rw, rh) = (r.width as usize, r.height as usize);
    Ok((i64::from(r.x), i64::from(r.y), rw, rh, (x0, y0, x1, y1)))
}

/// The ROI clamped to the frame, as half-open pixel bounds `(x0, y0, x1, y1)`.
fn clamp_roi(frame: &Frame, roi: Option<Rect>) -> Result<(usize, usize, usize, usize), PreError> {
    let Some(r) = roi else {
        return Ok((0, 0, frame.width, frame.height));
    };
    let clamp = |start: i32, len: u32, max: usize| {
        let lo = i64::from(start).clamp(0, max as i64) as usize;
        let hi = (i64::from(start) + i64::from(len)).clamp(0, max as i64) as usize;
        (lo, hi)
    };
    let (x0, x1) = clamp(r.x, r.width, frame.width);
    let (y0, y1) = clamp(r.y, r.height, frame.height);
    if x0 >= x1 || y0 >= y1 {
        return Err(PreError::invalid(
            "region of interest",
            format!(
                "{}x{} at ({}, {}) on a {}x{} frame",
                r.width, r.height, r.x, r.y, frame.width, frame.height
            ),
            "a non-empty rectangle overlapping the frame",
        ));
    }
    Ok((x0, y0, x1, y1))
}

/// Resize weights along one axis: for each output index, the source
/// indices and weights (summing to 1) it is made of. Re-planned only when
/// the crop size changes, reusing its buffers.
#[derive(Debug, Default)]
struct Axis {
    src: usize,
    dst: usize,
    /// `dst + 1` offsets into `index`/`weight`.
    start: Vec<usize>,
    index: Vec<usize>,
    weight: Vec<f32>,
}

impl Axis {
    fn plan(&mut self, src: usize, dst: usize) {
        if (self.src, self.dst) == (src, dst) && !self.start.is_empty() {
            return;
        }
        (self.src, self.dst) = (src, dst);
        self.start.clear();
        self.index.clear();
        self.weight.clear();
        let scale = src as f64 / dst as f64;
        for o in 0..dst {
            self.start.push(self.index.len());
            if src > dst {
                // Area: the source interval [o·scale, (o+1)·scale) by coverage.
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                for s in a.floor() as usize..(b.ceil() as usize).min(src) {
                    let cover = b.min((s + 1) as f64) - a.max(s as f64);
                    if cover > 1e-9 {
                        self.index.push(s);
                        self.weight.push((cover / scale) as f32);
                    }
                }
            } else {
                // Bilinear with pixel centres at +0.5, clamped at the edges.
                let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(src - 1);
                let f = x - x0 as f64;
                if x0 + 1 < src && f > 0.0 {
                    self.index.extend([x0, x0 + 1]);
                    self.weight.extend([(1.0 - f) as f32, f as f32]);
                } else {
                    self.index.push(x0);
                    self.weight.push(1.0);
                }
            }
        }
        self.start.push(self.index.len());
    }

    /// `(source index, weight)` pairs of output `o`.
    fn taps(&self, o: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = self.start[o]..self.start[o + 1];
        self.index[r.clone()]
            .iter()
            .copied()
            .zip(self.weight[r].iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(height: usize, width: usize, color: ColorOrder, layout: VideoLayout) -> VideoSpec {
        VideoSpec {
            height,
            width,
            color,
            layout,
            mean: vec![0.0],
            std: vec![1.0],
            frames: 1,
        }
    }

    fn run(pre: &mut VideoPre, frame: &Frame, roi: Option<Rect>) -> Vec<f32> {
        let mut out = vec![0.0; pre.output_len()];
        pre.process(frame, roi, &mut out).expect("valid frame");
        out
    }

    fn gray(width: usize, height: usize, data: Vec<u8>) -> Frame {
        Frame::new(width, height, PixelLayout::Gray8, data, 0).expect("valid gray frame")
    }

    #[test]
    fn padded_regions_are_black_outside_the_frame() {
        let mut pre = VideoPre::new(spec(4, 4, ColorOrder::Gray, VideoLayout::Nchw)).unwrap();
        let frame = gray(4, 2, vec![255; 8]);
        let mut out = vec![9.0; 16];
        let square = Rect {
            x: 0,
            y: -1,
            width: 4,
            height: 4,
        };
        pre.process_padded(&frame, square, &mut out).unwrap();
        let rows: Vec<&[f32]> = out.chunks(4).collect();
        assert_eq!(rows, [[0.0; 4], [1.0; 4], [1.0; 4], [0.0; 4]]);
        // Clamped, the same region is the frame itself, stretched.
        pre.process(&frame, Some(square), &mut out).unwrap();
        assert!(out.iter().all(|v| *v == 1.0), "{out:?}");
        // Wholly outside: all black. Empty or huge: refused.
        let away = Rect {
            x: 10,
            y: 10,
            width: 4,
            height: 4,
        };
        pre.process_padded(&frame, away, &mut out).unwrap();
        assert!(out.iter().all(|v| *v == 0.0));
        for bad in [
            Rect {
                x: 0,
                y: 0,
                width: 0,
                height: 4,
            },
            Rect {
                x: 0,
                y: 0,
                width: MAX_PADDED_SIDE + 1,
                height: 4,
            },
        ] {
            assert!(pre.process_padded(&frame, bad, &mut out).is_err());
        }
    }

    #[test]
    fn constant_image_stays_constant_at_any_size() {
        let frame =
            Frame::new(7, 5, PixelLayout::Rgb8, [10u8, 120, 240].repeat(35), 0).expect("7x5 RGB");
        for (h, w) in [(2, 3), (11, 13), (3, 20), (5, 7)] {
            let mut pre =
                VideoPre::new(spec(h, w, ColorOrder::Rgb, VideoLayout::Nhwc)).expect("valid spec");
            let out = run(&mut pre, &frame, None);
            for px in out.chunks_exact(3) {
                for (v, e) in px.iter().zip([10.0, 120.0, 240.0]) {
                    assert!((v * 255.0 - e).abs() < 1e-3, "{h}x{w}: {v} vs {e}");
                }
            }
        }
    }

    #[test]
    fn area_downscale_of_checker_is_its_mean() {
        let mut pre =
            VideoPre::new(spec(1, 1, ColorOrder::Gray, VideoLayout::Nchw)).expect("valid spec");
        assert_eq!(
            run(&mut pre, &gray(2, 2, vec![0, 255, 255, 0]), None),
            [0.5]
        );
        // 4 → 2 averages pairs; 3 → 2 weights by coverage (1, ½ | ½, 1).
        let mut pre =
            VideoPre::new(spec(1, 2, ColorOrder::Gray, VideoLayout::Nchw)).expect("valid spec");
        let out = run(&mut pre, &gray(4, 1, vec![0, 60, 120, 180]), None);
        assert_eq!(
            out.iter().map(|v| v * 255.0).collect::<Vec<_>>(),
            [30.0, 150.0]
        );
        let out = run(&mut pre, &gray(3, 1, vec![0, 90, 180]), None);
        let px: Vec<f32> = out.iter().map(|v| v * 255.0).collect();
        assert!(
            (px[0] - 30.0).abs() < 1e-3 && (px[1] - 150.0).abs() < 1e-3,
            "{px:?}"
        );
    }

    #[test]
    fn bilinear_upscale_uses_half_pixel_centres() {
        let mut pre =
            VideoPre::new(spec(1, 4, ColorOrder::Gray, VideoLayout::Nchw)).expect("valid spec");
        let out = run(&mut pre, &gray(2, 1, vec![0, 100]), None);
        let px: Vec<f32> = out.iter().map(|v| v * 255.0).collect();
        for (v, e) in px.iter().zip([0.0, 25.0, 75.0, 100.0]) {
            assert!((v - e).abs() < 1e-3, "{px:?}");
        }
    }

    #[test]
    fn layouts_put_channels_where_expected() {
        // 2x2 RGB, pixel (x, y) channel c = 100y + 10x + c.
        let data: Vec<u8> = (0..2)
            .flat_map(|y| (0..2).flat_map(move |x| (0..3).map(move |c| 100 * y + 10 * x + c)))
            .collect();
        let frame = Frame::new(2, 2, PixelLayout::Rgb8, data, 0).expect("2x2 RGB");
        let value = |y: usize, x: usize, c: usize| (100 * y + 10 * x + c) as f32 / 255.0;
        let mut nchw =
            VideoPre::new(spec(2, 2, ColorOrder::Rgb, VideoLayout::Nchw)).expect("valid spec");
        let mut nhwc =
            VideoPre::new(spec(2, 2, ColorOrder::Rgb, VideoLayout::Nhwc)).expect("valid spec");
        let mut bgr =
            VideoPre::new(spec(2, 2, ColorOrder::Bgr, VideoLayout::Nchw)).expect("valid spec");
        let (a, b, r) = (
            run(&mut nchw, &frame, None),
            run(&mut nhwc, &frame, None),
            run(&mut bgr, &frame, None),
        );
        assert_eq!(nchw.output_shape(), [1, 3, 2, 2]);
        assert_eq!(nhwc.output_shape(), [1, 2, 2, 3]);
        for (y, x, c) in
            (0..2).flat_map(|y| (0..2).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
        {
            assert_eq!(a[c * 4 + y * 2 + x], value(y, x, c));
            assert_eq!(b[(y * 2 + x) * 3 + c], value(y, x, c));
            assert_eq!(r[(2 - c) * 4 + y * 2 + x], value(y, x, c));
        }
    }

    #[test]
    fn normalization_is_exact_and_broadcasts() {
        let frame = Frame::new(1, 1, PixelLayout::Rgb8, vec![255u8, 0, 51], 0).expect("1x1 RGB");
        let mut pre = VideoPre::new(VideoSpec {
            mean: vec![0.5, 0.25, 0.2],
            std: vec![0.25],
            ..spec(1, 1, ColorOrder::Rgb, VideoLayout::Nchw)
        })
        .expect("valid spec");
        assert_eq!(run(&mut pre, &frame, None), [2.0, -1.0, 0.0]);
        let err = VideoPre::new(VideoSpec {
            mean: vec![0.5, 0.5],
            ..spec(1, 1, ColorOrder::Rgb, VideoLayout::Nchw)
        })
        .expect_err("two means for three channels");
        assert_eq!(
            err.to_string(),
            "video mean is [0.5, 0.5] (2 values); expected 1 or 3 values (one per Rgb channel)"
        );
        assert!(
            VideoPre::new(VideoSpec {
                std: vec![0.0],
                ..spec(1, 1, ColorOrder::Gray, VideoLayout::Nchw)
            })
            .is_err()
        );
    }

    #[test]
    fn gray_target_uses_bt601_luma() {
        let frame = Frame::new(1, 1, PixelLayout::Bgr8, vec![0u8, 0, 255], 0).expect("1x1 BGR red");
        let mut pre =
            VideoPre::new(spec(1, 1, ColorOrder::Gray, VideoLayout::Nchw)).expect("valid spec");
        assert!((run(&mut pre, &frame, None)[0] - 0.299).abs() < 1e-6);
    }

    #[test]
    fn yuv_known_colours() {
        for range in [YuvRange::Limited, YuvRange::Full] {
            let (black, white) = if range == YuvRange::Limited {
                (16, 235)
            } else {
                (0, 255)
            };
            assert_eq!(yuv_to_rgb(black, 128, 128, range), [0.0; 3]);
            assert_eq!(yuv_to_rgb(white, 128, 128, range), [255.0; 3]);
        }
        let close =
            |got: [f32; 3], want: [f32; 3]| got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 2.0);
        // BT.601 red, limited (81, 90, 240) and full (76, 85, 255).
        assert!(close(
            yuv_to_rgb(81, 90, 240, YuvRange::Limited),
            [255.0, 0.0, 0.0]
        ));
        assert!(close(
            yuv_to_rgb(76, 85, 255, YuvRange::Full),
            [255.0, 0.0, 0.0]
        ));
        // Limited-range blue (41, 240, 110).
        assert!(close(
            yuv_to_rgb(41, 240, 110, YuvRange::Limited),
            [0.0, 0.0, 255.0]
        ));
    }

    #[test]
    fn yuv_tables_match_the_arithmetic_bit_for_bit() {
        for range in [YuvRange::Limited, YuvRange::Full] {
            let t = YuvTables::of(range);
            let mut got = [0f32; 3];
            for y in 0..=255u8 {
                for u in (0..=255u8).step_by(3) {
                    for v in (0..=255u8).step_by(5) {
                        t.rgb(y, u, v, &mut got);
                        let want = yuv_to_rgb(y, u, v, range);
                        assert_eq!(
                            got.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "{range:?} ({y}, {u}, {v})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_and_planar_yuv_frames_decode() {
        let mut pre =
            VideoPre::new(spec(2, 2, ColorOrder::Rgb, VideoLayout::Nhwc)).expect("valid spec");
        let red = yuv_to_rgb(81, 90, 240, YuvRange::Limited).map(|v| v / 255.0);
        // 2x2 of limited red in each format.
        let frames = [
            Frame::new(
                2,
                2,
                PixelLayout::Yuyv,
                vec![81, 90, 81, 240, 81, 90, 81, 240],
                0,
            ),
            Frame::new(2, 2, PixelLayout::Nv12, vec![81, 81, 81, 81, 90, 240], 0),
            Frame::new(2, 2, PixelLayout::Yuv420p, vec![81, 81, 81, 81, 90, 240], 0),
        ];
        for frame in frames {
            let frame = frame.expect("valid YUV frame");
            let out = run(&mut pre, &frame, None);
            assert!(
                out.chunks_exact(3).all(|px| px == red),
                "{:?}: {out:?}",
                frame.layout
            );
        }
        // Odd sizes round chroma up: 3x3 I420 is 9 + 2·(2·2) bytes.
        assert_eq!(PixelLayout::Yuv420p.frame_len(3, 3), 17);
        assert_eq!(PixelLayout::Yuyv.frame_len(3, 1), 8);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let err =
            Frame::new(4, 4, PixelLayout::Rgb8, vec![0u8; 47], 0).expect_err("one byte short");
        assert_eq!(
            err.to_string(),
            "a 4x4 rgb24 frame needs 48 bytes; the buffer holds 47"
        );
        let mut pre =
            VideoPre::new(spec(2, 2, ColorOrder::Rgb, VideoLayout::Nchw)).expect("valid spec");
        let frame = gray(4, 4, vec![0; 16]);
        let err = pre
            .process(&frame, None, &mut [0.0; 11])
            .expect_err("short output");
        assert_eq!(
            err.to_string(),
            "video output buffer holds 11 values; expected 12"
        );
        let bad = Frame {
            data: vec![0; 3].into(),
            ..frame.clone()
        };
        assert!(pre.process(&bad, None, &mut [0.0; 12]).is_err());
    }

    #[test]
    fn roi_is_clamped_and_empty_roi_is_an_error() {
        // Left half 0, right half 200; a ROI hanging off the right edge sees only 200.
        let data: Vec<u8> = (0..16).map(|i| if i % 4 >= 2 { 200 } else { 0 }).collect();
        let frame = gray(4, 4, data);
        let mut pre =
            VideoPre::new(spec(1, 1, ColorOrder::Gray, VideoLayout::Nchw)).expect("valid spec");
        let roi = Rect {
            x: 2,
            y: -3,
            width: 10,
            height: 10,
        };
        assert!((run(&mut pre, &frame, Some(roi))[0] * 255.0 - 200.0).abs() < 1e-3);
        let off = Rect {
            x: 4,
            y: 0,
            width: 2,
            height: 2,
        };
        let err = pre
            .process(&frame, Some(off), &mut [0.0])
            .expect_err("ROI right of the frame");
        assert!(
            err.to_string()
                .starts_with("region of interest is 2x2 at (4, 0) on a 4x4 frame"),
            "{err}"
        );
    }

    #[test]
    fn spec_from_manifest_input() {
        let input: VideoInput = serde_json::from_str(
            r#"{"name": "face", "layout": "NCHW", "color": "bgr", "height": 48, "width": 32,
                "mean": [0.5, 0.4, 0.3], "std": [0.2], "frames": 4}"#,
        )
        .expect("valid video input");
        let spec = VideoSpec::from_manifest(&input);
        assert_eq!(
            spec,
            VideoSpec {
                height: 48,
                width: 32,
                color: ColorOrder::Bgr,
                layout: VideoLayout::Nchw,
                mean: vec![0.5, 0.4, 0.3],
                std: vec![0.2],
                frames: 4,
            }
        );
        let pre = VideoPre::new(VideoSpec::from(&input)).expect("valid spec");
        assert_eq!(pre.output_shape(), [1, 4, 3, 48, 32]);
    }

    #[test]
    fn clips_keep_the_last_frames_oldest_first() {
        let mut pre = VideoPre::new(VideoSpec {
            frames: 3,
            ..spec(1, 1, ColorOrder::Gray, VideoLayout::Nhwc)
        })
        .expect("valid spec");
        assert_eq!(pre.output_shape(), [1, 3, 1, 1, 1]);
        let frames: Vec<Frame> = [51u8, 102, 153, 204]
            .iter()
            .map(|v| gray(1, 1, vec![*v]))
            .collect();
        let mut out = [0.0; 3];
        let mut seen = Vec::new();
        for f in &frames {
            pre.process(f, None, &mut out).expect("valid frame");
            seen.push(out.map(|v| (v * 5.0).round()));
        }
        assert_eq!(
            seen,
            [
                [1.0, 1.0, 1.0],
                [1.0, 1.0, 2.0],
                [1.0, 2.0, 3.0],
                [2.0, 3.0, 4.0]
            ]
        );
        let refs: Vec<&Frame> = frames.iter().collect();
        pre.process_clip(&refs, None, &mut out)
            .expect("four frames");
        assert_eq!(out.map(|v| (v * 5.0).round()), [2.0, 3.0, 4.0]);
        assert!(pre.process_clip(&refs[..2], None, &mut out).is_err());
    }
}
