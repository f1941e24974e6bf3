//! Speech-recording intake: content-sniffed container check, full decode to
//! measure the playable duration, and mono/resampled PCM for the engine.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use symphonia::core::audio::{AudioBufferRef, SampleBuffer};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{guard, mp4edit, mp4guard, resample::resample, MediaError};

/// How far past a duration limit decoding goes before giving up: a recording
/// that is a hair over the limit still gets its exact duration measured (and
/// refused with it); one that is far over stops costing CPU here.
const TOO_LONG_SLACK_S: f64 = 1.0;

/// Sample rates accepted: telephone speech to studio audio. Absurd rates in a header (4 GHz) would make
/// the resampler allocate gigabytes; they are refused before anything is resampled.
const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;
/// Shortest recording accepted: a few video frames.
const MIN_DURATION_S: f64 = 0.2;

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
    /// Ogg Vorbis, or Ogg Opus (decoded by ffmpeg: no pure-Rust decoder).
    Ogg,
    /// MP4/MOV/M4A with AAC or ALAC (fragmented files and Opus decoded by ffmpeg).
    M4a,
    /// WebM/Matroska, usually Opus from a browser (decoded by ffmpeg).
    Webm,
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
            AudioFormatName::Webm => "webm",
        }
    }

    /// The ffmpeg demuxer for an upload in this container that symphonia cannot decode.
    pub fn upload_demuxer(self) -> Option<crate::media::ffmpeg::UploadDemuxer> {
        use crate::media::ffmpeg::UploadDemuxer;
        match self {
            AudioFormatName::Ogg => Some(UploadDemuxer::Ogg),
            AudioFormatName::M4a => Some(UploadDemuxer::Mov),
            AudioFormatName::Webm => Some(UploadDemuxer::Matroska),
            AudioFormatName::Wav | AudioFormatName::Mp3 | AudioFormatName::Flac => None,
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
///
/// With `max_duration_s`, decoding stops as soon as the recording is longer
/// than that (plus a second of slack) and answers [`MediaError::AudioTooLong`],
/// so an hour of compressed silence costs no more than the limit.
pub fn probe_audio(path: &Path, max_duration_s: Option<f64>) -> Result<AudioInfo, MediaError> {
    let (info, ()) = decode(path, max_duration_s, (), |_, _, _| {})?;
    Ok(info)
}

/// Raw PCM that this process decoded itself: interleaved little-endian `f32`
/// samples in a file with no header. The encoder reads it with the raw `f32le`
/// demuxer forced, so nothing in an upload can steer ffmpeg's format
/// detection or make it open another file (playlists, `concat:`, `subfile`).
#[derive(Debug, Clone, PartialEq)]
pub struct PcmFile {
    /// The headerless `f32le` file.
    pub path: std::path::PathBuf,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// 1 or 2 (more channels are mixed down to mono).
    pub channels: u16,
}

/// Decodes `path` once for rendering: writes the playable audio (encoder
/// delay and padding removed, as in [`probe_audio`]) to `pcm_out` as raw
/// `f32le`, and returns it also as mono at `target_rate` Hz for the animation.
///
/// `max_duration_s` stops decoding past that length (plus a second), as in [`probe_audio`]: the job's
/// measured duration, so a file cannot cost more at render time than it did at intake.
pub fn decode_for_render(
    path: &Path,
    pcm_out: &Path,
    target_rate: u32,
    max_duration_s: Option<f64>,
) -> Result<(Vec<f32>, PcmFile), MediaError> {
    struct Sink {
        out: BufWriter<File>,
        write_error: Option<std::io::Error>,
        mono: Vec<f32>,
        scratch: Option<SampleBuffer<f32>>,
        file_channels: Option<usize>,
    }
    let sink = Sink {
        out: BufWriter::new(File::create(pcm_out)?),
        write_error: None,
        mono: Vec::new(),
        scratch: None,
        file_channels: None,
    };
    let (info, mut sink) = decode(path, max_duration_s, sink, |s: &mut Sink, buf, range| {
        let spec = *buf.spec();
        let ch = spec.channels.count().max(1);
        let file_ch = *s.file_channels.get_or_insert(if ch <= 2 { ch } else { 1 });
        let samples = interleaved(&mut s.scratch, buf);
        let inv = 1.0 / ch as f32;
        for frame in samples[range.0 * ch..range.1 * ch].chunks_exact(ch) {
            let mono = frame.iter().sum::<f32>() * inv;
            s.mono.push(mono);
            if s.write_error.is_some() {
                continue;
            }
            let written = if file_ch == ch {
                frame
                    .iter()
                    .try_for_each(|v| s.out.write_all(&v.to_le_bytes()))
            } else {
                s.out.write_all(&mono.to_le_bytes())
            };
            if let Err(e) = written {
                s.write_error = Some(e);
            }
        }
    })?;
    if let Some(err) = sink.write_error.take() {
        return Err(MediaError::Io(err));
    }
    sink.out.flush()?;
    let pcm = PcmFile {
        path: pcm_out.to_path_buf(),
        sample_rate: info.sample_rate,
        channels: sink.file_channels.unwrap_or(1) as u16,
    };
    Ok((resample(&sink.mono, info.sample_rate, target_rate), pcm))
}

/// The buffer's samples, interleaved, in a scratch buffer reused across calls.
fn interleaved<'a>(
    scratch: &'a mut Option<SampleBuffer<f32>>,
    buf: &AudioBufferRef<'_>,
) -> &'a [f32] {
    let spec = *buf.spec();
    let frames = buf.frames();
    if scratch
        .as_ref()
        .is_none_or(|sb| sb.capacity() < frames * spec.channels.count())
    {
        *scratch = Some(SampleBuffer::new(frames as u64, spec));
    }
    let sb = scratch.as_mut().expect("allocated above");
    sb.copy_interleaved_ref(buf.clone()); // cheap: a borrowed Cow
    sb.samples()
}

/// Decodes, averages all channels to mono, and resamples to `target_rate` Hz
/// (windowed sinc). Encoder delay/padding are removed as in `probe_audio`.
pub fn decode_mono(path: &Path, target_rate: u32) -> Result<Vec<f32>, MediaError> {
    let mut scratch: Option<SampleBuffer<f32>> = None;
    let (info, mono) = decode(path, None, Vec::new(), |mono: &mut Vec<f32>, buf, range| {
        let ch = buf.spec().channels.count().max(1);
        let inv = 1.0 / ch as f32;
        mono.extend(
            interleaved(&mut scratch, buf)[range.0 * ch..range.1 * ch]
                .chunks_exact(ch)
                .map(|f| f.iter().sum::<f32>() * inv),
        );
    })?;
    Ok(resample(&mono, info.sample_rate, target_rate))
}

/// The container of the file at `path`, from its first bytes (as [`probe_audio`] sees it).
pub fn sniff_format(path: &Path) -> Result<AudioFormatName, MediaError> {
    sniff(path)
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
    // ID3v2 tags precede MP3 data. What follows the tag must be an MPEG
    // audio frame: anything else (an HLS playlist, a concat list, another
    // container) is a polyglot built to make some tool guess differently.
    if &head[0..3] == b"ID3" {
        return after_id3(path, &head).map(|()| AudioFormatName::Mp3);
    }
    if is_mp3_frame_sync(&head) {
        return Ok(AudioFormatName::Mp3);
    }
    if head[0] == 0xFF && head[1] & 0xF6 == 0xF0 {
        return Err(unsupported("raw AAC (ADTS) stream; upload it as .m4a"));
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Ok(AudioFormatName::Webm);
    }
    Err(unsupported("the content is not a recognised audio file"))
}

/// MPEG audio frame sync (11 bits) with layer bits = Layer III.
fn is_mp3_frame_sync(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0 && (b[1] >> 1) & 0x3 == 0x1
}

/// Most zero bytes of padding accepted between an ID3 tag and the first frame.
const MAX_ID3_GAP: usize = 4096;
/// Most ID3 tags accepted in a row (some taggers write more than one).
const MAX_ID3_TAGS: usize = 4;

/// Checks that the ID3v2 tag(s) at the start of the file are followed by an
/// MPEG Layer III frame (after at most [`MAX_ID3_GAP`] zero bytes).
fn after_id3(path: &Path, head: &[u8]) -> Result<(), MediaError> {
    let polyglot = |detail: &str| MediaError::UnsupportedAudioFormat {
        detail: detail.to_owned(),
    };
    if head.len() < 10 {
        return Err(polyglot("truncated ID3 tag"));
    }
    let mut file = File::open(path)?;
    let mut offset: u64 = 0;
    for _ in 0..MAX_ID3_TAGS {
        let mut header = [0u8; 10];
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
        if file.read_exact(&mut header).is_err() {
            return Err(polyglot("the ID3 tag is not followed by MP3 audio"));
        }
        if &header[0..3] != b"ID3" {
            break;
        }
        // Tag size: four 7-bit "syncsafe" bytes; a footer adds 10 bytes.
        if header[6..10].iter().any(|b| b & 0x80 != 0) {
            return Err(polyglot("malformed ID3 tag size"));
        }
        let size = header[6..10]
            .iter()
            .fold(0u64, |acc, b| (acc << 7) | u64::from(*b));
        let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
        offset += 10 + size + footer;
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    let mut after = Vec::with_capacity(MAX_ID3_GAP + 4);
    file.take((MAX_ID3_GAP + 4) as u64)
        .read_to_end(&mut after)?;
    let start = after.iter().position(|b| *b != 0).unwrap_or(after.len());
    if start <= MAX_ID3_GAP && is_mp3_frame_sync(&after[start..]) {
        Ok(())
    } else {
        Err(polyglot(
            "the ID3 tag is followed by something other than MP3 audio",
        ))
    }
}

/// Opens, demuxes and decodes the first audio track, calling `sink` with
/// every decoded buffer and the `[start, end)` frame range of it to keep.
fn decode<S>(
    path: &Path,
    max_duration_s: Option<f64>,
    state: S,
    mut sink: impl FnMut(&mut S, &AudioBufferRef<'_>, (usize, usize)),
) -> Result<(AudioInfo, S), MediaError> {
    let format = sniff(path)?;
    if format == AudioFormatName::Webm {
        return Err(MediaError::NeedsFfmpeg {
            detail: "WebM/Matroska audio".into(),
        });
    }
    // Read the edit list before symphonia: it is the only source of AAC's
    // priming/padding (symphonia 0.5 trims MP3/Vorbis itself, not MP4).
    let edit = if format == AudioFormatName::M4a {
        mp4guard::check(path)?;
        mp4edit::read_edit(path)
    } else {
        None
    };
    let file = File::open(path)?;
    let mut state = state;
    let info = guard(
        |detail| MediaError::AudioDecodeFailed { detail },
        || run(format, edit, file, max_duration_s, &mut state, &mut sink),
    )?;
    Ok((info, state))
}

fn run<S>(
    format: AudioFormatName,
    edit: Option<mp4edit::Mp4Edit>,
    file: File,
    max_duration_s: Option<f64>,
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
        return Err(MediaError::NeedsFfmpeg {
            detail: format!("Opus audio in {}", format.as_str()),
        });
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| MediaError::NeedsFfmpeg {
            detail: format!("audio codec not supported here ({e})"),
        })?;

    // Frames still to drop / to keep, from the MP4 edit list (in the track's
    // timescale, which for audio is the sample rate).
    let (mut skip, mut keep) = match edit {
        Some(e) => (e.skip, Some(e.keep)),
        None => (0, None),
    };
    let mut frames: u64 = 0;
    // Frames decoded, including those the edit list trims.
    let mut decoded: u64 = 0;
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
        if !SAMPLE_RATES.contains(&rc.0) {
            return Err(MediaError::UnsupportedAudioFormat {
                detail: format!(
                    "a sample rate of {} Hz (accepted: {} to {} Hz)",
                    rc.0,
                    SAMPLE_RATES.start(),
                    SAMPLE_RATES.end()
                ),
            });
        }
        decoded += n as u64;
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
        // Every decoded frame counts, trimmed or not: an edit list that keeps 5 s of a 10-hour
        // file must not make us decode the 10 hours.
        if let Some(max) = max_duration_s {
            if decoded as f64 > (max + TOO_LONG_SLACK_S) * f64::from(rc.0.max(1)) {
                return Err(MediaError::AudioTooLong { max_s: max });
            }
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
    if (frames as f64) < MIN_DURATION_S * f64::from(sample_rate) {
        return Err(MediaError::AudioTooShort {
            min_s: MIN_DURATION_S,
        });
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
