//! Speech-recording intake: content-sniffed container check, full decode to
//! measure the playable duration, and mono/resampled PCM for the engine.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use symphonia::core::audio::{AudioBufferRef, SampleBuffer};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{guard, mp4edit, resample::resample, MediaError};

/// Accepted containers, detected from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormatName {
    /// RIFF/WAVE (PCM, float or ADPCM).
    Wav,
    /// MPEG-1/2 Layer III.
    Mp3,
    /// Native FLAC.
    Flac,
    /// Ogg Vorbis (Ogg Opus is recognised but refused: no pure-Rust decoder).
    Ogg,
    /// MP4/M4A with AAC or ALAC.
    M4a,
}

impl AudioFormatName {
    /// Lower-case name, the same string serde produces.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormatName::Wav => "wav",
            AudioFormatName::Mp3 => "mp3",
            AudioFormatName::Flac => "flac",
            AudioFormatName::Ogg => "ogg",
            AudioFormatName::M4a => "m4a",
        }
    }
}

/// What `probe_audio` measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AudioInfo {
    /// Container detected from the content.
    pub format: AudioFormatName,
    /// Playable length in seconds: decoded frames after removing encoder
    /// delay/padding, divided by the sample rate.
    pub duration_s: f64,
    /// Native sample rate in Hz.
    pub sample_rate: u32,
    /// Native channel count.
    pub channels: u16,
}

/// Decodes the whole file to measure its real playable duration. Headers are
/// not trusted (VBR MP3s without a Xing header, truncated uploads and padded
/// encodes all lie); the cost is one full decode, roughly 25-60 ms of CPU
/// per minute of MP3/AAC in release builds.
pub fn probe_audio(path: &Path) -> Result<AudioInfo, MediaError> {
    let (info, ()) = decode(path, (), |_, _, _| {})?;
    Ok(info)
}

/// Decodes, averages all channels to mono, and resamples to `target_rate` Hz
/// (windowed sinc). Encoder delay/padding are removed as in `probe_audio`.
pub fn decode_mono(path: &Path, target_rate: u32) -> Result<Vec<f32>, MediaError> {
    let mut scratch: Option<SampleBuffer<f32>> = None;
    let (info, mono) = decode(path, Vec::new(), |mono: &mut Vec<f32>, buf, range| {
        let spec = *buf.spec();
        let frames = buf.frames();
        let sb = match &mut scratch {
            Some(sb) if sb.capacity() >= frames * spec.channels.count() => sb,
            _ => scratch.insert(SampleBuffer::new(frames as u64, spec)),
        };
        sb.copy_interleaved_ref(buf.clone()); // cheap: a borrowed Cow
        let ch = spec.channels.count().max(1);
        let inv = 1.0 / ch as f32;
        mono.extend(
            sb.samples()[range.0 * ch..range.1 * ch]
                .chunks_exact(ch)
                .map(|f| f.iter().sum::<f32>() * inv),
        );
    })?;
    Ok(resample(&mono, info.sample_rate, target_rate))
}

/// Sniffs the container from the first bytes. Anything not clearly one of
/// ours is refused before symphonia sees it, because symphonia's probe scans
/// forward for sync words and would happily "find" MP3 frames inside a PNG.
fn sniff(path: &Path) -> Result<AudioFormatName, MediaError> {
    let mut head = Vec::with_capacity(64);
    File::open(path)?.take(64).read_to_end(&mut head)?;
    let unsupported = |detail: &str| MediaError::UnsupportedAudioFormat {
        detail: detail.to_owned(),
    };
    if head.len() < 12 {
        return Err(unsupported("the file is too short to be audio"));
    }
    if &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        return Ok(AudioFormatName::Wav);
    }
    if &head[0..4] == b"fLaC" {
        return Ok(AudioFormatName::Flac);
    }
    if &head[0..4] == b"OggS" {
        return Ok(AudioFormatName::Ogg);
    }
    if &head[4..8] == b"ftyp" {
        return Ok(AudioFormatName::M4a);
    }
    // ID3v2 tags precede MP3 (and, rarely, FLAC) data.
    if &head[0..3] == b"ID3" {
        return Ok(AudioFormatName::Mp3);
    }
    // MPEG audio frame sync (11 bits) with layer bits = Layer III.
    if head[0] == 0xFF && head[1] & 0xE0 == 0xE0 && (head[1] >> 1) & 0x3 == 0x1 {
        return Ok(AudioFormatName::Mp3);
    }
    if head[0] == 0xFF && head[1] & 0xF6 == 0xF0 {
        return Err(unsupported("raw AAC (ADTS) stream; upload it as .m4a"));
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Err(unsupported("WebM/Matroska (usually Opus) audio"));
    }
    Err(unsupported("the content is not a recognised audio file"))
}

/// Opens, demuxes and decodes the first audio track, calling `sink` with
/// every decoded buffer and the `[start, end)` frame range of it to keep.
fn decode<S>(
    path: &Path,
    state: S,
    mut sink: impl FnMut(&mut S, &AudioBufferRef<'_>, (usize, usize)),
) -> Result<(AudioInfo, S), MediaError> {
    let format = sniff(path)?;
    // Read the edit list before symphonia: it is the only source of AAC's
    // priming/padding (symphonia 0.5 trims MP3/Vorbis itself, not MP4).
    let edit = if format == AudioFormatName::M4a {
        mp4edit::read_edit(path)
    } else {
        None
    };
    let file = File::open(path)?;
    let mut state = state;
    let info = guard(
        |detail| MediaError::AudioDecodeFailed { detail },
        || run(format, edit, file, &mut state, &mut sink),
    )?;
    Ok((info, state))
}

fn run<S>(
    format: AudioFormatName,
    edit: Option<mp4edit::Mp4Edit>,
    file: File,
    state: &mut S,
    sink: &mut impl FnMut(&mut S, &AudioBufferRef<'_>, (usize, usize)),
) -> Result<AudioInfo, MediaError> {
    let failed = |detail: String| MediaError::AudioDecodeFailed { detail };
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    // The hint only orders symphonia's candidates; the sniff above decided.
    let mut hint = Hint::new();
    hint.with_extension(format.as_str());
    let fmt_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &fmt_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(what) => MediaError::UnsupportedAudioFormat {
                detail: what.to_owned(),
            },
            other => failed(format!("{} container: {other}", format.as_str())),
        })?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| MediaError::UnsupportedAudioFormat {
            detail: "no audio track found".into(),
        })?;
    let track_id = track.id;
    if track.codec_params.codec == CODEC_TYPE_OPUS {
        return Err(MediaError::UnsupportedAudioFormat {
            detail: "Opus audio is not supported; use Vorbis, MP3, AAC, FLAC or WAV".into(),
        });
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| MediaError::UnsupportedAudioFormat {
            detail: format!("audio codec not supported ({e})"),
        })?;

    // Frames still to drop / to keep, from the MP4 edit list (in the track's
    // timescale, which for audio is the sample rate).
    let (mut skip, mut keep) = match edit {
        Some(e) => (e.skip, Some(e.keep)),
        None => (0, None),
    };
    let mut frames: u64 = 0;
    let mut rate_channels: Option<(u32, u16)> = None;
    let (mut packets, mut bad_packets) = (0u64, 0u64);

    loop {
        let packet = match reader.next_packet() {
            Ok(p) => p,
            // End of stream (or a truncated upload: keep what decoded).
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            // A chained Ogg stream starts; the recording is the first one.
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                // Corruption after good audio is treated like truncation.
                if frames > 0 {
                    break;
                }
                return Err(failed(format!("reading {}: {e}", format.as_str())));
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        packets += 1;
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // Skip corrupt packets as players do; give up below if most are.
            Err(SymError::DecodeError(_)) | Err(SymError::IoError(_)) => {
                bad_packets += 1;
                continue;
            }
            Err(e) => return Err(failed(format!("decoding {}: {e}", format.as_str()))),
        };
        let spec = *buf.spec();
        let n = buf.frames();
        if n == 0 {
            continue;
        }
        let rc = (spec.rate, spec.channels.count() as u16);
        match rate_channels {
            None => rate_channels = Some(rc),
            // A mid-stream format change would make the sample count meaningless.
            Some(prev) if prev != rc => break,
            Some(_) => {}
        }
        let start = skip.min(n as u64) as usize;
        skip -= start as u64;
        let mut end = n;
        if let Some(k) = keep.as_mut() {
            end = start + (*k).min((n - start) as u64) as usize;
            *k -= (end - start) as u64;
        }
        if end > start {
            frames += (end - start) as u64;
            sink(state, &buf, (start, end));
        }
    }

    if packets > 0 && bad_packets * 2 > packets {
        return Err(failed(format!(
            "{bad_packets} of {packets} {} packets are corrupt",
            format.as_str()
        )));
    }
    let Some((sample_rate, channels)) = rate_channels else {
        return Err(MediaError::AudioEmpty);
    };
    if frames == 0 || sample_rate == 0 {
        return Err(MediaError::AudioEmpty);
    }
    Ok(AudioInfo {
        format,
        duration_s: frames as f64 / f64::from(sample_rate),
        sample_rate,
        channels,
    })
}

#[cfg(test)]
#[path = "audio_tests.rs"]
mod tests;
