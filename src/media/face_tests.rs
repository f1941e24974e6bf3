//! Tests for `face.rs` (kept apart to keep that file short).

use super::*;
use image::imageops::FilterType;
use image::Rgb;

fn astronaut() -> RgbImage {
    image::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/samples/face_astronaut.png"
    ))
    .unwrap()
    .into_rgb8()
}

#[test]
fn detector_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FaceDetector>();
}

#[test]
fn finds_the_astronaut() {
    let det = FaceDetector::new().unwrap();
    let faces = det.detect(&astronaut());
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = faces[0];
    // Reference box: x=173, y=68, 99x99.
    let (cx, cy) = (f.x + f.width / 2, f.y + f.height / 2);
    assert!(
        cx.abs_diff(173 + 49) <= 15 && cy.abs_diff(68 + 49) <= 15,
        "{f:?}"
    );
    assert!((70..=130).contains(&f.width), "{f:?}");
    assert!(f.score >= SCORE_THRESH);
}

#[test]
fn finds_the_astronaut_in_a_big_upscaled_copy() {
    // Exercises the downscale path and mapping back to source pixels.
    let big = imageops::resize(&astronaut(), 1536, 1536, FilterType::Triangle);
    let faces = FaceDetector::new().unwrap().detect(&big);
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = faces[0];
    let (cx, cy) = (f.x + f.width / 2, f.y + f.height / 2);
    assert!(
        cx.abs_diff(3 * 222) <= 45 && cy.abs_diff(3 * 117) <= 45,
        "{f:?}"
    );
}

#[test]
fn no_face_in_gradient_or_tiny_images() {
    let det = FaceDetector::new().unwrap();
    let g = RgbImage::from_fn(512, 384, |x, y| {
        Rgb([(x / 2) as u8, (y * 255 / 383) as u8, ((x + y) / 4) as u8])
    });
    assert!(det.detect(&g).is_empty());
    for (w, h) in [(0, 0), (1, 1), (40, 40), (41, 300), (2000, 41)] {
        assert!(det.detect(&RgbImage::new(w, h)).is_empty(), "{w}x{h}");
    }
}

#[test]
fn pyramid_guard_on_many_sizes() {
    let det = FaceDetector::new().unwrap();
    for side in (41..140).step_by(7) {
        let _ = det.detect(&RgbImage::new(side, side + 3));
    }
}

#[test]
fn detection_from_many_threads() {
    let det = std::sync::Arc::new(FaceDetector::new().unwrap());
    let img = std::sync::Arc::new(astronaut());
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (d, i) = (det.clone(), img.clone());
            std::thread::spawn(move || d.detect(&i).len())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 1);
    }
}

fn face(x: u32, y: u32, s: u32) -> FaceBox {
    FaceBox {
        x,
        y,
        width: s,
        height: s,
        score: 5.0,
    }
}

#[test]
fn crop_unclipped_is_expanded_square() {
    // 100 px face in the middle of a 1000 px image, ratio 0.5 -> 200 px.
    let p = plan_crop(&face(450, 450, 100), 1000, 1000, 0.5, 512);
    assert_eq!(
        p.crop,
        Rect {
            x: 400,
            y: 400,
            width: 200,
            height: 200
        }
    );
    assert_eq!((p.output_width, p.output_height), (512, 512));
}

#[test]
fn crop_clipped_at_border_stays_square_and_inside() {
    // Astronaut: ratio 1.0 wants 297 px but the top edge clips at y=0.
    let p = plan_crop(&face(173, 68, 99), 512, 512, 1.0, 512);
    let c = p.crop;
    assert_eq!(c.width, c.height);
    assert!(c.x + c.width <= 512 && c.y + c.height <= 512);
    assert_eq!(c.y, 0);
    // The face is fully inside the crop.
    assert!(
        c.x <= 173 && c.x + c.width >= 272 && c.y + c.height >= 167,
        "{c:?}"
    );
    assert_eq!((p.output_width, p.output_height), (512, 512));

    // Face in a corner of a wide image.
    let p = plan_crop(&face(0, 0, 50), 1920, 1080, 0.5, 512);
    assert_eq!(
        p.crop,
        Rect {
            x: 0,
            y: 0,
            width: 75,
            height: 75
        }
    );
}

#[test]
fn output_sides_round_to_64() {
    let p = plan_crop(&face(0, 0, 300), 300, 100, 0.0, 500);
    // Square of the short side, centred on the face centre (x = 150).
    assert_eq!(
        p.crop,
        Rect {
            x: 100,
            y: 0,
            width: 100,
            height: 100
        }
    );
    assert_eq!(p.output_width % 64, 0);
    // 100 * 5 = 500 -> round(7.8125) * 64 = 512.
    assert_eq!((p.output_width, p.output_height), (512, 512));
    // Tiny min_resolution never yields 0.
    let p = plan_crop(&face(10, 10, 20), 100, 100, 0.2, 1);
    assert_eq!((p.output_width, p.output_height), (64, 64));
    // Degenerate inputs do not panic.
    let _ = plan_crop(&face(500, 500, 0), 10, 10, -3.0, 0);
    let _ = plan_crop(&face(0, 0, 10), 0, 0, f32::NAN, 512);
}

/// The astronaut shrunk to `side` px (its face about `side` x 0.18), pasted at (`x`, `y`) into a plain
/// `w` x `h` canvas.
fn pasted(side: u32, w: u32, h: u32, x: i64, y: i64) -> RgbImage {
    let small = imageops::resize(&astronaut(), side, side, FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([120, 130, 140]));
    imageops::replace(&mut canvas, &small, x, y);
    canvas
}

#[test]
fn finds_a_50_px_face_anywhere_in_a_2000_px_photo() {
    let det = FaceDetector::new().unwrap();
    // Near a corner, and across the middle where the bands of the finest pass overlap.
    for (x, y) in [(1650, 1150), (100, 600), (900, 40)] {
        let faces = det.detect(&pasted(272, 2000, 1500, x, y));
        assert_eq!(faces.len(), 1, "at {x},{y}: {faces:?}");
        let f = faces[0];
        assert!((40..=62).contains(&f.width), "{f:?}");
        let (cx, cy) = (i64::from(f.x + f.width / 2), i64::from(f.y + f.height / 2));
        // The face centre is at about (118, 62) of the 272 px copy.
        assert!(
            (cx - (x + 118)).abs() <= 15 && (cy - (y + 62)).abs() <= 15,
            "{f:?}"
        );
    }
}

#[test]
fn finds_a_face_of_about_32_px() {
    let faces = FaceDetector::new()
        .unwrap()
        .detect(&pasted(180, 1200, 900, 500, 400));
    assert_eq!(faces.len(), 1, "{faces:?}");
    assert!((26..=42).contains(&faces[0].width), "{:?}", faces[0]);
}

#[test]
fn smallest_usable_face_follows_resolution_and_expansion() {
    // 512 px from a crop twice the face, enlarged at most 10x.
    assert_eq!(smallest_usable_face(512, 0.5), 26);
    assert_eq!(smallest_usable_face(1024, 0.1), 86);
    // Sonic's own example on the 94 px sample face.
    assert!(smallest_usable_face(1024, 0.18) <= 76);
}
