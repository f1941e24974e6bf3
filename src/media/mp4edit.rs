//! Minimal MP4/M4A box walker that extracts the audio track's edit list.
//!
//! symphonia 0.5's isomp4 reader ignores `elst`, so AAC's encoder priming
//! (typically 1024 or 2112 samples) and end padding would be counted as
//! audio. Encoders (ffmpeg, Apple) record the playable span in the edit list:
//! `media_time` = priming to skip, `segment_duration` = playable length.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The playable span of the first sound track, in that track's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Edit {
    /// Leading frames to drop (encoder priming).
    pub skip: u64,
    /// Frames to keep after `skip`.
    pub keep: u64,
    /// The track's media timescale (normally the sample rate).
    pub timescale: u32,
}

/// Upper bound on the `moov` box we are willing to load; real audio files
/// have a few hundred KB at most.
const MAX_MOOV: u64 = 64 * 1024 * 1024;

/// Reads the edit list of the first `soun` track. `None` if the file has no
/// usable edit list (then nothing is trimmed) or is not parseable.
pub fn read_edit(path: &Path) -> Option<Mp4Edit> {
    let mut f = File::open(path).ok()?;
    let file_len = f.metadata().ok()?.len();
    let mut pos = 0u64;
    // Walk top-level boxes, skipping `mdat` without reading it.
    while pos + 8 <= file_len {
        f.seek(SeekFrom::Start(pos)).ok()?;
        let mut hdr = [0u8; 16];
        f.read_exact(&mut hdr[..8]).ok()?;
        let mut size = u64::from(u32::from_be_bytes(hdr[0..4].try_into().ok()?));
        let kind: [u8; 4] = hdr[4..8].try_into().ok()?;
        let mut hdr_len = 8;
        if size == 1 {
            f.read_exact(&mut hdr[8..16]).ok()?;
            size = u64::from_be_bytes(hdr[8..16].try_into().ok()?);
            hdr_len = 16;
        } else if size == 0 {
            size = file_len - pos;
        }
        if size < hdr_len || pos.checked_add(size)? > file_len {
            return None;
        }
        if &kind == b"moov" {
            let body_len = size - hdr_len;
            if body_len > MAX_MOOV {
                return None;
            }
            let mut body = vec![0u8; body_len as usize];
            f.read_exact(&mut body).ok()?;
            return parse_moov(&body);
        }
        pos += size;
    }
    None
}

/// Iterates `(type, body)` of the boxes packed in `data`; stops at the first
/// malformed header.
fn boxes(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 8 {
            return None;
        }
        let mut size = u32::from_be_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = &rest[4..8];
        let mut hdr = 8;
        if size == 1 {
            if rest.len() < 16 {
                return None;
            }
            size = usize::try_from(u64::from_be_bytes(rest[8..16].try_into().ok()?)).ok()?;
            hdr = 16;
        } else if size == 0 {
            size = rest.len();
        }
        if size < hdr || size > rest.len() {
            return None;
        }
        let body = &rest[hdr..size];
        rest = &rest[size..];
        Some((kind, body))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, b)| b)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Timescale field of `mvhd` / `mdhd` (same layout up to it).
fn timescale(full_box: &[u8]) -> Option<u32> {
    let at = if full_box.first()? == &1 {
        4 + 16
    } else {
        4 + 8
    };
    be32(full_box, at).filter(|t| *t > 0)
}

fn parse_moov(moov: &[u8]) -> Option<Mp4Edit> {
    let movie_ts = timescale(child(moov, b"mvhd")?)?;
    let trak = boxes(moov)
        .filter(|(k, _)| k == b"trak")
        .map(|(_, b)| b)
        .find(|t| {
            child(t, b"mdia")
                .and_then(|m| child(m, b"hdlr"))
                .and_then(|h| h.get(8..12))
                == Some(b"soun".as_slice())
        })?;
    let media_ts = timescale(child(child(trak, b"mdia")?, b"mdhd")?)?;
    let elst = child(child(trak, b"edts")?, b"elst")?;
    let v1 = *elst.first()? == 1;
    let count = be32(elst, 4)?;
    let entry_len = if v1 { 20 } else { 12 };
    // First non-empty edit (media_time != -1); empty edits only insert
    // silence before playback, which is not part of the recording.
    for i in 0..count.min(64) as usize {
        let at = 8 + i * entry_len;
        let (dur, media_time) = if v1 {
            (be64(elst, at)?, be64(elst, at + 8)? as i64)
        } else {
            (
                u64::from(be32(elst, at)?),
                i64::from(be32(elst, at + 4)? as i32),
            )
        };
        if media_time < 0 {
            continue;
        }
        let keep = (u128::from(dur) * u128::from(media_ts) / u128::from(movie_ts)) as u64;
        return Some(Mp4Edit {
            skip: media_time as u64,
            keep,
            timescale: media_ts,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn hd(ts: u32) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&[0u8; 8]);
        v
    }

    #[test]
    fn parses_synthetic_moov() {
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(b"soun");
        hdlr.extend_from_slice(&[0u8; 12]);
        let mut elst = vec![0, 0, 0, 0, 0, 0, 0, 1];
        elst.extend_from_slice(&7560u32.to_be_bytes()); // 7.56 s at 1000
        elst.extend_from_slice(&1024u32.to_be_bytes());
        elst.extend_from_slice(&[0, 1, 0, 0]);
        let mdia = [bx(b"mdhd", &hd(22_050)), bx(b"hdlr", &hdlr)].concat();
        let trak = [bx(b"edts", &bx(b"elst", &elst)), bx(b"mdia", &mdia)].concat();
        let moov = [bx(b"mvhd", &hd(1000)), bx(b"trak", &trak)].concat();
        let file = [
            bx(b"ftyp", b"M4A \0\0\0\0"),
            bx(b"moov", &moov),
            bx(b"mdat", &[0; 32]),
        ]
        .concat();
        let dir = std::env::temp_dir().join(format!("media-mp4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.m4a");
        std::fs::write(&p, &file).unwrap();
        let e = read_edit(&p).unwrap();
        assert_eq!(
            e,
            Mp4Edit {
                skip: 1024,
                keep: 166_698,
                timescale: 22_050
            }
        );

        // Truncations never panic.
        for cut in 0..file.len() {
            std::fs::write(&p, &file[..cut]).unwrap();
            let _ = read_edit(&p);
        }
    }
}
