//! Audio features that drive the mouth: per 40 ms frame (25 fps), loudness
//! decides how far the mouth opens and spectral shape how wide it is.

use rustfft::num_complex::Complex32;
use rustfft::FftPlanner;

/// Sample rate the features expect.
pub const SAMPLE_RATE: u32 = 16_000;
/// Video frame rate the features are computed for.
pub const FPS: u32 = 25;
/// Samples per video frame (40 ms at 16 kHz).
pub const HOP: usize = (SAMPLE_RATE / FPS) as usize;

/// FFT size: the 640-sample frame zero-padded to a power of two.
const FFT_LEN: usize = 1024;
/// Frames quieter than this are silence whatever the recording's level.
const ABS_FLOOR_DB: f32 = -55.0;
/// Loudness range mapped to 0..1 below the recording's loud reference.
const RANGE_DB: f32 = 30.0;
/// Per-frame smoothing: opening follows quickly (plosives are short), closing
/// is slower so the mouth does not flicker between syllables.
const ATTACK: f32 = 0.75;
const RELEASE: f32 = 0.45;

/// How the mouth should look in one video frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MouthPose {
    /// 0 = closed, 1 = fully open.
    pub open: f32,
    /// 0 = rounded/narrow (o, u), 1 = spread/wide (i, e, s).
    pub wide: f32,
}

/// Number of 25 fps frames for `n_samples` at 16 kHz, rounded to the nearest
/// frame so that `frames * 0.04` is within half a frame of the audio length.
pub fn frame_count(n_samples: usize) -> usize {
    (n_samples + HOP / 2) / HOP
}

/// Raw per-frame measurements before normalisation.
struct Raw {
    db: f32,
    centroid_hz: f32,
}

/// Computes one smoothed [`MouthPose`] per 40 ms frame of 16 kHz mono audio.
pub fn mouth_poses(samples: &[f32]) -> Vec<MouthPose> {
    let n = frame_count(samples.len());
    if n == 0 {
        return Vec::new();
    }
    let raw = measure(samples, n);

    // Normalise against the recording's own loud level (95th percentile) so
    // quiet and loud recordings both animate fully, but never below an
    // absolute floor so near-silence keeps the mouth shut.
    let mut sorted: Vec<f32> = raw.iter().map(|r| r.db).collect();
    sorted.sort_by(f32::total_cmp);
    let reference =
        sorted[((sorted.len() - 1) as f32 * 0.95) as usize].max(ABS_FLOOR_DB + RANGE_DB * 0.5);
    let floor = (reference - RANGE_DB).max(ABS_FLOOR_DB);

    let mut out = Vec::with_capacity(n);
    let mut prev = MouthPose::default();
    for r in &raw {
        let loud = ((r.db - floor) / (reference - floor)).clamp(0.0, 1.0);
        // Square-root-ish curve: moderate syllables should still open visibly.
        let open = loud.powf(0.7);
        // Bright spectra (i, e, s) spread the lips; dark ones (o, u) round them.
        let wide = ((r.centroid_hz - 600.0) / 2400.0).clamp(0.0, 1.0);
        let target = MouthPose { open, wide };
        let a = if target.open > prev.open {
            ATTACK
        } else {
            RELEASE
        };
        prev = MouthPose {
            open: prev.open + a * (target.open - prev.open),
            // Width only matters while open; follow it at the same pace.
            wide: prev.wide + a * (target.wide - prev.wide),
        };
        out.push(prev);
    }
    out
}

/// RMS level and spectral centroid of each frame.
fn measure(samples: &[f32], frames: usize) -> Vec<Raw> {
    let fft = FftPlanner::<f32>::new().plan_fft_forward(FFT_LEN);
    let window: Vec<f32> = (0..HOP)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (HOP - 1) as f32).cos())
        .collect();
    let mut buf = vec![Complex32::default(); FFT_LEN];
    let mut scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
    let bin_hz = SAMPLE_RATE as f32 / FFT_LEN as f32;
    // Speech energy below 80 Hz is mostly rumble; above 5 kHz mostly noise.
    let (lo, hi) = ((80.0 / bin_hz) as usize, (5000.0 / bin_hz) as usize);

    (0..frames)
        .map(|f| {
            let start = f * HOP;
            let end = (start + HOP).min(samples.len());
            let frame = &samples[start.min(end)..end];
            let energy: f32 = frame.iter().map(|s| s * s).sum();
            let rms = (energy / HOP as f32).sqrt();
            let db = 20.0 * (rms + 1e-9).log10();

            buf.iter_mut().for_each(|c| *c = Complex32::default());
            for (i, s) in frame.iter().enumerate() {
                buf[i].re = s * window[i];
            }
            fft.process_with_scratch(&mut buf, &mut scratch);
            let (mut wsum, mut sum) = (0.0f32, 0.0f32);
            for (k, c) in buf.iter().enumerate().take(hi).skip(lo) {
                let m = c.norm();
                wsum += m * k as f32 * bin_hz;
                sum += m;
            }
            let centroid_hz = if sum > 1e-6 { wsum / sum } else { 0.0 };
            Raw { db, centroid_hz }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (secs * SAMPLE_RATE as f32) as usize;
        (0..n)
            .map(|i| {
                amp * (2.0 * std::f32::consts::PI * freq * i as f32 / SAMPLE_RATE as f32).sin()
            })
            .collect()
    }

    #[test]
    fn frame_count_matches_duration() {
        assert_eq!(frame_count((7.56 * 16_000.0) as usize), 189);
        // 7.564354 s (the sample WAV's exact length) still rounds to 189.
        assert_eq!(frame_count(121_029), 189);
        assert_eq!(frame_count(0), 0);
        assert_eq!(frame_count(319), 0);
        assert_eq!(frame_count(320), 1);
    }

    #[test]
    fn silence_keeps_mouth_closed() {
        let poses = mouth_poses(&vec![0.0; 16_000 * 3]);
        assert_eq!(poses.len(), 75);
        assert!(poses.iter().all(|p| p.open < 0.05), "{poses:?}");
        // Faint noise (-70 dBFS) is still silence.
        let noise: Vec<f32> = (0..48_000)
            .map(|i| if i % 2 == 0 { 3e-4 } else { -3e-4 })
            .collect();
        assert!(mouth_poses(&noise).iter().all(|p| p.open < 0.05));
    }

    #[test]
    fn loud_burst_opens_mouth_then_closes() {
        let mut s = vec![0.0; 16_000];
        s.extend(tone(200.0, 1.0, 0.5));
        s.extend(vec![0.0; 16_000]);
        let poses = mouth_poses(&s);
        assert_eq!(poses.len(), 75);
        // Inside the burst (after the attack frames) the mouth is open.
        for p in &poses[28..50] {
            assert!(p.open > 0.5, "{p:?}");
        }
        // Before the burst it is shut, and it closes again afterwards.
        assert!(poses[..24].iter().all(|p| p.open < 0.05));
        assert!(
            poses[60..].iter().all(|p| p.open < 0.05),
            "{:?}",
            &poses[60..]
        );
    }

    #[test]
    fn bright_sound_is_wider_than_dark_sound() {
        let low = mouth_poses(&tone(250.0, 1.0, 0.3));
        let high = mouth_poses(&tone(3000.0, 1.0, 0.3));
        assert!(
            high[20].wide > low[20].wide + 0.5,
            "{:?} vs {:?}",
            high[20],
            low[20]
        );
    }
}
