//! The files a job sends to ComfyUI, made from our own decodes: the upright photo as RGB PNG and
//! the recording as 16-bit PCM WAV. Nothing of the uploads is passed on as it was uploaded.

use std::io::Cursor;
use std::path::Path;

use crate::engines::EngineError;
use crate::media::audio::{decode_for_render, PcmFile};
use crate::media::image::{probe_image, ImageLimits};

/// A job's inputs, ready to upload.
pub struct Prepared {
    pub png: Vec<u8>,
    pub wav: Vec<u8>,
    /// The decoded recording, for the final mux.
    pub pcm: PcmFile,
    /// The recording's length in seconds.
    pub audio_seconds: f64,
}

/// Decodes the photo (orientation applied, alpha dropped) and the recording, no further than
/// `max_duration_s` (the length intake measured). Blocking.
pub fn prepare(
    image: &Path,
    audio: &Path,
    workdir: &Path,
    limits: &ImageLimits,
    max_duration_s: f64,
) -> Result<Prepared, EngineError> {
    let photo = probe_image(image, limits).map_err(EngineError::from)?;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(photo.image)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| EngineError::server("internal", format!("png encoding: {e}")))?;
    let pcm_path = workdir.join("audio.f32le");
    let (_, pcm) = decode_for_render(audio, &pcm_path, 16_000, Some(max_duration_s))
        .map_err(EngineError::from)?;
    let raw = std::fs::read(&pcm.path)
        .map_err(|e| EngineError::server("internal", format!("reading decoded audio: {e}")))?;
    let samples = raw.len() / 4;
    let audio_seconds =
        samples as f64 / f64::from(pcm.channels.max(1)) / f64::from(pcm.sample_rate.max(1));
    let wav = wav_s16(&raw, pcm.sample_rate, pcm.channels);
    Ok(Prepared {
        png,
        wav,
        pcm,
        audio_seconds,
    })
}

/// A canonical 44-byte-header WAV of 16-bit PCM from interleaved `f32le` samples.
pub fn wav_s16(f32le: &[u8], sample_rate: u32, channels: u16) -> Vec<u8> {
    let samples = f32le.len() / 4;
    let data_len = (samples * 2) as u32;
    let block_align = channels * 2;
    let mut out = Vec::with_capacity(44 + samples * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for chunk in f32le.chunks_exact(4) {
        let s = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        out.extend_from_slice(&((s * 32767.0).round() as i16).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_16_bit_pcm_of_the_samples() {
        let samples: Vec<u8> = [0.0f32, 1.0, -1.0, 0.5, 2.0, f32::NAN]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let wav = wav_s16(&samples, 22_050, 2);
        assert_eq!(wav.len(), 44 + 12);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 1, "PCM");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "channels");
        assert_eq!(
            u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
            22_050
        );
        assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16, "bits");
        assert_eq!(u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]), 12);
        let pcm: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(pcm, [0, 32767, -32767, 16384, 32767, 0]);
    }
}
