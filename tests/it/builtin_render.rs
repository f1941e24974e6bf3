//! Rendering tests on a synthetic face: the mouth moves where it should and
//! nowhere else, blinks follow the seed, sway stays small.

use image::RgbImage;
use sonicgw::engines::builtin::features::MouthPose;
use sonicgw::engines::builtin::render::{AnimParams, Animator, Rect};

const W: u32 = 256;
const H: u32 = 256;
const FACE: (u32, u32, u32, u32) = (64, 40, 128, 160);

/// A textured skin-coloured oval on a gradient background, with darker
/// "eyes" and "lips", so warps and overlays change pixel values.
fn synthetic_face() -> RgbImage {
    RgbImage::from_fn(W, H, |x, y| {
        let (fx, fy) = ((x as f32 - 128.0) / 64.0, (y as f32 - 120.0) / 80.0);
        let texture = ((x * 7 + y * 13) % 17) as u8;
        if fx * fx + fy * fy < 1.0 {
            let lips = (y as i32 - 165).abs() < 4 && (x as i32 - 128).abs() < 24;
            let eye = (y as i32 - 104).abs() < 5
                && ((x as i32 - 102).abs() < 10 || (x as i32 - 154).abs() < 10);
            match (lips, eye) {
                (true, _) => image::Rgb([170, 70, 80]),
                (_, true) => image::Rgb([60, 50, 45]),
                _ => image::Rgb([210 - texture, 160 + texture, 130]),
            }
        } else {
            image::Rgb([40 + (y / 4) as u8, 60, 90 + texture])
        }
    })
}

fn animator(motion: f32, seed: u32) -> Animator {
    Animator::new(
        synthetic_face(),
        FACE,
        AnimParams {
            dynamic_scale: 1.0,
            motion_scale: motion,
            seed,
        },
    )
}

fn frame(anim: &mut Animator, i: usize, open: f32) -> Vec<u8> {
    let mut out = vec![0u8; (W * H * 3) as usize];
    anim.render(i, MouthPose { open, wide: 0.5 }, &mut out);
    out
}

fn inside(r: Rect, x: usize, y: usize) -> bool {
    x >= r.0 && x < r.2 && y >= r.1 && y < r.3
}

/// (pixels differing by more than 40 in any channel inside `r`, max
/// per-channel difference outside `r`).
fn diff(a: &[u8], b: &[u8], r: Rect) -> (usize, u8) {
    let (mut changed, mut outside_max) = (0, 0u8);
    for (i, (pa, pb)) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate() {
        let d = (0..3).map(|c| pa[c].abs_diff(pb[c])).max().unwrap();
        let (x, y) = (i % W as usize, i / W as usize);
        if inside(r, x, y) {
            changed += (d > 40) as usize;
        } else {
            outside_max = outside_max.max(d);
        }
    }
    (changed, outside_max)
}

#[test]
fn mouth_opens_only_in_mouth_region() {
    let mut anim = animator(0.0, 3);
    let mouth = anim.mouth_rect();
    // Mouth region sits in the lower part of the face box.
    assert!(
        mouth.1 > (FACE.1 + FACE.3 / 2) as usize && mouth.0 > FACE.0 as usize,
        "{mouth:?}"
    );
    let closed = frame(&mut anim, 0, 0.0);
    let half = frame(&mut anim, 0, 0.5);
    let open = frame(&mut anim, 0, 1.0);
    // Closed mouth with no sway and no blink is the photo itself.
    assert_eq!(closed, synthetic_face().into_raw());
    let (changed_open, outside_open) = diff(&closed, &open, mouth);
    let (changed_half, outside_half) = diff(&closed, &half, mouth);
    assert!(
        changed_open > 400,
        "only {changed_open} mouth pixels changed"
    );
    assert!(
        changed_half > 100 && changed_half < changed_open,
        "{changed_half} vs {changed_open}"
    );
    assert_eq!(
        (outside_open, outside_half),
        (0, 0),
        "pixels outside the mouth changed"
    );
}

#[test]
fn dynamic_scale_scales_mouth_movement() {
    let mut calm = Animator::new(
        synthetic_face(),
        FACE,
        AnimParams {
            dynamic_scale: 0.5,
            motion_scale: 0.0,
            seed: 3,
        },
    );
    let mut lively = Animator::new(
        synthetic_face(),
        FACE,
        AnimParams {
            dynamic_scale: 2.0,
            motion_scale: 0.0,
            seed: 3,
        },
    );
    let base = synthetic_face().into_raw();
    let r = lively.mouth_rect();
    let (a, _) = diff(&base, &frame(&mut calm, 0, 0.6), r);
    let (b, _) = diff(&base, &frame(&mut lively, 0, 0.6), r);
    assert!(b > a * 2, "dynamic 2.0 changed {b} px, 0.5 changed {a} px");
}

#[test]
fn blinks_follow_the_seed() {
    let blink_frames = |seed: u32| {
        let mut anim = animator(0.0, seed);
        let eyes = anim.eye_rects();
        let reference = frame(&mut anim, 0, 0.0);
        let mut blinking = Vec::new();
        for i in 1..250 {
            let f = frame(&mut anim, i, 0.0);
            if f != reference {
                // Changes are confined to the eyes.
                let outside = eyes.iter().fold(f.clone(), |mut acc, r| {
                    for y in r.1..r.3 {
                        let row = (y * W as usize + r.0) * 3..(y * W as usize + r.2) * 3;
                        acc[row.clone()].copy_from_slice(&reference[row]);
                    }
                    acc
                });
                assert_eq!(outside, reference, "frame {i} changed outside the eyes");
                blinking.push(i);
            }
        }
        blinking
    };
    let a = blink_frames(42);
    // 10 s of video: first blink within 2.5 s, then every 3-5 s, ~4 frames each.
    let starts = a
        .iter()
        .enumerate()
        .filter(|&(k, &f)| k == 0 || a[k - 1] + 1 != f)
        .count();
    assert!((2..=4).contains(&starts), "blink starts {starts}: {a:?}");
    assert!(a.len() >= starts * 3 && a.len() <= starts * 4, "{a:?}");
    assert_eq!(a, blink_frames(42), "same seed, same blinks");
    assert_ne!(a, blink_frames(43), "different seed, different blinks");
}

#[test]
fn blink_closes_the_eye() {
    let mut anim = animator(0.0, 42);
    let shut = (0..250)
        .find(|&i| anim.blink_amount(i) >= 1.0)
        .expect("a full blink within 10 s");
    let open = frame(&mut anim, 0, 0.0);
    let closed = frame(&mut anim, shut, 0.0);
    // The dark eye stripe (y=104) at the eye centre becomes skin-like.
    let px = |f: &[u8]| f[(104 * W as usize + 102) * 3] as i32;
    assert!(
        px(&closed) > px(&open) + 60,
        "{} -> {}",
        px(&open),
        px(&closed)
    );
}

#[test]
fn sway_is_small_and_present() {
    let anim = animator(1.0, 5);
    let offsets: Vec<(i32, i32)> = (0..250).map(|i| anim.sway_offset(i, 0.5)).collect();
    let max = offsets
        .iter()
        .map(|&(x, y)| x.abs().max(y.abs()))
        .max()
        .unwrap();
    assert!(
        max >= 2 && max <= (W as i32) * 2 / 100 + 1,
        "max sway {max}px"
    );
    let still = animator(0.0, 5);
    assert!((0..250).all(|i| still.sway_offset(i, 1.0) == (0, 0)));
}
