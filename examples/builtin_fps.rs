//! Measures the built-in engine at 512 px: rendering alone, then the whole job (render + H.264/AAC
//! encode through ffmpeg) on the bundled sample: `cargo run --release --example builtin_fps`.

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
        "render only: {FRAMES} frames at {SIZE}x{SIZE} in {secs:.3} s: {:.1} fps (checksum {checksum})",
        FRAMES as f64 / secs
    );
    whole_job();
}

/// The sample photo and speech through `render_video`, encode included.
fn whole_job() {
    use sonicgw::engines::builtin::{crop_for_render, render_video, BuiltinParams};
    use sonicgw::media::face::{plan_crop, FaceDetector, Rect};
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let photo = image::open(samples.join("face_astronaut.png"))
        .unwrap()
        .to_rgb8();
    // Prepared as a job is: detect, plan the crop as intake does, crop as the engine does.
    let found = FaceDetector::new().unwrap().detect(&photo);
    let face = found.first().expect("the sample has a face");
    let plan = plan_crop(face, photo.width(), photo.height(), 0.5, 512);
    let rect = Rect {
        x: face.x,
        y: face.y,
        width: face.width,
        height: face.height,
    };
    let (crop, face) = crop_for_render(
        &photo,
        plan.crop,
        rect,
        plan.output_width,
        plan.output_height,
    );
    let audio = samples.join("speech_en.wav");
    let out = tempfile::tempdir().unwrap();
    let (samples, pcm) =
        sonicgw::media::audio::decode_for_render(&audio, &out.path().join("a.f32le"), 16_000, None)
            .unwrap();
    let params = BuiltinParams {
        dynamic_scale: 1.0,
        motion_scale: 1.0,
        seed: 7,
        lip_sync_offset_s: 0.0,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = Instant::now();
    let stats = runtime
        .block_on(render_video(
            crop,
            face,
            &samples,
            &pcm,
            params,
            &out.path().join("v.mp4"),
            |_| {},
        ))
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "whole job (render + encode): {} frames ({:.2} s of video) in {secs:.3} s: {:.1} fps, {:.1}x real time",
        stats.frames,
        stats.frames as f64 / 25.0,
        stats.frames as f64 / secs,
        stats.frames as f64 / 25.0 / secs
    );
}
