//! Video replay from files: a still image, a folder of frames, or a Y4M
//! (YUV4MPEG2) clip. Frames carry their timestamp within the clip, so the
//! engine aligns them with audio exactly as it aligns live capture.
//!
//! Y4M is what `ffmpeg -i clip.mp4 -pix_fmt gray clip.y4m` (or `yuv420p`)
//! writes: a text header, then `FRAME` + raw planes per frame. It needs no
//! codec, so replay works the same on every board.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use emogate_media::{Frame, Nanos, PixelLayout, YuvRange};

/// Errors reading a video file, naming the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

fn format_err(path: &Path, message: impl Into<String>) -> ClipError {
    ClipError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A video source replayed from disk.
#[derive(Debug, Clone)]
pub struct Clip {
    frames: Vec<Frame>,
    /// Frame period; `None` for a still image (valid at any time).
    period: Option<Duration>,
    path: PathBuf,
}

impl Clip {
    /// Opens a `.y4m` clip, a `.png` still image, or a folder of `.png`
    /// frames (sorted by name, shown at `dir_fps`).
    ///
    /// # Errors
    /// [`ClipError`] naming the file and the unsupported field.
    pub fn open(path: &Path, dir_fps: f64) -> Result<Self, ClipError> {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ClipError::Io {
                    path: path.into(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format_err(path, "folder holds no .png frames"));
            }
            if dir_fps.is_nan() || dir_fps <= 0.0 {
                return Err(format_err(
                    path,
                    format!("frame rate {dir_fps} must be positive"),
                ));
            }
            let period = Duration::from_secs_f64(1.0 / dir_fps);
            let frames: Vec<Frame> = files
                .iter()
                .enumerate()
                .map(|(i, f)| read_png(f, period * i as u32))
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
            return Ok(Clip {
                frames,
                period: Some(period),
                path: path.into(),
            });
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("y4m") => {
                let (frames, period) = read_y4m(path)?;
                Ok(Clip {
                    frames,
                    period: Some(period),
                    path: path.into(),
                })
            }
            Some("png") => Ok(Clip {
                frames: vec![read_png(path, Duration::ZERO)?],
                period: None,
                path: path.into(),
            }),
            _ => Err(format_err(
                path,
                "unsupported video file: expected a .png still image, a folder of .png frames, or a .y4m clip",
            )),
        }
    }

    /// The clip's length (`None` for a still image).
    pub fn duration(&self) -> Option<Duration> {
        self.period.map(|p| p * self.frames.len() as u32)
    }

    /// The newest frame captured at or before `t` (looping if asked).
    pub fn frame_at(&self, t: Duration, looped: bool) -> Option<&Frame> {
        let Some(period) = self.period else {
            return self.frames.first();
        };
        let mut index = (t.as_nanos() / period.as_nanos().max(1)) as usize;
        if looped {
            index %= self.frames.len();
        }
        self.frames.get(index)
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A clip offset as the frame's capture time (replay's clock starts at
/// the clip's start).
fn nanos(d: Duration) -> Nanos {
    d.as_nanos().try_into().unwrap_or(Nanos::MAX)
}

fn read_png(path: &Path, at: Duration) -> Result<Frame, ClipError> {
    let file = std::fs::File::open(path).map_err(|e| ClipError::Io {
        path: path.into(),
        source: e,
    })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Expand palettes and low bit depths, strip 16-bit to 8: one code path.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format_err(path, format!("not a readable PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format_err(path, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format_err(path, format!("not a readable PNG: {e}")))?;
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
    Frame::new(w, h, layout, data, nanos(at))
        .map_err(|e| format_err(path, format!("decoded image: {e}")))
}

/// Parses a Y4M clip: header `YUV4MPEG2 W.. H.. F num:den [C..]`, frames
/// `FRAME[ params]\n` + planes. Supports `Cmono` and the 4:2:0 variants.
fn read_y4m(path: &Path) -> Result<(Vec<Frame>, Duration), ClipError> {
    let bytes = Bytes::from(std::fs::read(path).map_err(|e| ClipError::Io {
        path: path.into(),
        source: e,
    })?);
    let header_end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format_err(path, "no Y4M header line"))?;
    let header = std::str::from_utf8(&bytes[..header_end])
        .map_err(|_| format_err(path, "header is not text"))?;
    let mut tokens = header.split(' ');
    if tokens.next() != Some("YUV4MPEG2") {
        return Err(format_err(
            path,
            "missing `YUV4MPEG2` signature; expected a Y4M file",
        ));
    }
    let (mut w, mut h, mut fps, mut layout) = (0usize, 0usize, (25u64, 1u64), PixelLayout::Yuv420p);
    let mut range = YuvRange::Limited;
    for token in tokens {
        let (key, value) = token.split_at(1.min(token.len()));
        match key {
            "W" => {
                w = value
                    .parse()
                    .map_err(|_| format_err(path, format!("header W `{value}` is not a number")))?
            }
            "H" => {
                h = value
                    .parse()
                    .map_err(|_| format_err(path, format!("header H `{value}` is not a number")))?
            }
            "F" => {
                let (n, d) = value
                    .split_once(':')
                    .and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?)))
                    .filter(|(n, d): &(u64, u64)| *n > 0 && *d > 0)
                    .ok_or_else(|| {
                        format_err(
                            path,
                            format!("header F `{value}`: expected a frame rate like 30:1"),
                        )
                    })?;
                fps = (n, d);
            }
            "C" => {
                layout = match value {
                    "mono" => PixelLayout::Gray8,
                    v if v.starts_with("420") => PixelLayout::Yuv420p,
                    other => {
                        return Err(format_err(
                            path,
                            format!(
                                "header C `{other}`: expected mono or a 4:2:0 colour space (ffmpeg -pix_fmt yuv420p)"
                            ),
                        ));
                    }
                }
            }
            // ffmpeg writes the range as an extension token.
            "X" if value.eq_ignore_ascii_case("COLORRANGE=FULL") => range = YuvRange::Full,
            _ => {}
        }
    }
    if w == 0 || h == 0 {
        return Err(format_err(path, "header lacks W and H"));
    }
    let frame_len = layout.frame_len(w, h);
    let period = Duration::from_nanos(1_000_000_000 * fps.1 / fps.0);
    let mut frames = Vec::new();
    let mut pos = header_end + 1;
    while pos < bytes.len() {
        let line_end = bytes[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| pos + i)
            .ok_or_else(|| {
                format_err(
                    path,
                    format!("frame {}: header line is cut off", frames.len()),
                )
            })?;
        if !bytes[pos..line_end].starts_with(b"FRAME") {
            return Err(format_err(
                path,
                format!("frame {}: expected `FRAME` at byte {pos}", frames.len()),
            ));
        }
        let start = line_end + 1;
        let end = start + frame_len;
        if end > bytes.len() {
            return Err(format_err(
                path,
                format!(
                    "frame {} is truncated: needs {frame_len} bytes, {} left",
                    frames.len(),
                    bytes.len() - start
                ),
            ));
        }
        // A slice of the file's bytes: frames share one buffer, no copy.
        let at = nanos(period * frames.len() as u32);
        let frame = Frame::new(w, h, layout, bytes.slice(start..end), at)
            .map_err(|e| format_err(path, format!("frame {}: {e}", frames.len())))?;
        frames.push(frame.with_range(range));
        pos = end;
    }
    if frames.is_empty() {
        return Err(format_err(path, "the clip has no frames"));
    }
    Ok((frames, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/sample")
            .join(name)
    }

    #[test]
    fn reads_the_bundled_clip_and_still() {
        let clip = Clip::open(&sample("face.y4m"), 10.0).unwrap();
        assert_eq!(clip.frames().len(), 30);
        assert_eq!(clip.duration(), Some(Duration::from_secs(3)));
        let f = clip.frame_at(Duration::from_millis(1550), false).unwrap();
        assert_eq!((f.width, f.height, f.layout), (96, 96, PixelLayout::Gray8));
        assert_eq!(f.captured_at, 1_500_000_000);
        assert!(clip.frame_at(Duration::from_secs(4), false).is_none());
        assert!(clip.frame_at(Duration::from_secs(4), true).is_some());
        // Frame 15 of the clip is the still image.
        let still = Clip::open(&sample("face.png"), 10.0).unwrap();
        let s = still.frame_at(Duration::from_secs(100), false).unwrap();
        assert_eq!(s.data, clip.frames()[15].data);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.y4m");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 C444\nFRAME\n").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("x.y4m") && e.contains("C `444`"), "{e}");
        std::fs::write(&p, b"YUV4MPEG2 W4 H4 F10:1 Cmono\nFRAME\n0123").unwrap();
        let e = Clip::open(&p, 10.0).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = Clip::open(&dir.path().join("clip.mp4"), 10.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip.mp4") && e.contains(".y4m"), "{e}");
    }
}
