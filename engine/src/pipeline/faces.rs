//! The face stage of the inference thread, for models that take face
//! crops (`"crop": {"face": …}` in the manifest): find the faces in the
//! window's frame, follow them, and choose which ones the model sees.
//!
//! The detector runs on every `detect_every`-th frame the pipeline uses
//! (one per window); in between, the tracks' boxes move by their velocity
//! ([`Tracker::faces_at`]). A track not detected for `track_timeout` is
//! lost. Appearances and losses become `face_appeared` / `face_lost`
//! messages; the chosen faces (`--faces`) each get an emotion stream of
//! their own, with smoothing state kept per track id by the caller.

use std::time::Duration;

use emogate_infer::face::track::{Track, Tracker, TrackerOptions};
use emogate_infer::face::{Face, FaceDetector, FaceError};
use emogate_media::{Frame, Nanos};

use crate::event::{BoundingBox, FaceNotice, FaceRef, FrameSize, Header, Message};

/// Which faces get an emotion stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceSelect {
    /// The largest face only.
    Largest,
    /// Every tracked face.
    All,
    /// The N largest faces.
    Count(usize),
}

impl FaceSelect {
    /// Parses `largest`, `all` or a positive count.
    ///
    /// # Errors
    /// A message naming the value and what is expected.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "largest" => Ok(FaceSelect::Largest),
            "all" => Ok(FaceSelect::All),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(FaceSelect::Count(n)),
                _ => Err(format!(
                    "--faces `{value}`: expected largest, all, or a positive number of faces"
                )),
            },
        }
    }

    fn limit(self) -> usize {
        match self {
            FaceSelect::Largest => 1,
            FaceSelect::All => usize::MAX,
            FaceSelect::Count(n) => n,
        }
    }
}

/// Settings of the face stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceSettings {
    pub select: FaceSelect,
    /// Detect on every k-th frame (at least 1); track in between.
    pub detect_every: u32,
    /// A track unseen for longer than this is lost.
    pub track_timeout: Duration,
}

impl Default for FaceSettings {
    fn default() -> Self {
        FaceSettings {
            select: FaceSelect::Largest,
            detect_every: 1,
            track_timeout: Duration::from_secs(1),
        }
    }
}

/// A face chosen for this window.
#[derive(Debug, Clone)]
pub(super) struct ChosenFace {
    pub(super) id: String,
    /// Box and keypoints at the frame's time (detected or predicted).
    pub(super) face: Face,
    pub(super) frame: FrameSize,
}

impl ChosenFace {
    pub(super) fn reference(&self) -> FaceRef {
        FaceRef {
            id: self.id.clone(),
            bbox: BoundingBox::from_ltwh(self.face.bbox),
            score: self.face.score,
            frame: self.frame,
        }
    }
}

/// What the face stage found in one window.
#[derive(Debug, Default)]
pub(super) struct WindowFaces {
    /// The faces the model runs on, largest first.
    pub(super) chosen: Vec<ChosenFace>,
    /// `face_appeared` / `face_lost` messages, in that order.
    pub(super) notices: Vec<Message>,
    /// Ids of the tracks lost in this window (their state can go).
    pub(super) lost: Vec<String>,
    /// Time spent detecting (zero when the tracker predicted).
    pub(super) detect: Duration,
}

/// The detector, the tracker and the choice of faces.
pub(super) struct FaceStage {
    detector: FaceDetector,
    tracker: Tracker,
    settings: FaceSettings,
    /// Frames seen, to detect on every `detect_every`-th.
    frames: u64,
    /// The size of the last frame (for notices on windows without one).
    frame_size: FrameSize,
    /// Capture time of the last frame the detector ran on.
    last_detection: Option<Nanos>,
}

impl FaceStage {
    pub(super) fn new(detector: FaceDetector, settings: FaceSettings) -> Self {
        let timeout_ns = u64::try_from(settings.track_timeout.as_nanos()).unwrap_or(u64::MAX);
        FaceStage {
            detector,
            tracker: Tracker::new(TrackerOptions {
                timeout_ns,
                ..TrackerOptions::default()
            }),
            settings: FaceSettings {
                detect_every: settings.detect_every.max(1),
                ..settings
            },
            frames: 0,
            last_detection: None,
            frame_size: FrameSize {
                width: 0,
                height: 0,
            },
        }
    }

    /// The faces in `frame` (or, without a frame, only the tracks that
    /// expire at `now`). `end_s` is the window's end on the pipeline clock
    /// and `newest_at` its capture time, for the notices' stamps.
    ///
    /// # Errors
    /// [`FaceError`] when the detector fails on the frame.
    pub(super) fn observe(
        &mut self,
        frame: Option<&Frame>,
        now: Nanos,
        end_s: f64,
        frame_id: &str,
    ) -> Result<WindowFaces, FaceError> {
        let before: Vec<Track> = self.tracker.tracks().to_vec();
        let mut found = WindowFaces::default();
        let events = match frame {
            Some(frame) => {
                self.frame_size = FrameSize {
                    width: u32::try_from(frame.width).unwrap_or(u32::MAX),
                    height: u32::try_from(frame.height).unwrap_or(u32::MAX),
                };
                let t = frame.captured_at;
                let detect = self
                    .frames
                    .is_multiple_of(u64::from(self.settings.detect_every));
                self.frames += 1;
                if detect {
                    let started = std::time::Instant::now();
                    let faces = self.detector.detect(frame)?;
                    found.detect = started.elapsed();
                    self.last_detection = Some(t);
                    self.tracker.update(t, &faces)
                } else {
                    self.tracker.expire(t)
                }
            }
            None => self.tracker.expire(now),
        };
        let seconds_at = |t: Nanos| end_s - now.saturating_sub(t) as f64 / 1e9;
        let notice = |track: &Track| FaceNotice {
            header: Header::at(track.last_seen, frame_id),
            stamp_s: end_s,
            id: track.id.clone(),
            bbox: BoundingBox::from_ltwh(track.face.bbox),
            score: track.face.score,
            frame: self.frame_size,
            last_seen_s: seconds_at(track.last_seen),
        };
        for id in &events.appeared {
            if let Some(track) = self.tracker.tracks().iter().find(|t| &t.id == id) {
                found.notices.push(Message::FaceAppeared(notice(track)));
            }
        }
        for id in &events.lost {
            if let Some(track) = before.iter().find(|t| &t.id == id) {
                found.notices.push(Message::FaceLost(notice(track)));
            }
        }
        found.lost = events.lost;
        if let Some(frame) = frame {
            // Only faces the latest detection found: a track it missed
            // lives on until the timeout (so it can be found again under
            // its id), but its predicted box may hold no face to read.
            let mut faces = self.tracker.faces_at(frame.captured_at);
            faces.retain(|(track, _)| Some(track.last_seen) == self.last_detection);
            // Largest first; the older track first among equals.
            faces.sort_by(|(_, a), (_, b)| area(b).total_cmp(&area(a)));
            found.chosen = faces
                .into_iter()
                .take(self.settings.select.limit())
                .map(|(track, face)| ChosenFace {
                    id: track.id.clone(),
                    face,
                    frame: self.frame_size,
                })
                .collect();
        }
        Ok(found)
    }
}

fn area(f: &Face) -> f32 {
    f.bbox[2].max(0.0) * f.bbox[3].max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn face_choices_parse_and_bad_ones_are_named() {
        assert_eq!(FaceSelect::parse("largest"), Ok(FaceSelect::Largest));
        assert_eq!(FaceSelect::parse("all"), Ok(FaceSelect::All));
        assert_eq!(FaceSelect::parse("3"), Ok(FaceSelect::Count(3)));
        for bad in ["0", "-1", "many", ""] {
            let e = FaceSelect::parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains("largest"),
                "{e}"
            );
        }
    }
}
