//! Measures the built-in engine's rendering speed (no encoding):
//! `cargo run --release --example builtin_fps`.

use std::time::Instant;

use image::RgbImage;
use sonicgw::engines::builtin::features::MouthPose;
use sonicgw::engines::builtin::render::{AnimParams, Animator};

fn main() {
    const SIZE: u32 = 512;
    const FRAMES: usize = 250;
    // A textured synthetic portrait: the cost does not depend on content.
    let img = RgbImage::from_fn(SIZE, SIZE, |x, y| {
        image::Rgb([(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8])
    });
    let params = AnimParams {
        dynamic_scale: 1.0,
        motion_scale: 1.0,
        seed: 7,
    };
    let mut anim = Animator::new(img, (140, 110, 232, 232), params);
    let mut out = vec![0u8; (SIZE * SIZE * 3) as usize];
    let start = Instant::now();
    let mut checksum = 0u64;
    for i in 0..FRAMES {
        // A syllable-like open/close cycle so the mouth path is exercised.
        let open = (0.5 + 0.5 * (i as f32 * 0.8).sin()).max(0.0);
        anim.render(i, MouthPose { open, wide: 0.5 }, &mut out);
        checksum = checksum.wrapping_add(
            out[(out.len() / 2)..]
                .iter()
                .step_by(997)
                .map(|&b| b as u64)
                .sum::<u64>(),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rendered {FRAMES} frames at {SIZE}x{SIZE} in {secs:.3} s: {:.1} fps (checksum {checksum})",
        FRAMES as f64 / secs
    );
}
