//! Source specs: the one string a user writes to say where video or audio
//! comes from.
//!
//! | spec | video | audio |
//! |---|---|---|
//! | `v4l:0`, `v4l:/dev/video2`, `v4l:C920` | V4L2 camera by index, node or name (feature `v4l`) | — |
//! | `gst:PIPELINE` | `gst::GstVideoSource` (feature `gstreamer`) | `gst::GstAudioSource` |
//! | `mic:NAME`, `mic:default` | — | [`crate::mic::MicSource`] |
//! | `PATH`, `file:PATH` | `.y4m` clip, `.png` still or a folder of frames | `.wav` |
//!
//! Parsing ([`parse_video`], [`parse_audio`]) is separate from opening
//! ([`open_video`], [`open_audio`]) so the CLI can validate a spec, and
//! report a missing cargo feature, before any device is touched.

use std::path::{Path, PathBuf};

use crate::device_match::CameraSelector;
use crate::file_source::{VideoFile, WavFile};
use crate::source::{AudioSource, CaptureError, VideoSource};

/// A parsed video spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSpec {
    V4l(CameraSelector),
    Gst(String),
    File(PathBuf),
}

/// A parsed audio spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSpec {
    Mic(String),
    Gst(String),
    File(PathBuf),
}

/// Settings for [`open_video`]. Cameras use the size and rate as a
/// request (the nearest mode wins); files use `looped` and `dir_fps`.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoOptions {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Replay a file again from the start when it ends.
    pub looped: bool,
    /// Frame rate of a folder of still frames.
    pub dir_fps: f64,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            width: 640,
            height: 480,
            fps: 30.0,
            looped: false,
            dir_fps: 10.0,
        }
    }
}

/// Settings for [`open_audio`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudioOptions {
    /// A preferred microphone rate; the device default if it cannot.
    pub sample_rate: Option<u32>,
    /// Replay a file again from the start when it ends.
    pub looped: bool,
}

const VIDEO_FORMS: &str =
    "v4l:INDEX, v4l:NAME, gst:PIPELINE, or a .y4m clip, .png image or folder of frames";
const AUDIO_FORMS: &str = "mic:NAME, mic:default, gst:PIPELINE, or a .wav file";

fn config(spec: &str, message: String) -> CaptureError {
    CaptureError::Config {
        source_name: spec.to_string(),
        message,
    }
}

/// Splits `kind:rest` when `kind` is a plausible scheme (a letter, then
/// letters or digits), so
/// `./a:b.wav` stays a path.
fn scheme(spec: &str) -> Option<(&str, &str)> {
    let (kind, rest) = spec.split_once(':')?;
    (kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric()))
    .then_some((kind, rest))
}

fn non_empty<'a>(spec: &str, rest: &'a str, what: &str) -> Result<&'a str, CaptureError> {
    let rest = rest.trim();
    if rest.is_empty() {
        Err(config(spec, format!("is missing {what}")))
    } else {
        Ok(rest)
    }
}

/// Parses a video spec.
///
/// # Errors
/// [`CaptureError::Config`] naming the spec and the accepted forms when it
/// is empty, names an audio source (`mic:`), has an unknown `kind:` prefix,
/// or names a file that is not a `.y4m`, `.png` or folder.
pub fn parse_video(spec: &str) -> Result<VideoSpec, CaptureError> {
    if spec.trim().is_empty() {
        return Err(config(
            spec,
            format!("empty video source; expected {VIDEO_FORMS}"),
        ));
    }
    match scheme(spec) {
        Some(("v4l", rest)) => {
            let rest = non_empty(spec, rest, "a camera index or name after v4l:")?;
            let index = rest
                .parse::<usize>()
                .ok()
                .or_else(|| rest.strip_prefix("/dev/video")?.parse().ok());
            Ok(VideoSpec::V4l(match index {
                Some(i) => CameraSelector::Index(i),
                None => CameraSelector::Name(rest.to_string()),
            }))
        }
        Some(("gst", rest)) => Ok(VideoSpec::Gst(
            non_empty(spec, rest, "a pipeline after gst:")?.to_string(),
        )),
        Some(("mic", _)) => Err(config(
            spec,
            format!("is an audio source, given for video; expected {VIDEO_FORMS}"),
        )),
        Some(("file", rest)) => video_file(
            spec,
            Path::new(non_empty(spec, rest, "a path after file:")?),
        ),
        Some((kind, _)) if !Path::new(spec).exists() => Err(config(
            spec,
            format!("unknown source kind \"{kind}:\"; expected {VIDEO_FORMS}"),
        )),
        _ => video_file(spec, Path::new(spec)),
    }
}

fn video_file(spec: &str, path: &Path) -> Result<VideoSpec, CaptureError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if path.is_dir() || matches!(ext.as_deref(), Some("y4m" | "png")) {
        Ok(VideoSpec::File(path.to_path_buf()))
    } else {
        Err(config(
            spec,
            format!("is not a video file this build replays; expected {VIDEO_FORMS}"),
        ))
    }
}

/// Parses an audio spec.
///
/// # Errors
/// [`CaptureError::Config`] naming the spec and the accepted forms when it
/// is empty, names a camera (`v4l:`), has an unknown `kind:` prefix, or
/// names a file that is not `.wav`.
pub fn parse_audio(spec: &str) -> Result<AudioSpec, CaptureError> {
    if spec.trim().is_empty() {
        return Err(config(
            spec,
            format!("empty audio source; expected {AUDIO_FORMS}"),
        ));
    }
    match scheme(spec) {
        Some(("mic", rest)) => Ok(AudioSpec::Mic(
            non_empty(spec, rest, "a device name (or \"default\") after mic:")?.to_string(),
        )),
        Some(("gst", rest)) => Ok(AudioSpec::Gst(
            non_empty(spec, rest, "a pipeline after gst:")?.to_string(),
        )),
        Some(("v4l", _)) => Err(config(
            spec,
            format!("is a camera, given for audio; expected {AUDIO_FORMS}"),
        )),
        Some(("file", rest)) => audio_file(
            spec,
            Path::new(non_empty(spec, rest, "a path after file:")?),
        ),
        Some((kind, _)) if !Path::new(spec).exists() => Err(config(
            spec,
            format!("unknown source kind \"{kind}:\"; expected {AUDIO_FORMS}"),
        )),
        _ => audio_file(spec, Path::new(spec)),
    }
}

fn audio_file(spec: &str, path: &Path) -> Result<AudioSpec, CaptureError> {
    let is_wav = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        Ok(AudioSpec::File(path.to_path_buf()))
    } else {
        Err(config(
            spec,
            format!("is not an audio file this build replays; expected {AUDIO_FORMS}"),
        ))
    }
}

/// Opens the video source `spec` names (see the module docs).
///
/// Cameras and pipelines are only described here; the device is touched
/// at [`VideoSource::open`], on the supervisor's thread. Files are decoded
/// now, so a bad file fails at once.
///
/// # Errors
/// * [`CaptureError::Config`] as [`parse_video`], or when a file cannot
///   be read or decoded (naming the file and what was wrong);
/// * [`CaptureError::NotBuilt`] for `v4l:` without the `v4l` feature or
///   `gst:` without the `gstreamer` feature.
pub fn open_video(spec: &str, opts: &VideoOptions) -> Result<Box<dyn VideoSource>, CaptureError> {
    match parse_video(spec)? {
        VideoSpec::File(path) => VideoFile::open(&path, opts.dir_fps, opts.looped)
            .map(|f| Box::new(f) as Box<dyn VideoSource>)
            .map_err(|e| config(spec, e.to_string())),
        VideoSpec::V4l(selector) => open_camera(spec, selector, opts),
        VideoSpec::Gst(pipeline) => open_gst_video(spec, &pipeline),
    }
}

#[cfg(feature = "v4l")]
fn open_camera(
    _spec: &str,
    selector: CameraSelector,
    opts: &VideoOptions,
) -> Result<Box<dyn VideoSource>, CaptureError> {
    Ok(Box::new(crate::camera::CameraSource::new(
        selector,
        opts.width,
        opts.height,
        opts.fps,
    )))
}

#[cfg(not(feature = "v4l"))]
fn open_camera(
    spec: &str,
    _selector: CameraSelector,
    _opts: &VideoOptions,
) -> Result<Box<dyn VideoSource>, CaptureError> {
    Err(CaptureError::NotBuilt {
        source_name: spec.to_string(),
        feature: "v4l",
    })
}

#[cfg(feature = "gstreamer")]
fn open_gst_video(_spec: &str, pipeline: &str) -> Result<Box<dyn VideoSource>, CaptureError> {
    Ok(Box::new(crate::gst::GstVideoSource::new(pipeline)))
}

#[cfg(not(feature = "gstreamer"))]
fn open_gst_video(spec: &str, _pipeline: &str) -> Result<Box<dyn VideoSource>, CaptureError> {
    Err(CaptureError::NotBuilt {
        source_name: spec.to_string(),
        feature: "gstreamer",
    })
}

/// Opens the audio source `spec` names (see the module docs). Devices and
/// pipelines are touched at [`AudioSource::open`]; WAV files are read now.
///
/// # Errors
/// * [`CaptureError::Config`] as [`parse_audio`], or when a WAV file
///   cannot be read or decoded;
/// * [`CaptureError::NotBuilt`] for `gst:` without the `gstreamer` feature.
pub fn open_audio(spec: &str, opts: &AudioOptions) -> Result<Box<dyn AudioSource>, CaptureError> {
    match parse_audio(spec)? {
        AudioSpec::File(path) => WavFile::open(&path, opts.looped)
            .map(|f| Box::new(f) as Box<dyn AudioSource>)
            .map_err(|e| config(spec, e.to_string())),
        #[cfg(feature = "mic")]
        AudioSpec::Mic(name) => Ok(Box::new(
            crate::mic::MicSource::new(&name).with_sample_rate(opts.sample_rate),
        )),
        #[cfg(not(feature = "mic"))]
        AudioSpec::Mic(_) => Err(CaptureError::NotBuilt {
            source_name: spec.to_string(),
            feature: "mic",
        }),
        AudioSpec::Gst(pipeline) => open_gst_audio(spec, &pipeline),
    }
}

#[cfg(feature = "gstreamer")]
fn open_gst_audio(_spec: &str, pipeline: &str) -> Result<Box<dyn AudioSource>, CaptureError> {
    Ok(Box::new(crate::gst::GstAudioSource::new(pipeline)))
}

#[cfg(not(feature = "gstreamer"))]
fn open_gst_audio(spec: &str, _pipeline: &str) -> Result<Box<dyn AudioSource>, CaptureError> {
    Err(CaptureError::NotBuilt {
        source_name: spec.to_string(),
        feature: "gstreamer",
    })
}

/// Whether `spec` names a live device or pipeline (`v4l:`, `gst:`,
/// `mic:`) rather than a file: live sources cannot be replayed faster
/// than real time, and their specs are not paths.
pub fn is_live(spec: &str) -> bool {
    ["v4l:", "gst:", "mic:"]
        .iter()
        .any(|prefix| spec.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_specs_parse() {
        use CameraSelector::*;
        assert_eq!(parse_video("v4l:0").unwrap(), VideoSpec::V4l(Index(0)));
        assert_eq!(
            parse_video("v4l:/dev/video2").unwrap(),
            VideoSpec::V4l(Index(2))
        );
        assert_eq!(
            parse_video("v4l:HD Pro Webcam").unwrap(),
            VideoSpec::V4l(Name("HD Pro Webcam".into()))
        );
        assert_eq!(
            parse_video("gst:videotestsrc ! appsink").unwrap(),
            VideoSpec::Gst("videotestsrc ! appsink".into())
        );
        assert_eq!(
            parse_video("clip.Y4M").unwrap(),
            VideoSpec::File("clip.Y4M".into())
        );
        assert_eq!(
            parse_video("file:face.png").unwrap(),
            VideoSpec::File("face.png".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(parse_video(d).unwrap(), VideoSpec::File(d.into()));
    }

    #[test]
    fn audio_specs_parse() {
        assert_eq!(
            parse_audio("mic:default").unwrap(),
            AudioSpec::Mic("default".into())
        );
        assert_eq!(
            parse_audio("mic:hw:CARD=C920,DEV=0").unwrap(),
            AudioSpec::Mic("hw:CARD=C920,DEV=0".into())
        );
        assert_eq!(
            parse_audio("speech.WAV").unwrap(),
            AudioSpec::File("speech.WAV".into())
        );
        assert_eq!(
            parse_audio("gst:audiotestsrc ! appsink").unwrap(),
            AudioSpec::Gst("audiotestsrc ! appsink".into())
        );
    }

    fn config_message(e: CaptureError) -> String {
        assert!(matches!(e, CaptureError::Config { .. }), "{e:?}");
        e.to_string()
    }

    #[test]
    fn bad_specs_name_themselves_and_the_expected_forms() {
        let m = config_message(parse_video("rtsp://cam/stream").unwrap_err());
        assert!(
            m.starts_with("rtsp://cam/stream: unknown source kind \"rtsp:\""),
            "{m}"
        );
        assert!(m.contains("v4l:INDEX"), "{m}");
        let m = config_message(parse_video("mic:default").unwrap_err());
        assert!(m.contains("audio source, given for video"), "{m}");
        let m = config_message(parse_video("v4l:").unwrap_err());
        assert!(m.contains("missing a camera index or name"), "{m}");
        let m = config_message(parse_video("clip.mp4").unwrap_err());
        assert!(m.contains("clip.mp4") && m.contains(".y4m"), "{m}");
        let m = config_message(parse_audio("v4l:0").unwrap_err());
        assert!(m.contains("camera, given for audio"), "{m}");
        let m = config_message(parse_audio("talk.mp3").unwrap_err());
        assert!(m.contains("talk.mp3") && m.contains(".wav"), "{m}");
        let m = config_message(parse_audio("").unwrap_err());
        assert!(m.contains("empty audio source"), "{m}");
    }

    #[test]
    fn missing_files_fail_at_open_naming_the_file() {
        let e = open_video("/nonexistent/clip.y4m", &VideoOptions::default())
            .err()
            .unwrap();
        let m = config_message(e);
        assert!(m.contains("/nonexistent/clip.y4m"), "{m}");
        let e = open_audio("/nonexistent/a.wav", &AudioOptions::default())
            .err()
            .unwrap();
        assert!(config_message(e).contains("/nonexistent/a.wav"));
    }

    #[test]
    fn specs_for_features_not_built_say_which_feature() {
        let v = open_video("gst:videotestsrc ! appsink", &VideoOptions::default());
        let a = open_audio("gst:audiotestsrc ! appsink", &AudioOptions::default());
        if cfg!(feature = "gstreamer") {
            assert_eq!(v.unwrap().name(), "gst:videotestsrc ! appsink");
            assert!(a.is_ok());
        } else {
            for e in [v.err().unwrap(), a.err().unwrap()] {
                assert!(
                    matches!(
                        e,
                        CaptureError::NotBuilt {
                            feature: "gstreamer",
                            ..
                        }
                    ),
                    "{e:?}"
                );
            }
        }
        let c = open_video("v4l:0", &VideoOptions::default());
        if cfg!(feature = "v4l") {
            assert_eq!(c.unwrap().name(), "v4l:0");
        } else {
            let e = c.err().unwrap();
            assert!(e.to_string().contains("--features v4l"), "{e}");
        }
    }

    #[test]
    fn files_and_microphones_open_as_sources() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        // 16-bit mono PCM, 4 samples at 16 kHz.
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36u32 + 8).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&16_000u32.to_le_bytes());
        b.extend_from_slice(&32_000u32.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0, 64, 0, 192, 0, 0]);
        std::fs::write(&wav, b).unwrap();
        let src = open_audio(wav.to_str().unwrap(), &AudioOptions::default()).unwrap();
        assert_eq!(src.sample_rate_hint(), Some(16_000));
        let mic = open_audio("mic:null", &AudioOptions::default()).unwrap();
        assert_eq!(mic.name(), "mic:null");
    }
}
