//! How the detector covers an image: which scaled copies it looks at (passes, coarse to fine), how a large
//! copy is cut into overlapping bands for several threads, and how their boxes are merged. Pure arithmetic,
//! so it is tested without the model.

use super::{FaceBox, PYRAMID_SCALE, WINDOW};

/// How much larger each pass's copy is than the previous one's. Each pass costs about its pixel count
/// times 2.8 (its pyramid), so the finest pass dominates; a step of 2.5 makes the passes before it cost
/// about a fifth more in all, and a face of medium size ends the search before the finest pass.
const PASS_STEP: f64 = 2.5;
/// A pass also looks for faces this much larger than the smallest the previous pass finds: a face just
/// at a pass's limit is found unreliably there.
const RANGE_OVERLAP: f64 = 1.25;
/// Below this many pixels a pass runs on one thread: splitting costs more than it saves.
const BAND_MIN_PIXELS: u64 = 1_000_000;

/// One scaled copy of the image to run the detector on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pass {
    /// Copy px per source px.
    pub scale: f64,
    pub width: u32,
    pub height: u32,
    /// Largest face this pass looks for, in copy px (`None`: as large as the copy).
    pub max_face: Option<u32>,
}

/// The passes over a `w` x `h` image: the first at most `first_side` px on the long side (every face of
/// at least 40 / first_side of the long side), then ever larger copies down to faces of `min_face` px.
pub(super) fn passes(w: u32, h: u32, first_side: u32, min_face: u32) -> Vec<Pass> {
    let long = w.max(h).max(1);
    let finest = f64::from(WINDOW) / f64::from(min_face.max(1));
    let mut scale = (f64::from(first_side) / f64::from(long)).min(1.0);
    let size = |scale: f64| {
        (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        )
    };
    let (width, height) = size(scale);
    let mut out = vec![Pass {
        scale,
        width,
        height,
        max_face: None,
    }];
    while scale < finest {
        // Smallest face (source px) the previous pass finds.
        let found_before = f64::from(WINDOW) / scale;
        scale = (scale * PASS_STEP).min(finest);
        let (width, height) = size(scale);
        out.push(Pass {
            scale,
            width,
            height,
            max_face: Some((found_before * RANGE_OVERLAP * scale).ceil() as u32),
        });
    }
    out
}

/// Rows `[top, bottom)` of a `width` x `height` copy for each of up to `threads` threads: bands overlap by
/// the largest face looked for, so every face lies wholly inside one band.
pub(super) fn bands(
    width: u32,
    height: u32,
    max_face: Option<u32>,
    threads: usize,
) -> Vec<(u32, u32)> {
    let pixels = u64::from(width) * u64::from(height);
    let Some(max_face) = max_face else {
        return vec![(0, height)];
    };
    if threads < 2 || pixels < BAND_MIN_PIXELS {
        return vec![(0, height)];
    }
    let overlap = max_face + WINDOW;
    let core = height.div_ceil(threads as u32);
    // A band must be tall enough for the pyramid to reach the largest face.
    if core < 2 * overlap {
        return vec![(0, height)];
    }
    (0..threads as u32)
        .map(|i| (i * core, ((i + 1) * core + overlap).min(height)))
        .filter(|(top, bottom)| top < bottom)
        .collect()
}

/// Replays rustface's pyramid loop (same f32 arithmetic, from scale 1 down to
/// 40 / min(max_face, short side)) and checks every level is at least one window in both directions.
fn pyramid_is_safe(w: u32, h: u32, max_face: Option<u32>) -> bool {
    let smallest = max_face.map_or(w.min(h), |m| m.min(w.min(h)));
    let min_scale = WINDOW as f32 / smallest as f32;
    let mut s = 1.0_f32;
    while s >= min_scale {
        if ((w as f32 * s) as u32) < WINDOW || ((h as f32 * s) as u32) < WINDOW {
            return false;
        }
        s *= PYRAMID_SCALE;
    }
    true
}

/// The size, at most 8 px smaller in each direction, at which rustface's pyramid stays inside the image
/// (it underflows when a level rounds below 40 px); `None` when the image cannot hold a face.
pub(super) fn safe_size(w: u32, h: u32, max_face: Option<u32>) -> Option<(u32, u32)> {
    (0..8)
        .map(|k| (w.saturating_sub(k), h.saturating_sub(k)))
        .take_while(|(w, h)| w.min(h) > &WINDOW)
        .find(|(w, h)| pyramid_is_safe(*w, *h, max_face))
}

/// One box per face: boxes found twice (in the overlap of two bands) keep the surer one.
pub(super) fn merge(mut faces: Vec<FaceBox>) -> Vec<FaceBox> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<FaceBox> = Vec::with_capacity(faces.len());
    for face in faces {
        if kept.iter().all(|k| overlap_ratio(k, &face) < 0.5) {
            kept.push(face);
        }
    }
    kept
}

/// Intersection over the smaller box's area.
fn overlap_ratio(a: &FaceBox, b: &FaceBox) -> f64 {
    let x = (a.x + a.width)
        .min(b.x + b.width)
        .saturating_sub(a.x.max(b.x));
    let y = (a.y + a.height)
        .min(b.y + b.height)
        .saturating_sub(a.y.max(b.y));
    let smaller =
        (u64::from(a.width) * u64::from(a.height)).min(u64::from(b.width) * u64::from(b.height));
    (u64::from(x) * u64::from(y)) as f64 / smaller.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portrait_is_one_coarse_pass_then_one_fine_pass() {
        let p = passes(512, 512, 480, 32);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].width, p[0].max_face), (480, None));
        assert_eq!(p[1].scale, 1.25);
        assert_eq!(p[1].width, 640);
    }

    #[test]
    fn passes_reach_the_smallest_face_and_each_covers_what_the_previous_misses() {
        let p = passes(4096, 3072, 480, 32);
        assert_eq!(p.last().unwrap().scale, 1.25);
        for pair in p.windows(2) {
            let (before, next) = (pair[0], pair[1]);
            // The next pass's largest face (source px) exceeds the previous pass's smallest.
            let next_largest = f64::from(next.max_face.unwrap()) / next.scale;
            assert!(next_largest > f64::from(WINDOW) / before.scale, "{p:?}");
        }
        // Small images start at full size.
        assert_eq!(passes(300, 200, 480, 32)[0].scale, 1.0);
    }

    #[test]
    fn bands_overlap_by_the_largest_face_and_cover_every_row() {
        let b = bands(5000, 4000, Some(200), 2);
        assert_eq!(b, vec![(0, 2240), (2000, 4000)]);
        // Small copies and unbounded passes are one band.
        assert_eq!(bands(600, 600, Some(100), 2), vec![(0, 600)]);
        assert_eq!(bands(5000, 4000, None, 2), vec![(0, 4000)]);
        assert_eq!(bands(5000, 4000, Some(200), 1), vec![(0, 4000)]);
    }

    #[test]
    fn merge_keeps_the_surer_of_two_boxes_of_one_face() {
        let f = |x, score| FaceBox {
            x,
            y: 10,
            width: 50,
            height: 50,
            score,
        };
        let merged = merge(vec![f(100, 3.0), f(102, 5.0), f(400, 2.5)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].score, 5.0);
    }

    #[test]
    fn safe_sizes_keep_every_pyramid_level_inside_the_image() {
        for side in 41..300 {
            if let Some((w, h)) = safe_size(side, side + 3, None) {
                assert!(pyramid_is_safe(w, h, None));
            }
            if let Some((w, h)) = safe_size(side * 4, side, Some(90)) {
                assert!(pyramid_is_safe(w, h, Some(90)));
            }
        }
        assert_eq!(safe_size(40, 400, None), None);
    }
}
