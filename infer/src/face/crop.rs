//! From a detected face to the crop a model was trained on, as the
//! manifest's `"crop": {"face": {"margin", "square", "align"}}` says.
//!
//! The box grows by `margin` times its width on the left and on the right
//! (its height above and below), becomes a square of the longer side when
//! `square`, and with `align: "eyes"` turns about its centre by the angle of
//! the line from the person's right eye to their left eye, so that line is
//! level in the crop (the usual alignment of face datasets). Turned crops
//! are sampled by [`VideoPre::process_turned`]; upright ones take the
//! whole-frame path's area resize on a padded rectangle, black outside the
//! frame either way.

use emogate_media::Frame;
use emogate_models::manifest::{FaceAlign, FaceCrop};

use super::Face;
use crate::pre::PreError;
use crate::pre::video::{Rect, TurnedRect, VideoPre};

/// Below this turn (radians, about 0.5°) a crop is taken upright: the turn
/// would move no corner by as much as a pixel of a 64-pixel input.
const UPRIGHT: f32 = 0.5 * std::f32::consts::PI / 180.0;

/// The crop of `face` that `crop` describes, in frame pixels.
pub fn crop_region(face: &Face, crop: &FaceCrop) -> TurnedRect {
    let [x, y, w, h] = face.bbox;
    let (cx, cy) = (x + w / 2.0, y + h / 2.0);
    let grow = 1.0 + 2.0 * crop.margin;
    let (mut width, mut height) = (w * grow, h * grow);
    if crop.square {
        let side = width.max(height);
        (width, height) = (side, side);
    }
    let angle = match crop.align {
        FaceAlign::None => 0.0,
        FaceAlign::Eyes => {
            // MediaPipe's order: the person's right eye (left in the
            // image) first.
            let [right, left] = [face.keypoints[0], face.keypoints[1]];
            let (dx, dy) = (left[0] - right[0], left[1] - right[1]);
            if dx == 0.0 && dy == 0.0 {
                0.0
            } else {
                dy.atan2(dx)
            }
        }
    };
    TurnedRect {
        cx,
        cy,
        width,
        height,
        angle,
    }
}

/// Writes `pre`'s input tensor for the crop of `face` into `out`.
///
/// # Errors
/// As [`VideoPre::process_padded`] and [`VideoPre::process_turned`]: a
/// frame or buffer of the wrong size, a crop that is empty, not finite or
/// larger than the preprocessor accepts.
pub fn render_face(
    pre: &mut VideoPre,
    frame: &Frame,
    face: &Face,
    crop: &FaceCrop,
    out: &mut [f32],
) -> Result<(), PreError> {
    let region = crop_region(face, crop);
    if region.angle.abs() >= UPRIGHT {
        return pre.process_turned(frame, region, out);
    }
    let finite = [region.cx, region.cy, region.width, region.height]
        .iter()
        .all(|v| v.is_finite());
    if !finite {
        return Err(PreError::invalid(
            "face crop",
            format!("{:?}", face.bbox),
            "a finite box",
        ));
    }
    // Pixel edges nearest the crop's; at least one pixel a side. Casts
    // saturate, and the preprocessor refuses a region too large.
    let x0 = (region.cx - region.width / 2.0).round();
    let y0 = (region.cy - region.height / 2.0).round();
    let rect = Rect {
        x: x0 as i32,
        y: y0 as i32,
        width: region.width.round().max(1.0) as u32,
        height: region.height.round().max(1.0) as u32,
    };
    pre.process_padded(frame, rect, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pre::video::VideoSpec;
    use emogate_media::PixelLayout;
    use emogate_models::manifest::{ColorOrder, VideoLayout};

    fn face(bbox: [f32; 4], right_eye: [f32; 2], left_eye: [f32; 2]) -> Face {
        let mut keypoints = [[0.0; 2]; 6];
        keypoints[0] = right_eye;
        keypoints[1] = left_eye;
        Face {
            bbox,
            score: 0.9,
            keypoints,
        }
    }

    #[test]
    fn margin_and_square_grow_the_box_about_its_centre() {
        let f = face([100.0, 50.0, 40.0, 60.0], [110.0, 70.0], [130.0, 70.0]);
        let crop = FaceCrop {
            margin: 0.25,
            square: false,
            align: FaceAlign::Eyes,
        };
        let r = crop_region(&f, &crop);
        assert_eq!(
            (r.cx, r.cy, r.width, r.height, r.angle),
            (120.0, 80.0, 60.0, 90.0, 0.0)
        );
        let r = crop_region(
            &f,
            &FaceCrop {
                square: true,
                ..crop
            },
        );
        assert_eq!((r.width, r.height), (90.0, 90.0));
    }

    #[test]
    fn the_turn_levels_the_eyes() {
        // Left eye 10 px lower than the right: the head leans clockwise
        // on screen, by atan(10/20).
        let f = face([0.0, 0.0, 40.0, 40.0], [10.0, 10.0], [30.0, 20.0]);
        let crop = FaceCrop {
            margin: 0.0,
            square: true,
            align: FaceAlign::Eyes,
        };
        let r = crop_region(&f, &crop);
        assert!((r.angle - 0.5f32.atan()).abs() < 1e-6, "{}", r.angle);
        let upright = crop_region(
            &f,
            &FaceCrop {
                align: FaceAlign::None,
                ..crop
            },
        );
        assert_eq!(upright.angle, 0.0);
    }

    /// A frame whose pixel at (x, y) is gray `f(x, y)`.
    fn gray_frame(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> Frame {
        let data: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Frame::new(width, height, PixelLayout::Gray8, data, 0).unwrap()
    }

    fn gray_pre(side: usize) -> VideoPre {
        VideoPre::new(VideoSpec {
            height: side,
            width: side,
            color: ColorOrder::Gray,
            layout: VideoLayout::Nchw,
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
            frames: 1,
        })
        .unwrap()
    }

    #[test]
    fn a_turned_crop_samples_the_rotated_rectangle() {
        // A bright bar along the line y = x / 2 + 20 (slope 0.5), on black.
        let frame = gray_frame(200, 200, |x, y| {
            let d = (y as f32 + 0.5) - ((x as f32 + 0.5) / 2.0 + 20.0);
            if d.abs() < 3.0 { 200 } else { 0 }
        });
        // Eyes along the bar: the turned crop holds it as a level line
        // through its centre row.
        let f = face([60.0, 30.0, 80.0, 80.0], [80.0, 60.0], [120.0, 80.0]);
        let crop = FaceCrop {
            margin: 0.0,
            square: true,
            align: FaceAlign::Eyes,
        };
        let mut pre = gray_pre(32);
        let mut out = vec![0f32; 32 * 32];
        render_face(&mut pre, &frame, &f, &crop, &mut out).unwrap();
        let row = |y: usize| out[y * 32 + 4..y * 32 + 28].iter().sum::<f32>() / 24.0;
        // The bar is 6 px wide across in the frame: about 2 rows of 32
        // over an 89-pixel diagonal-turned side.
        assert!(
            row(16) > 150.0 || row(15) > 150.0,
            "centre rows {} {}",
            row(15),
            row(16)
        );
        for y in [2, 6, 26, 30] {
            assert!(row(y) < 1.0, "row {y}: {}", row(y));
        }
        // Upright, the same crop cuts the bar across: no row is bright.
        let mut upright = vec![0f32; 32 * 32];
        let level = FaceCrop {
            align: FaceAlign::None,
            ..crop
        };
        render_face(&mut pre, &frame, &f, &level, &mut upright).unwrap();
        let best = (0..32)
            .map(|y| upright[y * 32 + 4..y * 32 + 28].iter().sum::<f32>() / 24.0)
            .fold(0f32, f32::max);
        assert!(best < 100.0, "{best}");
    }

    #[test]
    fn an_upright_crop_equals_the_padded_rectangle() {
        let frame = gray_frame(64, 48, |x, y| (x * 3 + y * 2) as u8);
        let f = face([10.0, 5.0, 20.0, 20.0], [15.0, 12.0], [25.0, 12.0]);
        let crop = FaceCrop {
            margin: 0.5,
            square: true,
            align: FaceAlign::Eyes,
        };
        let mut pre = gray_pre(16);
        let (mut a, mut b) = (vec![0f32; 256], vec![0f32; 256]);
        render_face(&mut pre, &frame, &f, &crop, &mut a).unwrap();
        let rect = Rect {
            x: 0,
            y: -5,
            width: 40,
            height: 40,
        };
        pre.process_padded(&frame, rect, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn crops_past_the_edges_and_absurd_boxes_do_not_panic() {
        let frame = gray_frame(8, 8, |_, _| 100);
        let mut pre = gray_pre(8);
        let mut out = vec![0f32; 64];
        let crop = FaceCrop {
            margin: 2.0,
            square: true,
            align: FaceAlign::Eyes,
        };
        for (bbox, eyes) in [
            ([-100.0, -100.0, 5.0, 5.0], [[0.0, 0.0], [1.0, 1.0]]),
            ([0.0, 0.0, 0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]]),
            ([f32::NAN, 0.0, 4.0, 4.0], [[0.0, 0.0], [1.0, 0.0]]),
            ([0.0, 0.0, 1e30, 1e30], [[0.0, 0.0], [1.0, 0.0]]),
            ([0.0, 0.0, 1e30, 1e30], [[0.0, 0.0], [1.0, 1.0]]),
        ] {
            let f = face(bbox, eyes[0], eyes[1]);
            let _ = render_face(&mut pre, &frame, &f, &crop, &mut out);
        }
    }
}
