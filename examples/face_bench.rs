//! Measures face detection as intake runs it (one call of `FaceDetector::detect` on the decoded photo):
//! the 512 px sample, the sample's face at about 50 px in a 2000 x 1500 photo, and photos at the
//! 4096 px upload limit with a 50 px face and with no face at all (the slowest case: every pass runs).
//! `cargo run --release --example face_bench` (optional argument: rounds, default 3; the median is shown).

use std::time::Instant;

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use sonicgw::media::face::FaceDetector;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let sample = image::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/samples/face_astronaut.png"
    ))
    .unwrap()
    .into_rgb8();
    let small = imageops::resize(&sample, 272, 272, FilterType::Triangle);
    let canvas = |w: u32, h: u32, face: Option<(i64, i64)>| {
        // A gentle gradient with some texture, like a wall or a sky.
        let mut img = RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (60 + (x / 32) % 120) as u8,
                (80 + (y / 24) % 100) as u8,
                (100 + ((x ^ y) & 15)) as u8,
            ])
        });
        if let Some((x, y)) = face {
            imageops::replace(&mut img, &small, x, y);
        }
        img
    };
    let cases = [
        ("sample 512x512, 94 px face", sample.clone()),
        (
            "2000x1500, 50 px face",
            canvas(2000, 1500, Some((1500, 1100))),
        ),
        (
            "4096x3072, 50 px face",
            canvas(4096, 3072, Some((3000, 2000))),
        ),
        ("4096x4096, no face", canvas(4096, 4096, None)),
    ];
    let detector = FaceDetector::new().unwrap();
    println!(
        "face_bench: {} threads available, median of {rounds}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, image) in &cases {
        let mut times = Vec::new();
        let mut found = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            found = detector.detect(image);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let face = found.first().map_or("none".to_owned(), |f| {
            format!("{} px at ({}, {})", f.width, f.x, f.y)
        });
        println!("  {name}: {:.3} s (face: {face})", times[times.len() / 2]);
    }
}
