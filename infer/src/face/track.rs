//! Stable ids for faces across frames.
//!
//! Each track keeps a box and a constant-velocity motion model (the box
//! centre's velocity in pixels per second, smoothed over detections). On a
//! frame with detections, every track's box is predicted to the frame's
//! time and matched to the detections greedily, best overlap first
//! (intersection over union of the predicted box and the detection, at
//! least `min_iou`); a detection left over whose centre lies inside a
//! predicted box also matches (a fast face overlaps its prediction
//! little). A matched track takes the detection's box; an unmatched
//! detection starts a track with a new id; a track unseen for longer than
//! the timeout is lost. Ids are never reused. Between detections (the
//! detector runs every k-th frame) [`Tracker::predict`] moves the boxes by
//! their velocity.

use super::Face;

/// One tracked face.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Short and stable, as ROS4HRI names faces (`/humans/faces/<id>`):
    /// `f` and a number, never reused in a tracker's life.
    pub id: String,
    /// The latest detection, or its prediction between detections.
    pub face: Face,
    /// Box centre velocity, pixels per second.
    velocity: [f32; 2],
    /// When the face was last detected, ns on the pipeline clock.
    pub last_seen: u64,
}

impl Track {
    /// The box at time `t`: the last detection moved by the velocity.
    fn predicted(&self, t: u64) -> [f32; 4] {
        let dt = t.saturating_sub(self.last_seen) as f32 * 1e-9;
        let [x, y, w, h] = self.face.bbox;
        [x + self.velocity[0] * dt, y + self.velocity[1] * dt, w, h]
    }
}

/// What changed in one update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackEvents {
    /// Ids of the tracks that started.
    pub appeared: Vec<String>,
    /// Ids of the tracks dropped, unseen for longer than the timeout.
    pub lost: Vec<String>,
}

/// Tracker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerOptions {
    /// A track unseen for longer than this is lost.
    pub timeout_ns: u64,
    /// The least overlap for a detection to continue a track.
    pub min_iou: f32,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            timeout_ns: 1_000_000_000,
            min_iou: 0.2,
        }
    }
}

/// The set of live tracks.
#[derive(Debug, Default)]
pub struct Tracker {
    options: TrackerOptions,
    tracks: Vec<Track>,
    next_id: u64,
}

/// How much a new velocity measurement counts against the previous ones.
const VELOCITY_SMOOTHING: f32 = 0.5;

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let (x0, y0) = (a[0].max(b[0]), a[1].max(b[1]));
    let (x1, y1) = (
        (a[0] + a[2]).min(b[0] + b[2]),
        (a[1] + a[3]).min(b[1] + b[3]),
    );
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let inter = (x1 - x0) * (y1 - y0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

fn centre(b: [f32; 4]) -> [f32; 2] {
    [b[0] + b[2] / 2.0, b[1] + b[3] / 2.0]
}

fn contains(b: [f32; 4], p: [f32; 2]) -> bool {
    p[0] >= b[0] && p[0] <= b[0] + b[2] && p[1] >= b[1] && p[1] <= b[1] + b[3]
}

impl Tracker {
    pub fn new(options: TrackerOptions) -> Self {
        Tracker {
            options,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// The live tracks, oldest first.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Matches `faces`, detected on the frame captured at `t` (ns), to the
    /// tracks; starts and drops tracks.
    pub fn update(&mut self, t: u64, faces: &[Face]) -> TrackEvents {
        let predicted: Vec<[f32; 4]> = self.tracks.iter().map(|tr| tr.predicted(t)).collect();
        // Every (track, face) pair that overlaps enough, best first.
        let mut pairs = Vec::new();
        for (ti, p) in predicted.iter().enumerate() {
            for (fi, f) in faces.iter().enumerate() {
                let overlap = iou(*p, f.bbox);
                if overlap >= self.options.min_iou {
                    pairs.push((overlap, ti, fi));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut track_of_face = vec![None; faces.len()];
        let mut matched = vec![false; self.tracks.len()];
        for (_, ti, fi) in pairs {
            if !matched[ti] && track_of_face[fi].is_none() {
                matched[ti] = true;
                track_of_face[fi] = Some(ti);
            }
        }
        // A fast face: its centre inside a still unmatched prediction.
        for (fi, f) in faces.iter().enumerate() {
            if track_of_face[fi].is_some() {
                continue;
            }
            let c = centre(f.bbox);
            if let Some(ti) =
                (0..self.tracks.len()).find(|&ti| !matched[ti] && contains(predicted[ti], c))
            {
                matched[ti] = true;
                track_of_face[fi] = Some(ti);
            }
        }
        let mut events = TrackEvents::default();
        for (fi, f) in faces.iter().enumerate() {
            match track_of_face[fi] {
                Some(ti) => {
                    let track = &mut self.tracks[ti];
                    let dt = t.saturating_sub(track.last_seen) as f32 * 1e-9;
                    if dt > 0.0 {
                        let (old, new) = (centre(track.face.bbox), centre(f.bbox));
                        for k in 0..2 {
                            let measured = (new[k] - old[k]) / dt;
                            track.velocity[k] = VELOCITY_SMOOTHING * measured
                                + (1.0 - VELOCITY_SMOOTHING) * track.velocity[k];
                        }
                    }
                    track.face = *f;
                    track.last_seen = t;
                }
                None => {
                    let id = format!("f{}", self.next_id);
                    self.next_id += 1;
                    events.appeared.push(id.clone());
                    self.tracks.push(Track {
                        id,
                        face: *f,
                        velocity: [0.0; 2],
                        last_seen: t,
                    });
                }
            }
        }
        let timeout = self.options.timeout_ns;
        self.tracks.retain(|tr| {
            let keep = t.saturating_sub(tr.last_seen) <= timeout;
            if !keep {
                events.lost.push(tr.id.clone());
            }
            keep
        });
        events
    }

    /// Drops the tracks unseen for longer than the timeout at time `t`,
    /// for a frame the detector skipped; [`Tracker::boxes_at`] gives the
    /// others' predicted boxes.
    pub fn expire(&mut self, t: u64) -> TrackEvents {
        let mut events = TrackEvents::default();
        let timeout = self.options.timeout_ns;
        self.tracks.retain(|tr| {
            let keep = t.saturating_sub(tr.last_seen) <= timeout;
            if !keep {
                events.lost.push(tr.id.clone());
            }
            keep
        });
        events
    }

    /// Each live track's face at time `t`: the last detection, box and
    /// keypoints moved by the track's velocity (score unchanged), without
    /// changing the tracks. Oldest track first.
    pub fn faces_at(&self, t: u64) -> Vec<(&Track, Face)> {
        self.tracks
            .iter()
            .map(|tr| {
                let b = tr.predicted(t);
                let (dx, dy) = (b[0] - tr.face.bbox[0], b[1] - tr.face.bbox[1]);
                let mut face = tr.face;
                face.bbox = b;
                for k in &mut face.keypoints {
                    *k = [k[0] + dx, k[1] + dy];
                }
                (tr, face)
            })
            .collect()
    }

    /// The box of each live track at time `t` (the last detection moved by
    /// the track's velocity), without changing the tracks.
    pub fn boxes_at(&self, t: u64) -> Vec<(String, [f32; 4])> {
        self.tracks
            .iter()
            .map(|tr| (tr.id.clone(), tr.predicted(t)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn face(x: f32, y: f32, size: f32) -> Face {
        Face {
            bbox: [x, y, size, size],
            score: 0.9,
            keypoints: [[0.0; 2]; 6],
        }
    }

    #[test]
    fn ids_are_stable_new_and_never_reused() {
        let mut tr = Tracker::new(TrackerOptions::default());
        let ev = tr.update(0, &[face(0.0, 0.0, 50.0), face(200.0, 0.0, 50.0)]);
        assert_eq!(ev.appeared, ["f1", "f2"]);
        let ev = tr.update(100 * MS, &[face(205.0, 0.0, 50.0), face(3.0, 0.0, 50.0)]);
        assert!(ev.appeared.is_empty() && ev.lost.is_empty());
        let ids: Vec<_> = tr
            .tracks()
            .iter()
            .map(|t| (t.id.as_str(), t.face.bbox[0]))
            .collect();
        assert_eq!(ids, [("f1", 3.0), ("f2", 205.0)]);
        // f1 leaves; after the 1 s timeout it is lost, and a face there later is new.
        tr.update(600 * MS, &[face(210.0, 0.0, 50.0)]);
        let ev = tr.update(1200 * MS, &[face(215.0, 0.0, 50.0)]);
        assert_eq!(ev.lost, ["f1"]);
        let ev = tr.update(1300 * MS, &[face(3.0, 0.0, 50.0), face(220.0, 0.0, 50.0)]);
        assert_eq!(ev.appeared, ["f3"]);
    }

    #[test]
    fn the_motion_model_keeps_ids_through_a_crossing() {
        // Two faces move towards each other along the same row, pass through
        // each other between frames, and keep going: 40 px per 100 ms each.
        let mut tr = Tracker::new(TrackerOptions::default());
        let mut ids_left_mover = Vec::new();
        for k in 0..12u64 {
            let a = face(0.0 + 40.0 * k as f32, 100.0, 60.0);
            let b = face(440.0 - 40.0 * k as f32, 100.0, 60.0);
            // Near the crossing the detector sees one face (occlusion).
            let faces = if (5..=6).contains(&k) {
                vec![a]
            } else {
                vec![a, b]
            };
            tr.update(k * 100 * MS, &faces);
            let left_mover = tr
                .tracks()
                .iter()
                .find(|t| (t.face.bbox[0] - a.bbox[0]).abs() < 1.0);
            ids_left_mover.push(left_mover.map(|t| t.id.clone()));
        }
        assert!(
            ids_left_mover.iter().all(|id| id.as_deref() == Some("f1")),
            "{ids_left_mover:?}"
        );
        assert_eq!(tr.tracks().len(), 2);
        assert!(
            tr.tracks().iter().any(|t| t.id == "f2"),
            "{:?}",
            tr.tracks()
        );
    }

    #[test]
    fn boxes_move_with_their_velocity_and_tracks_time_out() {
        let mut tr = Tracker::new(TrackerOptions {
            timeout_ns: 300 * MS,
            ..TrackerOptions::default()
        });
        tr.update(0, &[face(0.0, 0.0, 50.0)]);
        tr.update(100 * MS, &[face(10.0, 0.0, 50.0)]);
        // 100 px/s smoothed by half: 50 px/s, so 5 px per 100 ms.
        let b = tr.boxes_at(200 * MS);
        assert!((b[0].1[0] - 15.0).abs() < 1e-3, "{b:?}");
        assert!(tr.expire(350 * MS).lost.is_empty());
        assert_eq!(tr.expire(450 * MS).lost, ["f1"]);
        assert!(tr.tracks().is_empty());
    }
}
