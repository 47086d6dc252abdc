//! Replay sources: recorded files played through the same
//! [`VideoSource`] / [`AudioSource`] seams as live devices, so every test
//! and benchmark drives the real pipeline.
//!
//! Items are stamped `origin + media time`, where `origin` is the clock's
//! time at open, and are released only when the clock reaches their stamp.
//! On the [`RealClock`](crate::clock::RealClock) that is real-time pacing;
//! on a [`VirtualClock`](crate::clock::VirtualClock) it is "as fast as
//! possible" while keeping the exact timing of a real-time run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use emogate_media::{Frame, Nanos, StopFlag};

use crate::audio::{AudioError, read_wav};
use crate::clip::{Clip, ClipError, ClipReader, frame_time};
use crate::ring::AudioProducer;
use crate::source::{
    AudioSource, AudioStream, CaptureError, ClockHandle, VideoSource, VideoStream,
};

/// How long one blocking wait on the clock lasts before the stop flag is
/// looked at again.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// Waits on `clock` until `t`, however long that takes, unless stopped.
fn wait_for(clock: &ClockHandle, t: Nanos, stop: &StopFlag) -> bool {
    loop {
        if clock.wait_until(t, stop, WAIT_SLICE) {
            return true;
        }
        if stop.is_raised() {
            return false;
        }
    }
}

/// How often a still image is delivered again.
const STILL_PERIOD: Duration = Duration::from_millis(100);

/// Video from a file ([`Clip`]): a clip plays its frames at their
/// timestamps; a still image repeats ten times a second.
pub struct VideoFile {
    clip: Arc<Clip>,
    looped: bool,
}

impl VideoFile {
    /// Opens `path` (see [`Clip::open`]); a folder of frames plays at
    /// `dir_fps`.
    ///
    /// # Errors
    /// [`ClipError`] naming the file and what was wrong.
    pub fn open(path: &Path, dir_fps: f64, looped: bool) -> Result<Self, ClipError> {
        Ok(VideoFile {
            clip: Arc::new(Clip::open(path, dir_fps)?),
            looped,
        })
    }

    /// The opened clip.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }
}

impl VideoSource for VideoFile {
    fn name(&self) -> String {
        format!("file:{}", self.clip.path().display())
    }

    /// # Errors
    /// [`CaptureError::Open`] when the file cannot be opened again (moved
    /// or unmounted since [`VideoFile::open`]).
    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
        let reader = ClipReader::new(Arc::clone(&self.clip)).map_err(|e| CaptureError::Open {
            source_name: self.name(),
            message: e.to_string(),
        })?;
        let origin = clock.now();
        Ok(Box::new(VideoFileStream {
            reader,
            looped: self.looped,
            clock,
            origin,
            index: 0,
        }))
    }
}

struct VideoFileStream {
    reader: ClipReader,
    looped: bool,
    clock: ClockHandle,
    origin: Nanos,
    index: u64,
}

impl VideoStream for VideoFileStream {
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
        let clip = Arc::clone(self.reader.clip());
        // Frame `index` of the replay is frame `k` of the clip, at
        // `index` periods into the replay (laps included).
        let (k, at) = match clip.period() {
            None => (0, frame_time(STILL_PERIOD, self.index)),
            Some(period) => {
                let n = clip.frame_count();
                if !self.looped && self.index >= n {
                    return Ok(None);
                }
                (self.index % n.max(1), frame_time(period, self.index))
            }
        };
        let frame = match self.reader.frame(k) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) => {
                let (source_name, message) =
                    (format!("file:{}", clip.path().display()), e.to_string());
                // A file that cannot be read may come back (a remounted
                // disk); one whose contents broke will not.
                return Err(match e {
                    ClipError::Io { .. } => CaptureError::Stream {
                        source_name,
                        message,
                    },
                    ClipError::Format { .. } => CaptureError::Config {
                        source_name,
                        message,
                    },
                });
            }
        };
        let stamp = self.origin.saturating_add(at);
        if !wait_for(&self.clock, stamp, stop) {
            return Ok(None);
        }
        self.index += 1;
        // Shares the frame's bytes: delivering copies no pixels.
        Ok(Some(frame.at(stamp)))
    }
}

/// Audio from a WAV file, mixed to mono, pushed in 10 ms periods like a
/// sound card.
pub struct WavFile {
    samples: Arc<Vec<f32>>,
    sample_rate: u32,
    looped: bool,
    path: PathBuf,
}

impl WavFile {
    /// Reads and downmixes `path`.
    ///
    /// # Errors
    /// [`AudioError`] naming the file and the field.
    pub fn open(path: &Path, looped: bool) -> Result<Self, AudioError> {
        let wav = read_wav(path)?;
        if wav.samples.is_empty() {
            return Err(AudioError::Wav {
                path: path.to_path_buf(),
                message: "holds no samples".into(),
            });
        }
        Ok(WavFile {
            samples: Arc::new(wav.to_mono()),
            sample_rate: wav.sample_rate,
            looped,
            path: path.to_path_buf(),
        })
    }

    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

impl AudioSource for WavFile {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn sample_rate_hint(&self) -> Option<u32> {
        Some(self.sample_rate)
    }

    fn open(
        &mut self,
        clock: ClockHandle,
        ring: AudioProducer,
    ) -> Result<Box<dyn AudioStream>, CaptureError> {
        let origin = clock.now();
        Ok(Box::new(WavStream {
            samples: Arc::clone(&self.samples),
            sample_rate: self.sample_rate,
            looped: self.looped,
            clock,
            origin,
            ring,
        }))
    }
}

/// The time of sample `n` at `rate` Hz, in ns (`n * 1e9` overflows `u64`
/// past 1.8e10 samples: 13 days at 16 kHz, a looped clip's origin sooner).
fn sample_time(n: usize, rate: u64) -> u64 {
    u64::try_from(n as u128 * 1_000_000_000 / u128::from(rate.max(1))).unwrap_or(u64::MAX)
}

struct WavStream {
    samples: Arc<Vec<f32>>,
    sample_rate: u32,
    looped: bool,
    clock: ClockHandle,
    origin: Nanos,
    ring: AudioProducer,
}

impl AudioStream for WavStream {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn wait(&mut self, stop: &StopFlag) -> Result<(), CaptureError> {
        let rate = u64::from(self.sample_rate);
        let period = (rate / 100).max(1) as usize;
        let len = self.samples.len();
        let mut lap_origin = self.origin;
        loop {
            let mut at = 0usize;
            while at < len {
                let end = (at + period).min(len);
                let stamp = lap_origin.saturating_add(sample_time(end, rate));
                if !wait_for(&self.clock, stamp, stop) {
                    return Ok(());
                }
                let mut chunk = &self.samples[at..end];
                if self.clock.is_real_time() {
                    // Like a sound card: what does not fit is lost and counted.
                    self.ring.push(chunk, stamp);
                    at = end;
                    continue;
                }
                // A virtual-time replay has no deadline: it waits for room
                // and loses nothing.
                loop {
                    let stored = self.ring.push_available(chunk, stamp);
                    if stored == chunk.len() {
                        break;
                    }
                    chunk = &chunk[stored..];
                    if stop.is_raised() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                at = end;
            }
            if !self.looped {
                return Ok(());
            }
            lap_origin = lap_origin.saturating_add(sample_time(len, rate));
        }
    }
}
