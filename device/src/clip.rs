//! Video files decoded for replay: a still image, a folder of frames, or a
//! Y4M (YUV4MPEG2) clip. Frames carry their timestamp within the clip, so
//! the engine aligns them with audio exactly as it aligns live capture.
//!
//! Y4M is what `ffmpeg -i clip.mp4 -pix_fmt gray clip.y4m` (or `yuv420p`)
//! writes: a text header, then `FRAME` + raw planes per frame. It needs no
//! codec, so replay works the same on every board. A clip is read frame by
//! frame as it plays (a [`ClipReader`], through the `y4m` crate), so memory
//! does not grow with its length; still images and folders of stills are
//! decoded when opened.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use emogate_media::{Frame, Nanos, PixelLayout, YuvRange};

/// Errors reading a video file, naming the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The file could not be opened or read (retrying may help).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a video this module reads, or a field of it is
    /// out of range (retrying will not help).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

fn format_err(path: &Path, message: impl Into<String>) -> ClipError {
    ClipError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ClipError + '_ {
    move |source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The slowest frame rate accepted (a Y4M `F` field, a folder's rate):
/// slower than a frame an hour is a mistyped rate, and the bound keeps
/// every timestamp of a clip far inside [`Nanos`].
pub const MAX_FRAME_PERIOD: Duration = Duration::from_secs(3600);
/// The largest Y4M width or height (16K video). It bounds the frame
/// buffer, and keeps size products far from overflow: the `y4m` crate
/// multiplies `W × H` unchecked.
pub const MAX_Y4M_SIDE: usize = 16_384;
/// The longest Y4M header line, as the `y4m` crate reads it.
const MAX_HEADER_LINE: u64 = 1024;
/// The header of a frame without parameters (what ffmpeg writes).
const BARE_FRAME_HEADER: &[u8] = b"FRAME\n";

/// A video file opened for replay: its frame rate, its length, and its
/// frames (decoded, or where to read them).
#[derive(Debug)]
pub struct Clip {
    path: PathBuf,
    /// Frame period; `None` for a still image (valid at any time).
    period: Option<Duration>,
    content: Content,
}

#[derive(Debug)]
enum Content {
    /// A still image, or a folder of stills, decoded at open.
    Decoded(Vec<Frame>),
    /// A Y4M clip, read frame by frame.
    Y4m(Y4mClip),
}

/// What reading a Y4M clip's frames needs.
#[derive(Debug)]
struct Y4mClip {
    /// The header line, `\n` included: each new decoder parses it again.
    header: Vec<u8>,
    width: usize,
    height: usize,
    layout: PixelLayout,
    range: YuvRange,
    frame_len: usize,
    frames: FrameOffsets,
}

/// Where each frame of a Y4M clip starts.
#[derive(Debug)]
enum FrameOffsets {
    /// Every frame header is a bare `FRAME\n` (ffmpeg's): frame `k`
    /// starts at `first + k × stride`, in constant memory.
    Uniform { first: u64, stride: u64, count: u64 },
    /// Frame headers carry parameters, so their lengths vary: each
    /// frame's offset, found by one pass at open (8 bytes a frame).
    Listed(Vec<u64>),
}

impl FrameOffsets {
    fn count(&self) -> u64 {
        match self {
            FrameOffsets::Uniform { count, .. } => *count,
            FrameOffsets::Listed(offsets) => offsets.len() as u64,
        }
    }

    fn offset(&self, k: u64) -> Option<u64> {
        match self {
            FrameOffsets::Uniform {
                first,
                stride,
                count,
            } => (k < *count).then(|| first + k * stride),
            FrameOffsets::Listed(offsets) => offsets.get(usize::try_from(k).ok()?).copied(),
        }
    }
}

/// The media time of frame `k` at `period` (saturating: a replay that
/// loops for centuries stays put rather than panicking).
pub(crate) fn frame_time(period: Duration, k: u64) -> Nanos {
    u64::try_from(period.as_nanos().saturating_mul(u128::from(k))).unwrap_or(Nanos::MAX)
}

impl Clip {
    /// Opens a `.y4m` clip, a `.png` still image, or a folder of `.png`
    /// frames (sorted by name, shown at `dir_fps`). Stills are decoded
    /// now; a clip's header is read and its frames located, its pixels
    /// are read as it plays.
    ///
    /// # Errors
    /// [`ClipError::Io`] when the file cannot be read; [`ClipError::Format`]
    /// naming the file and the field when it is malformed or out of range
    /// (a Y4M `W`/`H` beyond [`MAX_Y4M_SIDE`], an `F` of zero or slower
    /// than [`MAX_FRAME_PERIOD`], a `dir_fps` that is not a positive rate
    /// of at least a frame per hour, a truncated frame).
    pub fn open(path: &Path, dir_fps: f64) -> Result<Self, ClipError> {
        if path.is_dir() {
            return open_folder(path, dir_fps);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("y4m") => open_y4m(path),
            Some("png") => Ok(Clip {
                content: Content::Decoded(vec![read_png(path, 0)?]),
                period: None,
                path: path.into(),
            }),
            _ => Err(format_err(
                path,
                "unsupported video file: expected a .png still image, a folder of .png frames, or a .y4m clip",
            )),
        }
    }

    /// Frames in the clip (1 for a still image).
    pub fn frame_count(&self) -> u64 {
        match &self.content {
            Content::Decoded(frames) => frames.len() as u64,
            Content::Y4m(y4m) => y4m.frames.count(),
        }
    }

    /// Time from one frame to the next (`None` for a still image).
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// The clip's length (`None` for a still image).
    pub fn duration(&self) -> Option<Duration> {
        self.period
            .map(|p| Duration::from_nanos(frame_time(p, self.frame_count())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a clip's frames on demand. Each stream has its own (a Y4M reader
/// holds a file position); it keeps one decoder and the last frame, so
/// playing forward reads each frame once, without seeking.
pub struct ClipReader {
    clip: Arc<Clip>,
    /// The open Y4M file (`None` for decoded stills).
    file: Option<File>,
    /// The decoder and the index of the frame it reads next.
    decoder: Option<(Y4mDecoder, u64)>,
    last: Option<(u64, Frame)>,
}

/// A decoder fed the header from memory, then the file from a frame's
/// offset on: re-parsing a kilobyte of header is how it starts at any
/// frame.
type Y4mDecoder = y4m::Decoder<std::io::Chain<Cursor<Vec<u8>>, BufReader<File>>>;

impl ClipReader {
    /// A reader of `clip` (opens a Y4M file again).
    ///
    /// # Errors
    /// [`ClipError::Io`] when the clip's file cannot be opened.
    pub fn new(clip: Arc<Clip>) -> Result<Self, ClipError> {
        let file = match &clip.content {
            Content::Y4m(_) => Some(File::open(&clip.path).map_err(io_err(&clip.path))?),
            Content::Decoded(_) => None,
        };
        Ok(ClipReader {
            clip,
            file,
            decoder: None,
            last: None,
        })
    }

    pub fn clip(&self) -> &Arc<Clip> {
        &self.clip
    }

    /// Frame `k` (0-based), stamped with its time in the clip; `None`
    /// past the end.
    ///
    /// # Errors
    /// [`ClipError::Io`] when the file cannot be read; [`ClipError::Format`]
    /// when the frame on disk is no longer what the header promised (the
    /// file changed since it was opened).
    pub fn frame(&mut self, k: u64) -> Result<Option<Frame>, ClipError> {
        if let Some((i, frame)) = &self.last
            && *i == k
        {
            return Ok(Some(frame.clone()));
        }
        // A handle of our own, so reading can borrow the reader mutably.
        let clip = Arc::clone(&self.clip);
        let frame = match &clip.content {
            Content::Decoded(frames) => {
                usize::try_from(k).ok().and_then(|k| frames.get(k)).cloned()
            }
            Content::Y4m(y4m) if k < y4m.frames.count() => Some(self.read_y4m(&clip, y4m, k)?),
            Content::Y4m(_) => None,
        };
        if let Some(frame) = &frame {
            self.last = Some((k, frame.clone()));
        }
        Ok(frame)
    }

    /// The newest frame captured at or before `t` (looping if asked);
    /// `None` past the end of a clip that does not loop.
    ///
    /// # Errors
    /// As [`frame`](Self::frame).
    pub fn frame_at(&mut self, t: Duration, looped: bool) -> Result<Option<Frame>, ClipError> {
        let Some(period) = self.clip.period else {
            return self.frame(0);
        };
        let index = t.as_nanos() / period.as_nanos().max(1);
        let mut index = u64::try_from(index).unwrap_or(u64::MAX);
        if looped {
            index %= self.clip.frame_count().max(1);
        }
        self.frame(index)
    }

    fn read_y4m(&mut self, clip: &Clip, y4m: &Y4mClip, k: u64) -> Result<Frame, ClipError> {
        let path = &clip.path;
        let offset = y4m
            .frames
            .offset(k)
            .ok_or_else(|| format_err(path, format!("frame {k}: past the end of the clip")))?;
        // Playing forward continues with the decoder already there; any
        // other frame (a loop, a jump) starts a decoder at its offset.
        let mut decoder = match self.decoder.take() {
            Some((decoder, next)) if next == k => decoder,
            _ => {
                let Some(file) = &self.file else {
                    return Err(format_err(path, "the clip's file is not open"));
                };
                // A second handle on the same open file: the clip keeps
                // playing even if its path is renamed meanwhile.
                let mut file = file.try_clone().map_err(io_err(path))?;
                file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
                let input = Cursor::new(y4m.header.clone()).chain(BufReader::new(file));
                y4m::Decoder::new_with_limits(input, limits(y4m.frame_len))
                    .map_err(|e| format_err(path, format!("header: {e}")))?
            }
        };
        let frame = decoder
            .read_frame()
            .map_err(|e| frame_err(path, k, offset, y4m.frame_len, e))?;
        let mut data = Vec::with_capacity(y4m.frame_len);
        data.extend_from_slice(frame.get_y_plane());
        data.extend_from_slice(frame.get_u_plane());
        data.extend_from_slice(frame.get_v_plane());
        // Kept only after a good read: after an error the next read
        // starts afresh at its frame's offset.
        self.decoder = Some((decoder, k + 1));
        let at = frame_time(clip.period.unwrap_or_default(), k);
        Frame::new(y4m.width, y4m.height, y4m.layout, data, at)
            .map(|f| f.with_range(y4m.range))
            .map_err(|e| format_err(path, format!("frame {k}: {e}")))
    }
}

/// The decoder's frame-buffer limit: exactly one frame, which the header
/// checks have already bounded.
fn limits(frame_len: usize) -> y4m::Limits {
    y4m::Limits { bytes: frame_len }
}

/// Names what went wrong reading frame `k` (at byte `offset`).
fn frame_err(path: &Path, k: u64, offset: u64, frame_len: usize, e: y4m::Error) -> ClipError {
    match e {
        y4m::Error::EOF => format_err(
            path,
            format!(
                "frame {k} is truncated: the file ends before its `FRAME` line and {frame_len} bytes"
            ),
        ),
        y4m::Error::ParseError(y4m::ParseError::InvalidY4M) => format_err(
            path,
            format!("frame {k}: expected `FRAME` at byte {offset}"),
        ),
        y4m::Error::ParseError(_) => format_err(
            path,
            format!(
                "frame {k}: the `FRAME` line at byte {offset} is malformed or longer than {MAX_HEADER_LINE} bytes"
            ),
        ),
        y4m::Error::IoError(source) => ClipError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => format_err(path, format!("frame {k}: {other}")),
    }
}

/// Opens a folder of `.png` frames shown at `fps`.
fn open_folder(path: &Path, fps: f64) -> Result<Clip, ClipError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format_err(path, "folder holds no .png frames"));
    }
    let period = folder_period(fps).map_err(|m| format_err(path, m))?;
    let frames: Vec<Frame> = (0u64..)
        .zip(&files)
        .map(|(i, f)| read_png(f, frame_time(period, i)))
        .collect::<Result<_, _>>()?;
    // A camera does not change resolution mid-stream; a folder that
    // does is a mix-up worth naming rather than silently resizing.
    if let Some((f, frame)) = files
        .iter()
        .zip(&frames)
        .find(|(_, fr)| (fr.width, fr.height) != (frames[0].width, frames[0].height))
    {
        return Err(format_err(
            f,
            format!(
                "frame is {}x{} but {} is {}x{}; every frame of a folder must have the same size",
                frame.width,
                frame.height,
                files[0].display(),
                frames[0].width,
                frames[0].height
            ),
        ));
    }
    Ok(Clip {
        content: Content::Decoded(frames),
        period: Some(period),
        path: path.into(),
    })
}

/// The frame period of a folder shown at `fps` frames per second.
/// `Duration::from_secs_f64` would panic on a rate like `1e-20` (a
/// period beyond `Duration`) or NaN, so every such rate is an error.
fn folder_period(fps: f64) -> Result<Duration, String> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(format!(
            "folder frame rate {fps}: expected a positive, finite number of frames per second"
        ));
    }
    match Duration::try_from_secs_f64(1.0 / fps) {
        Ok(period) if period.is_zero() => Err(format!(
            "folder frame rate {fps}: faster than a frame per nanosecond; expected at most 1e9 frames per second"
        )),
        Ok(period) if period <= MAX_FRAME_PERIOD => Ok(period),
        _ => Err(format!(
            "folder frame rate {fps}: slower than a frame per hour; expected at least {} frames per second",
            1.0 / MAX_FRAME_PERIOD.as_secs_f64()
        )),
    }
}

/// Opens a Y4M clip: reads and checks its header, and locates its frames.
/// Frames up to this size are allocated before the file is known to hold
/// one (see `open_y4m`).
const SMALL_FRAME_BYTES: u64 = 1 << 20;

/// Supports `Cmono` and the 8-bit 4:2:0 colour spaces.
fn open_y4m(path: &Path) -> Result<Clip, ClipError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut header = Vec::new();
    BufReader::new((&file).take(MAX_HEADER_LINE))
        .read_until(b'\n', &mut header)
        .map_err(io_err(path))?;
    if !header.starts_with(b"YUV4MPEG2 ") {
        return Err(format_err(
            path,
            "missing `YUV4MPEG2` signature; expected a Y4M file",
        ));
    }
    if header.last() != Some(&b'\n') {
        return Err(format_err(
            path,
            format!("no end of the header line within {MAX_HEADER_LINE} bytes"),
        ));
    }
    let (width, height) = check_size(&header).map_err(|m| format_err(path, m))?;
    // The decoder allocates frame buffers for the declared size as it
    // parses: a file too short for one frame of even the smallest colour
    // space read here (mono, one byte a pixel) is refused first when that
    // frame is large, so memory stays proportional to the file (found by
    // fuzzing: a 73-byte header declaring 4294x5555 made it allocate
    // 72 MB). Small frames go on to the checks below, whose messages say
    // more (the colour space, which frame is truncated).
    let smallest_frame = PixelLayout::Gray8.frame_len(width, height) as u64;
    let after_header = file_len.saturating_sub(header.len() as u64);
    if smallest_frame > SMALL_FRAME_BYTES && after_header < b"FRAME\n".len() as u64 + smallest_frame
    {
        return Err(format_err(
            path,
            format!(
                "header declares {width}x{height} frames (at least {smallest_frame} bytes each), \
                 but only {after_header} bytes follow it; expected at least one complete frame"
            ),
        ));
    }
    // The decoder allocates a frame buffer as it parses; the limit is the
    // largest frame of a colour space read here (4:2:0), so a larger
    // frame (4:4:4, 10-bit) is refused before allocating, as exceeding it.
    let decoder = y4m::Decoder::new_with_limits(
        header.as_slice(),
        limits(PixelLayout::Yuv420p.frame_len(width, height)),
    )
    .map_err(|e| match e {
        y4m::Error::UnknownColorspace | y4m::Error::OutOfMemory => {
            format_err(path, colour_space_err(&header))
        }
        other => format_err(
            path,
            format!(
                "header `{}`: {other}; expected `YUV4MPEG2 W<width> H<height> F<num>:<den> C<colour space>`",
                String::from_utf8_lossy(header.trim_ascii_end())
            ),
        ),
    })?;
    let layout = match decoder.get_colorspace() {
        y4m::Colorspace::Cmono => PixelLayout::Gray8,
        y4m::Colorspace::C420
        | y4m::Colorspace::C420jpeg
        | y4m::Colorspace::C420paldv
        | y4m::Colorspace::C420mpeg2 => PixelLayout::Yuv420p,
        _ => return Err(format_err(path, colour_space_err(&header))),
    };
    let rate = decoder.get_framerate();
    let period = y4m_period(rate.num, rate.den).map_err(|m| format_err(path, m))?;
    // ffmpeg writes the range as an extension field.
    let range = if decoder
        .get_raw_params()
        .split(|b| *b == b' ')
        .any(|field| field.eq_ignore_ascii_case(b"XCOLORRANGE=FULL"))
    {
        YuvRange::Full
    } else {
        YuvRange::Limited
    };
    let frame_len = layout.frame_len(width, height);
    let frames = locate_frames(path, &mut file, &header, file_len, frame_len)?;
    Ok(Clip {
        path: path.into(),
        period: Some(period),
        content: Content::Y4m(Y4mClip {
            header,
            width,
            height,
            layout,
            range,
            frame_len,
            frames,
        }),
    })
}

/// The header's `W` and `H`, each checked to be 1 to [`MAX_Y4M_SIDE`]
/// before the `y4m` crate multiplies them.
fn check_size(header: &[u8]) -> Result<(usize, usize), String> {
    let side = |key: u8, what: &str| -> Result<usize, String> {
        let Some(value) = header_field(header, key) else {
            return Err(format!(
                "header lacks {}; expected W<width> H<height>",
                key as char
            ));
        };
        match value.parse::<usize>() {
            Ok(n) if (1..=MAX_Y4M_SIDE).contains(&n) => Ok(n),
            _ => Err(format!(
                "header {} `{value}`: expected a {what} of 1 to {MAX_Y4M_SIDE} pixels",
                key as char
            )),
        }
    };
    Ok((side(b'W', "width")?, side(b'H', "height")?))
}

/// The value of the header field starting with `key` (the last one, as
/// the `y4m` crate reads them), as text for a message.
fn header_field(header: &[u8], key: u8) -> Option<String> {
    let params = header.trim_ascii_end().strip_prefix(b"YUV4MPEG2 ")?;
    params
        .split(|b| *b == b' ')
        .rfind(|f| f.first() == Some(&key))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

fn colour_space_err(header: &[u8]) -> String {
    let value = header_field(header, b'C').unwrap_or_default();
    format!(
        "header C `{value}`: expected mono or an 8-bit 4:2:0 colour space (ffmpeg -pix_fmt gray or yuv420p)"
    )
}

/// The frame period of a Y4M `F num:den` field, in integer nanoseconds
/// (`1e9 × den / num` overflows `u64` for a large `den`, so it is done in
/// `u128`).
fn y4m_period(num: usize, den: usize) -> Result<Duration, String> {
    let field = format!("header F `{num}:{den}`");
    if num == 0 || den == 0 {
        return Err(format!(
            "{field}: expected a frame rate like 30:1 (both numbers positive)"
        ));
    }
    let nanos = 1_000_000_000u128 * den as u128 / num as u128;
    if nanos == 0 {
        return Err(format!(
            "{field}: faster than a frame per nanosecond; expected a frame rate like 30:1"
        ));
    }
    if nanos > MAX_FRAME_PERIOD.as_nanos() {
        return Err(format!(
            "{field}: slower than a frame per hour; expected a frame rate like 30:1"
        ));
    }
    // At most an hour in nanoseconds: fits u64.
    Ok(Duration::from_nanos(nanos as u64))
}

/// Finds where each frame starts. A clip whose frames all have bare
/// `FRAME` lines (its size says so) is computed, not read; otherwise one
/// pass with the decoder records each offset, and a truncated frame is
/// found now rather than mid-replay.
fn locate_frames(
    path: &Path,
    file: &mut File,
    header: &[u8],
    file_len: u64,
    frame_len: usize,
) -> Result<FrameOffsets, ClipError> {
    let first = header.len() as u64;
    let stride = BARE_FRAME_HEADER.len() as u64 + frame_len as u64;
    let data = file_len.saturating_sub(first);
    if data == 0 {
        return Err(format_err(path, "the clip has no frames"));
    }
    if data.is_multiple_of(stride) {
        let mut head = [0u8; BARE_FRAME_HEADER.len()];
        file.seek(SeekFrom::Start(first)).map_err(io_err(path))?;
        file.read_exact(&mut head).map_err(io_err(path))?;
        if head == BARE_FRAME_HEADER {
            return Ok(FrameOffsets::Uniform {
                first,
                stride,
                count: data / stride,
            });
        }
    }
    file.seek(SeekFrom::Start(first)).map_err(io_err(path))?;
    let input = Cursor::new(header).chain(BufReader::new(&*file));
    let mut decoder = y4m::Decoder::new_with_limits(input, limits(frame_len))
        .map_err(|e| format_err(path, format!("header: {e}")))?;
    let mut offsets = Vec::new();
    let mut pos = first;
    while pos < file_len {
        let k = offsets.len() as u64;
        let frame = decoder.read_frame().map_err(|e| match e {
            y4m::Error::EOF => format_err(
                path,
                format!(
                    "frame {k} is truncated: needs a `FRAME` line and {frame_len} bytes, {} left",
                    file_len - pos
                ),
            ),
            other => frame_err(path, k, pos, frame_len, other),
        })?;
        let line = BARE_FRAME_HEADER.len() + frame.get_raw_params().map_or(0, |p| p.len() + 1);
        offsets.push(pos);
        pos += (line + frame_len) as u64;
    }
    Ok(FrameOffsets::Listed(offsets))
}

/// The largest still decoded at full size, in pixels (16 MP, 48 MiB as
/// RGB). Larger photographs are shrunk while they are decoded, a row at a
/// time, so memory stays bounded whatever the file declares.
pub const MAX_STILL_PIXELS: u64 = 4096 * 4096;

fn read_png(path: &Path, at: Nanos) -> Result<Frame, ClipError> {
    read_png_within(path, at, MAX_STILL_PIXELS)
}

/// [`read_png`] with the size limit as a parameter (tests use a small one).
fn read_png_within(path: &Path, at: Nanos, max_pixels: u64) -> Result<Frame, ClipError> {
    let file = std::fs::File::open(path).map_err(|e| ClipError::Io {
        path: path.into(),
        source: e,
    })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Expand palettes and low bit depths, strip 16-bit to 8: one code path.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    // Each error says where the decoder was: the chunks before the image
    // data (IHDR, PLTE, ...), or the image data (IDAT) of a known size.
    let mut reader = decoder.read_info().map_err(|e| {
        format_err(
            path,
            format!("not a readable PNG: header (the chunks before the image data): {e}"),
        )
    })?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if u64::from(width) * u64::from(height) > max_pixels {
        return read_png_shrunk(path, &mut reader, at, max_pixels);
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format_err(path, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| {
        format_err(
            path,
            format!("not a readable PNG: image data (IDAT) of the {width}x{height} image: {e}"),
        )
    })?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width as usize, info.height as usize);
    let (layout, data) = match info.color_type {
        png::ColorType::Grayscale => (PixelLayout::Gray8, buf),
        png::ColorType::Rgb => (PixelLayout::Rgb8, buf),
        // Alpha is dropped: a camera frame has none.
        png::ColorType::GrayscaleAlpha => (
            PixelLayout::Gray8,
            buf.chunks_exact(2).map(|p| p[0]).collect(),
        ),
        png::ColorType::Rgba => (
            PixelLayout::Rgb8,
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        other => {
            return Err(format_err(
                path,
                format!("PNG color type {other:?} is not supported"),
            ));
        }
    };
    Frame::new(w, h, layout, data, at).map_err(|e| format_err(path, format!("decoded image: {e}")))
}

/// Decodes a PNG over `max_pixels` ([`MAX_STILL_PIXELS`]) row by row into a copy shrunk
/// by the smallest whole factor that brings it under the limit, each
/// output pixel the mean of the `f × f` block it covers (area averaging;
/// blocks at the right and bottom edges may be partial). Memory: the output
/// plus one row of sums.
fn read_png_shrunk<R: BufRead + Seek>(
    path: &Path,
    reader: &mut png::Reader<R>,
    at: Nanos,
    max_pixels: u64,
) -> Result<Frame, ClipError> {
    let (width, height, interlaced) = {
        let info = reader.info();
        (info.width as usize, info.height as usize, info.interlaced)
    };
    if interlaced {
        return Err(format_err(
            path,
            format!(
                "an interlaced PNG of {width}x{height} pixels: stills over {max_pixels} pixels are shrunk \
                 while decoding, which needs a non-interlaced file (re-save it without interlacing, or scale it down)"
            ),
        ));
    }
    let (color, _) = reader.output_color_type();
    let channels = color.samples();
    let (layout, keep) = match color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => (PixelLayout::Gray8, 1),
        png::ColorType::Rgb | png::ColorType::Rgba => (PixelLayout::Rgb8, 3),
        other => {
            return Err(format_err(
                path,
                format!("PNG color type {other:?} is not supported"),
            ));
        }
    };
    let mut factor = 2usize;
    while (width.div_ceil(factor) as u64) * (height.div_ceil(factor) as u64) > max_pixels {
        factor += 1;
    }
    let (out_w, out_h) = (width.div_ceil(factor), height.div_ceil(factor));
    let mut data = Vec::with_capacity(out_w * out_h * keep);
    let mut sums = vec![0u32; out_w * keep];
    let mut rows_in_block = 0usize;
    let flush = |sums: &mut [u32], rows: usize, data: &mut Vec<u8>| {
        for (ox, px) in sums.chunks_exact_mut(keep).enumerate() {
            let cols = (width - ox * factor).min(factor);
            let n = (cols * rows) as u32;
            data.extend(px.iter().map(|s| ((s + n / 2) / n) as u8));
            px.fill(0);
        }
    };
    for y in 0..height {
        let row = reader
            .next_row()
            .map_err(|e| {
                format_err(
                    path,
                    format!("not a readable PNG: image data (IDAT), row {y}: {e}"),
                )
            })?
            .ok_or_else(|| format_err(path, format!("PNG ends at row {y} of {height}")))?;
        for (x, px) in row.data().chunks_exact(channels).take(width).enumerate() {
            let at = (x / factor) * keep;
            for (s, v) in sums[at..at + keep].iter_mut().zip(px) {
                *s += u32::from(*v);
            }
        }
        rows_in_block += 1;
        if rows_in_block == factor || y + 1 == height {
            flush(&mut sums, rows_in_block, &mut data);
            rows_in_block = 0;
        }
    }
    tracing::info!(
        file = %path.display(),
        width,
        height,
        factor,
        "a large still image, shrunk while decoding"
    );
    Frame::new(out_w, out_h, layout, data, at)
        .map_err(|e| format_err(path, format!("decoded image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a `width`×`height` PNG whose pixel (x, y) is `pixel(x, y)`.
    fn write_png(
        path: &Path,
        width: u32,
        height: u32,
        color: png::ColorType,
        pixel: impl Fn(u32, u32) -> Vec<u8>,
    ) {
        let file = std::io::BufWriter::new(File::create(path).unwrap());
        let mut encoder = png::Encoder::new(file, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .flat_map(|(x, y)| pixel(x, y))
            .collect();
        writer.write_image_data(&data).unwrap();
    }

    #[test]
    fn png_errors_say_where_the_decoder_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.png");
        // Noise, so that the image data does not deflate to a few bytes.
        write_png(&whole, 64, 48, png::ColorType::Rgb, |x, y| {
            let v = (x * 7919 + y * 104_729) % 251;
            vec![v as u8, (v * 3 % 251) as u8, (v * 5 % 251) as u8]
        });
        let bytes = std::fs::read(&whole).unwrap();
        let message = |name: &str, data: &[u8], max_pixels: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, data).unwrap();
            read_png_within(&path, 0, max_pixels)
                .unwrap_err()
                .to_string()
        };
        // Cut in the IHDR chunk: the header.
        let e = message("header.png", &bytes[..20], u64::MAX);
        assert!(
            e.contains("header.png") && e.contains("header (the chunks"),
            "{e}"
        );
        // Cut halfway through the image data, decoded whole and row by row.
        let half = &bytes[..bytes.len() / 2];
        let e = message("data.png", half, u64::MAX);
        assert!(e.contains("image data (IDAT) of the 64x48 image"), "{e}");
        let e = message("rows.png", half, 100);
        assert!(e.contains("image data (IDAT), row "), "{e}");
    }

    #[test]
    fn a_large_photograph_is_shrunk_while_decoding_not_loaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        // The limit at 1000 pixels here (16 MP in use; the engine's
        // faces_e2e test decodes a real 10000 x 10000 file): 100 x 100 RGB
        // is shrunk by 4 (3 leaves 34 x 34 = 1156 pixels).
        let big = dir.path().join("big.png");
        write_png(&big, 100, 100, png::ColorType::Rgb, |x, _| {
            vec![(x % 4 * 60) as u8, 7, 200]
        });
        let frame = read_png_within(&big, 0, 1000).unwrap();
        assert_eq!((frame.width, frame.height), (25, 25));
        assert_eq!(frame.layout, PixelLayout::Rgb8);
        // Columns 0, 60, 120, 180 repeat: each 4-wide block averages to 90.
        assert_eq!(&frame.data[..3], &[90, 7, 200]);
        // 102 wide: shrunk by 4 to 26 columns, the last holding two source
        // columns (x = 100, 101: 0 and 60).
        let edge = dir.path().join("edge.png");
        write_png(&edge, 102, 10, png::ColorType::Rgb, |x, _| {
            vec![(x % 4 * 60) as u8, 0, 0]
        });
        let frame = read_png_within(&edge, 0, 100).unwrap();
        assert_eq!((frame.width, frame.height), (26, 3));
        assert_eq!(frame.data[25 * 3], 30);
        // Gray with alpha, 50 x 40: shrunk by 2, blocks averaged.
        let gray = dir.path().join("gray.png");
        write_png(&gray, 50, 40, png::ColorType::GrayscaleAlpha, |x, y| {
            vec![((x % 2) * 100 + (y % 2) * 50) as u8, 255]
        });
        let frame = read_png_within(&gray, 0, 1000).unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.layout),
            (25, 20, PixelLayout::Gray8)
        );
        // (0 + 100 + 50 + 150) / 4 = 75 in every block.
        assert!(frame.data.iter().all(|v| *v == 75));
        // Small stills are decoded as they are.
        let one = dir.path().join("one.png");
        write_png(&one, 1, 1, png::ColorType::Rgb, |_, _| vec![1, 2, 3]);
        let frame = read_png(&one, 0).unwrap();
        assert_eq!(
            (frame.width, frame.height, &frame.data[..]),
            (1, 1, &[1u8, 2, 3][..])
        );
    }

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/sample")
            .join(name)
    }

    fn reader(clip: Clip) -> ClipReader {
        ClipReader::new(Arc::new(clip)).expect("reader")
    }

    fn at(reader: &mut ClipReader, ms: u64, looped: bool) -> Option<Frame> {
        reader
            .frame_at(Duration::from_millis(ms), looped)
            .expect("readable")
    }

    #[test]
    fn reads_the_bundled_clip_and_still() {
        let clip = Clip::open(&sample("face.y4m"), 10.0).unwrap();
        assert_eq!(clip.frame_count(), 30);
        assert_eq!(clip.duration(), Some(Duration::from_secs(3)));
        let mut clip = reader(clip);
        let f = at(&mut clip, 1550, false).unwrap();
        assert_eq!((f.width, f.height, f.layout), (96, 96, PixelLayout::Gray8));
        assert_eq!(f.captured_at, 1_500_000_000);
        assert_eq!(f.range, YuvRange::Limited);
        assert!(at(&mut clip, 4000, false).is_none());
        // 4 s into a looped 3 s clip is its frame at 1 s.
        let looped = at(&mut clip, 4000, true).unwrap();
        assert_eq!(looped.captured_at, 1_000_000_000);
        // Frame 15 of the clip is the still image.
        let mut still = reader(Clip::open(&sample("face.png"), 10.0).unwrap());
        let s = at(&mut still, 100_000, false).unwrap();
        assert_eq!(s.data, f.data);
    }

    /// A gray 2x2 Y4M clip with `frames` frames, each filled with its
    /// index; `frame_header` is each frame's line (without `\n`).
    fn tiny_clip(dir: &Path, header: &str, frames: u8, frame_header: &str) -> PathBuf {
        let mut b = format!("{header}\n").into_bytes();
        for k in 0..frames {
            b.extend_from_slice(frame_header.as_bytes());
            b.push(b'\n');
            b.extend_from_slice(&[k; 4]);
        }
        let p = dir.join("tiny.y4m");
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn frames_are_read_in_any_order_with_or_without_frame_parameters() {
        let dir = tempfile::tempdir().unwrap();
        for frame_header in ["FRAME", "FRAME Ip XCOMMENT=x"] {
            let p = tiny_clip(dir.path(), "YUV4MPEG2 W2 H2 F4:1 Cmono", 5, frame_header);
            let mut clip = reader(Clip::open(&p, 10.0).unwrap());
            assert_eq!(clip.clip().frame_count(), 5);
            for k in [0u64, 1, 4, 2, 2, 3, 0] {
                let f = clip.frame(k).unwrap().unwrap();
                assert_eq!(f.data[..], [k as u8; 4], "{frame_header}: frame {k}");
                assert_eq!(f.captured_at, k * 250_000_000);
            }
            assert!(clip.frame(5).unwrap().is_none());
            // 1.3 s into a 1.25 s clip, looped: frame 0 again.
            assert_eq!(at(&mut clip, 1300, true).unwrap().data[0], 0);
        }
    }

    #[test]
    fn frames_are_read_from_disk_as_they_play() {
        let dir = tempfile::tempdir().unwrap();
        let p = tiny_clip(dir.path(), "YUV4MPEG2 W2 H2 F4:1 Cmono", 3, "FRAME");
        let mut clip = reader(Clip::open(&p, 10.0).unwrap());
        assert_eq!(clip.frame(0).unwrap().unwrap().data[0], 0);
        // Rewrite frame 2's pixels after opening: the reader sees them,
        // so it holds no copy of the file.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&[9; 4]);
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(clip.frame(2).unwrap().unwrap().data[..], [9; 4]);
    }

    #[test]
    fn full_range_is_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("full.y4m");
        // 4:2:0 at 2x2 is 4 bytes of luma, 1 of U, 1 of V.
        let mut b = b"YUV4MPEG2 W2 H2 F25:1 C420jpeg XCOLORRANGE=FULL\nFRAME\n".to_vec();
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        std::fs::write(&p, b).unwrap();
        let f = reader(Clip::open(&p, 10.0).unwrap())
            .frame(0)
            .unwrap()
            .unwrap();
        assert_eq!((f.layout, f.range), (PixelLayout::Yuv420p, YuvRange::Full));
        assert_eq!(f.data[..], [1, 2, 3, 4, 5, 6]);
    }

    fn open_err(header: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = tiny_clip(dir.path(), header, 1, "FRAME");
        let e = Clip::open(&p, 10.0).unwrap_err();
        assert!(matches!(e, ClipError::Format { .. }), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("tiny.y4m"), "{m}");
        m
    }

    #[test]
    fn absurd_sizes_are_refused_naming_the_field() {
        let m = open_err("YUV4MPEG2 W4294967296 H4294967296 F10:1 Cmono");
        assert!(
            m.contains("header W `4294967296`: expected a width of 1 to 16384"),
            "{m}"
        );
        let m = open_err("YUV4MPEG2 W2 H99999999999999999999999 F10:1 Cmono");
        assert!(m.contains("header H `99999999999999999999999`"), "{m}");
        let m = open_err("YUV4MPEG2 W0 H2 F10:1 Cmono");
        assert!(m.contains("header W `0`"), "{m}");
        let m = open_err("YUV4MPEG2 H2 F10:1 Cmono");
        assert!(m.contains("header lacks W"), "{m}");
    }

    #[test]
    fn absurd_frame_rates_are_refused_naming_the_field() {
        let m = open_err("YUV4MPEG2 W2 H2 F1:0 Cmono");
        assert!(
            m.contains("header F `1:0`: expected a frame rate like 30:1"),
            "{m}"
        );
        let m = open_err("YUV4MPEG2 W2 H2 F0:1 Cmono");
        assert!(m.contains("header F `0:1`"), "{m}");
        let m = open_err("YUV4MPEG2 W2 H2 F1:18446744073709551615 Cmono");
        assert!(m.contains("slower than a frame per hour"), "{m}");
        let m = open_err("YUV4MPEG2 W2 H2 F18446744073709551615:1 Cmono");
        assert!(m.contains("faster than a frame per nanosecond"), "{m}");
        let m = open_err("YUV4MPEG2 W2 H2 F1:99999999999999999999999 Cmono");
        assert!(m.contains("expected `YUV4MPEG2 W<width>"), "{m}");
    }

    #[test]
    fn absurd_folder_rates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(sample("face.png"), dir.path().join("0001.png")).unwrap();
        for (fps, expected) in [
            (1e-20, "slower than a frame per hour"),
            (0.0, "positive, finite"),
            (-1.0, "positive, finite"),
            (f64::NAN, "positive, finite"),
            (f64::INFINITY, "positive, finite"),
            (1e300, "faster than a frame per nanosecond"),
        ] {
            let e = Clip::open(dir.path(), fps).unwrap_err().to_string();
            assert!(
                e.contains("folder frame rate") && e.contains(expected),
                "{fps}: {e}"
            );
        }
        let clip = Clip::open(dir.path(), 1.0 / 3600.0).unwrap();
        assert_eq!(clip.duration(), Some(MAX_FRAME_PERIOD));
    }

    #[test]
    fn a_large_declared_frame_needs_its_bytes_before_any_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.y4m");
        std::fs::write(&p, b"YUV4MPEG2 W4294 H5555 F10:1 C420paldv\nFRAME\n").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(
            e.contains("big.y4m") && e.contains("declares 4294x5555"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.y4m");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 C444\nFRAME\n").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("x.y4m") && e.contains("C `444`"), "{e}");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 C411\nFRAME\n").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("C `411`"), "{e}");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 Cmono\nFRAME\n0123").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("frame 0 is truncated"), "{e}");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 Cmono\n").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
        std::fs::write(&p, b"RIFF....").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("missing `YUV4MPEG2` signature"), "{e}");
        let e = Clip::open(&dir.path().join("clip.mp4"), 10.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip.mp4") && e.contains(".y4m"), "{e}");
    }
}
