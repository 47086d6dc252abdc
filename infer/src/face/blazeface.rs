//! BlazeFace's outputs to face boxes: the SSD anchor grid, box and keypoint
//! decoding, and weighted non-maximum suppression, as MediaPipe's
//! `SsdAnchorsCalculator`, `TensorsToDetectionsCalculator` and
//! `NonMaxSuppressionCalculator` (algorithm `WEIGHTED`) compute them for the
//! short-range model. Coordinates here are normalized to the detector's
//! square input (0–1); [`super::FaceDetector`] maps them to frame pixels.

/// Side of the short-range model's square input, in pixels.
pub const INPUT_SIDE: usize = 128;
/// Values per anchor in the regressor output: box centre offset and size,
/// then six keypoints (eyes, nose tip, mouth, ear tragions), `(x, y)` each.
pub const REGRESSORS: usize = 16;
/// Keypoints per face.
pub const KEYPOINTS: usize = 6;

/// A face in normalized input coordinates: `[xmin, ymin]`, `[xmax, ymax]`,
/// then the keypoints, the layout MediaPipe's weighted suppression blends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawFace {
    pub points: [[f32; 2]; 2 + KEYPOINTS],
    pub score: f32,
}

impl RawFace {
    fn area(&self) -> f32 {
        let [[x0, y0], [x1, y1]] = [self.points[0], self.points[1]];
        (x1 - x0) * (y1 - y0)
    }

    /// Intersection over union with `other` (0 when they do not overlap).
    pub fn iou(&self, other: &RawFace) -> f32 {
        let (a, b) = (&self.points, &other.points);
        let (x0, y0) = (a[0][0].max(b[0][0]), a[0][1].max(b[0][1]));
        let (x1, y1) = (a[1][0].min(b[1][0]), a[1][1].min(b[1][1]));
        if x1 <= x0 || y1 <= y0 {
            return 0.0;
        }
        let inter = (x1 - x0) * (y1 - y0);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Anchor centres of the short-range model: a 16×16 grid with 2 anchors
/// per cell (stride 8), then an 8×8 grid with 6 (three stride-16 layers,
/// 2 each), centres at `(i + 0.5) / grid`; 896 in all.
pub fn short_range_anchors() -> Vec<[f32; 2]> {
    let mut anchors = Vec::with_capacity(896);
    for (grid, per_cell) in [(16usize, 2usize), (8, 6)] {
        for y in 0..grid {
            let cy = (y as f32 + 0.5) / grid as f32;
            for x in 0..grid {
                let cx = (x as f32 + 0.5) / grid as f32;
                anchors.extend(std::iter::repeat_n([cx, cy], per_cell));
            }
        }
    }
    anchors
}

/// MediaPipe clips raw scores to ±80 before the sigmoid.
const RAW_SCORE_LIMIT: f32 = 80.0;

/// The faces whose score is above `min_score`, decoded from the model's
/// `regressors` (`anchors.len() × 16`) and `scores` (`anchors.len()`,
/// logits), in anchor order. Boxes with no area are dropped.
pub fn decode(
    regressors: &[f32],
    scores: &[f32],
    anchors: &[[f32; 2]],
    min_score: f32,
) -> Vec<RawFace> {
    let side = INPUT_SIDE as f32;
    let mut faces = Vec::new();
    for ((raw, &logit), anchor) in regressors.chunks_exact(REGRESSORS).zip(scores).zip(anchors) {
        let score = 1.0 / (1.0 + (-logit.clamp(-RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)).exp());
        if score <= min_score {
            continue;
        }
        let at = |i: usize| {
            [
                raw[2 * i] / side + anchor[0],
                raw[2 * i + 1] / side + anchor[1],
            ]
        };
        let centre = at(0);
        let half = [raw[2] / side / 2.0, raw[3] / side / 2.0];
        let mut points = [[0f32; 2]; 2 + KEYPOINTS];
        points[0] = [centre[0] - half[0], centre[1] - half[1]];
        points[1] = [centre[0] + half[0], centre[1] + half[1]];
        for (k, p) in points[2..].iter_mut().enumerate() {
            *p = at(k + 2);
        }
        if points[1][0] > points[0][0] && points[1][1] > points[0][1] {
            faces.push(RawFace { points, score });
        }
    }
    faces
}

/// Weighted non-maximum suppression: the best remaining face and every
/// face overlapping it by more than `iou` become one face, their points
/// averaged with their scores as weights, with the best one's score.
/// Highest score first.
pub fn weighted_nms(mut faces: Vec<RawFace>, iou: f32) -> Vec<RawFace> {
    // Stable, so equal scores keep anchor order, as the reference does.
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    let mut remaining = faces;
    let mut rest = Vec::with_capacity(remaining.len());
    while let Some(best) = remaining.first().copied() {
        let mut sum = [[0f32; 2]; 2 + KEYPOINTS];
        let mut total = 0f32;
        rest.clear();
        for face in &remaining {
            if face.iou(&best) > iou {
                total += face.score;
                for (s, p) in sum.iter_mut().zip(&face.points) {
                    s[0] += p[0] * face.score;
                    s[1] += p[1] * face.score;
                }
            } else {
                rest.push(*face);
            }
        }
        let points = sum.map(|[x, y]| [x / total, y / total]);
        out.push(RawFace {
            points,
            score: best.score,
        });
        std::mem::swap(&mut remaining, &mut rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> RawFace {
        let mut points = [[0.0; 2]; 2 + KEYPOINTS];
        points[0] = [x0, y0];
        points[1] = [x1, y1];
        RawFace { points, score }
    }

    #[test]
    fn anchors_follow_the_grids() {
        let a = short_range_anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn decode_offsets_from_the_anchor_and_thresholds() {
        let anchors = [[0.25, 0.5], [0.75, 0.5]];
        let mut reg = vec![0.0; 32];
        // Anchor 0: centre moved by (12.8, -6.4) px, a 32×64 px box, first keypoint at +(6.4, 0).
        reg[..6].copy_from_slice(&[12.8, -6.4, 32.0, 64.0, 6.4, 0.0]);
        let faces = decode(&reg, &[2.0, 0.0], &anchors, 0.5);
        assert_eq!(faces.len(), 1, "sigmoid(0) = 0.5 is not above 0.5");
        let f = &faces[0];
        let (cx, cy) = (0.25 + 0.1, 0.5 - 0.05);
        assert!((f.points[0][0] - (cx - 0.125)).abs() < 1e-6);
        assert!((f.points[0][1] - (cy - 0.25)).abs() < 1e-6);
        assert!((f.points[1][0] - (cx + 0.125)).abs() < 1e-6);
        assert!((f.points[2][0] - 0.3).abs() < 1e-6);
        assert!((f.score - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
        // A box with no width is dropped; a huge logit is clipped, not NaN.
        reg[16..20].copy_from_slice(&[0.0, 0.0, 0.0, 10.0]);
        assert_eq!(decode(&reg, &[-1.0, 1e30], &anchors, 0.5).len(), 0);
    }

    #[test]
    fn weighted_nms_blends_overlaps_and_keeps_the_rest() {
        let faces = vec![
            face(0.0, 0.0, 1.0, 1.0, 0.6),
            face(0.1, 0.0, 1.1, 1.0, 0.9),
            face(5.0, 5.0, 6.0, 6.0, 0.7),
        ];
        let out = weighted_nms(faces, 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        // x0 = (0.1·0.9 + 0·0.6) / 1.5
        assert!((out[0].points[0][0] - 0.06).abs() < 1e-6);
        assert!((out[0].points[1][0] - 1.06).abs() < 1e-6);
        assert_eq!(out[1].points[0], [5.0, 5.0]);
        assert!(weighted_nms(Vec::new(), 0.3).is_empty());
    }

    #[test]
    fn iou_of_disjoint_and_identical_boxes() {
        let a = face(0.0, 0.0, 1.0, 1.0, 1.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&face(2.0, 2.0, 3.0, 3.0, 1.0)), 0.0);
        assert!((a.iou(&face(0.5, 0.0, 1.5, 1.0, 1.0)) - 1.0 / 3.0).abs() < 1e-6);
    }
}
