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
use crate::clip::{Clip, ClipError};
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

fn nanos(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

/// Video from a file ([`Clip`]): a clip plays its frames at their
/// timestamps; a still image repeats at `still_fps`.
pub struct VideoFile {
    clip: Arc<Clip>,
    looped: bool,
    still_fps: f64,
}

impl VideoFile {
    /// Decodes `path` (see [`Clip::open`]); a folder of frames plays
    /// at `dir_fps`.
    ///
    /// # Errors
    /// [`ClipError`] naming the file and what was wrong.
    pub fn open(path: &Path, dir_fps: f64, looped: bool) -> Result<Self, ClipError> {
        Ok(VideoFile {
            clip: Arc::new(Clip::open(path, dir_fps)?),
            looped,
            still_fps: 10.0,
        })
    }

    /// The decoded clip.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }
}

impl VideoSource for VideoFile {
    fn name(&self) -> String {
        format!("file:{}", self.clip.path().display())
    }

    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
        let origin = clock.now();
        Ok(Box::new(VideoFileStream {
            clip: Arc::clone(&self.clip),
            looped: self.looped,
            still_period: Duration::from_secs_f64(1.0 / self.still_fps),
            clock,
            origin,
            index: 0,
        }))
    }
}

struct VideoFileStream {
    clip: Arc<Clip>,
    looped: bool,
    still_period: Duration,
    clock: ClockHandle,
    origin: Nanos,
    index: u64,
}

impl VideoStream for VideoFileStream {
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
        let frames = self.clip.frames();
        let (frame, at) = match self.clip.duration() {
            None => (&frames[0], self.still_period * self.index as u32),
            Some(length) => {
                let n = frames.len() as u64;
                if !self.looped && self.index >= n {
                    return Ok(None);
                }
                let lap = (self.index / n) as u32;
                let f = &frames[(self.index % n) as usize];
                (f, length * lap + Duration::from_nanos(f.captured_at))
            }
        };
        let stamp = self.origin + nanos(at);
        if !wait_for(&self.clock, stamp, stop) {
            return Ok(None);
        }
        self.index += 1;
        // Shares the clip's bytes: replaying copies no pixels.
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
                let stamp = lap_origin + (end as u64 * 1_000_000_000) / rate;
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
            lap_origin += (len as u64 * 1_000_000_000) / rate;
        }
    }
}
