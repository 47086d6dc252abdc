//! Source specs as users write them (`--video`, `--audio`, config files).
//! (Interim: files only; live devices land with the capture backends.)

use std::path::Path;

use crate::playback::{VideoFile, WavFile};
use crate::source::{AudioSource, CaptureError, VideoSource};

/// Camera settings.
#[derive(Debug, Clone, Default)]
pub struct VideoOptions {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub looped: bool,
    pub dir_fps: f64,
}

/// Microphone settings.
#[derive(Debug, Clone, Default)]
pub struct AudioOptions {
    pub looped: bool,
}

/// Whether `spec` names a live device rather than a file.
pub fn is_live(spec: &str) -> bool {
    ["v4l:", "gst:", "mic:"].iter().any(|p| spec.starts_with(p))
}

/// Opens a video spec.
///
/// # Errors
/// [`CaptureError`] naming the spec.
pub fn open_video(spec: &str, opts: &VideoOptions) -> Result<Box<dyn VideoSource>, CaptureError> {
    if is_live(spec) {
        return Err(CaptureError::NotBuilt {
            source_name: spec.into(),
            feature: "v4l",
        });
    }
    VideoFile::open(Path::new(spec), opts.dir_fps, opts.looped)
        .map(|f| Box::new(f) as Box<dyn VideoSource>)
        .map_err(|e| CaptureError::Config {
            source_name: spec.into(),
            message: e.to_string(),
        })
}

/// Opens an audio spec.
///
/// # Errors
/// [`CaptureError`] naming the spec.
pub fn open_audio(spec: &str, opts: &AudioOptions) -> Result<Box<dyn AudioSource>, CaptureError> {
    if is_live(spec) {
        return Err(CaptureError::NotBuilt {
            source_name: spec.into(),
            feature: "mic",
        });
    }
    WavFile::open(Path::new(spec), opts.looped)
        .map(|f| Box::new(f) as Box<dyn AudioSource>)
        .map_err(|e| CaptureError::Config {
            source_name: spec.into(),
            message: e.to_string(),
        })
}
