//! Band-limited resampling of mono f32 audio, with rubato's FFT resampler.
//!
//! Linear interpolation would alias everything above the target Nyquist
//! (e.g. 8–22 kHz when going 44.1 kHz -> 16 kHz) back into the speech band
//! the engine's audio features listen to. The whole recording is resampled
//! at once, so the resampler's delay is removed exactly: the output lines up
//! with the input sample for sample (lip sync depends on it).

use rubato::{FftFixedIn, Resampler};

/// Input frames per FFT chunk.
const CHUNK: usize = 1024;

/// Resamples `input` from `from` Hz to `to` Hz. Output length is
/// `round(len * to / from)`. Rates of 0 or above 384 kHz return an empty vector.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    // Decoders only pass rates intake accepted (8-192 kHz); anything beyond this would make the FFT
    // plan allocate in proportion to the rate.
    const MAX_RATE: u32 = 384_000;
    if from == 0 || to == 0 || from > MAX_RATE || to > MAX_RATE || input.is_empty() {
        return Vec::new();
    }
    if from == to {
        return input.to_vec();
    }
    let out_len = (input.len() as f64 * f64::from(to) / f64::from(from)).round() as usize;
    let Ok(mut resampler) = FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK, 2, 1) else {
        // Only for rates rubato cannot plan; callers pass decoder-reported rates (> 0).
        return Vec::new();
    };
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(out_len + delay + 2 * CHUNK);
    let mut pos = 0;
    loop {
        let need = resampler.input_frames_next();
        let chunk = if pos + need <= input.len() {
            resampler.process(&[&input[pos..pos + need]], None)
        } else if pos < input.len() {
            resampler.process_partial(Some(&[&input[pos..]]), None)
        } else if out.len() < delay + out_len {
            // Flush: the last input frames are still inside the filter.
            resampler.process_partial::<&[f32]>(None, None)
        } else {
            break;
        };
        pos = (pos + need).min(input.len());
        match chunk {
            Ok(mut channels) => out.append(&mut channels[0]),
            Err(_) => break,
        }
    }
    out.drain(..delay.min(out.len()));
    out.resize(out_len, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Fits `a sin + b cos` of `freq` to `out` away from its edges: the tone's amplitude, how many
    /// output samples it is shifted by, and the rms of what the fit leaves over.
    fn fit_tone(out: &[f32], freq: f64, rate: u32) -> (f64, f64, f64) {
        let w = 2.0 * PI * freq / f64::from(rate);
        let range = 400..out.len() - 400;
        let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in range.clone() {
            let (s, c) = ((w * i as f64).sin(), (w * i as f64).cos());
            let y = f64::from(out[i]);
            (ss, sc, cc, ys, yc) = (ss + s * s, sc + s * c, cc + c * c, ys + y * s, yc + y * c);
        }
        let det = ss * cc - sc * sc;
        let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
        let residual: Vec<f32> = range
            .map(|i| {
                (f64::from(out[i]) - a * (w * i as f64).sin() - b * (w * i as f64).cos()) as f32
            })
            .collect();
        ((a * a + b * b).sqrt(), b.atan2(a) / w, rms(&residual))
    }

    #[test]
    fn passband_tone_is_preserved() {
        for (from, to) in [
            (44_100, 16_000),
            (22_050, 16_000),
            (8_000, 16_000),
            (48_000, 16_000),
            (44_100, 16_001),
        ] {
            let out = resample(&tone(440.0, from, 1.0), from, to);
            assert_eq!(out.len(), to as usize);
            let (amplitude, shift, residual) = fit_tone(&out, 440.0, to);
            assert!(
                (amplitude - 1.0).abs() < 0.01,
                "{from}->{to}: amplitude {amplitude}"
            );
            // Aligned to within a sample (at 16 kHz, 62 µs: nothing next to a 40 ms video frame).
            assert!(shift.abs() <= 1.0, "{from}->{to}: shifted {shift} samples");
            assert!(residual < 0.01, "{from}->{to}: residual {residual}");
        }
    }

    #[test]
    fn tone_above_target_nyquist_is_removed() {
        // 12 kHz cannot exist at 16 kHz; linear interpolation would alias it to 4 kHz.
        let out = resample(&tone(12_000.0, 44_100, 0.5), 44_100, 16_000);
        assert!(rms(&out[100..out.len() - 100]) < 0.01, "{}", rms(&out));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(resample(&[], 44_100, 16_000).is_empty());
        assert!(resample(&[1.0], 0, 16_000).is_empty());
        assert_eq!(resample(&[0.5, 0.25], 16_000, 16_000), vec![0.5, 0.25]);
        assert_eq!(resample(&[1.0], 44_100, 16_000).len(), 0);
        assert_eq!(resample(&[1.0; 3], 8_000, 16_000).len(), 6);
    }
}
