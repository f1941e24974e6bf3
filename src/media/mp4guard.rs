//! Structural check of an MP4/M4A before symphonia parses it. symphonia's isomp4 reader sizes some
//! allocations from the counts in sample tables (`stts`, `stsc`, `stco`, ...) before reading them, and an
//! allocation failure aborts the whole process (it cannot be caught like a panic): a 70 KB file whose
//! `stts` claims 2^32 entries asked for 32 GiB. So every box must fit inside its parent and every table
//! must hold the entries it declares; then what symphonia allocates is bounded by the file's size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::MediaError;

/// Largest `moov` we load to check (real audio files have a few hundred KB).
const MAX_MOOV: u64 = 64 * 1024 * 1024;
/// Deepest box nesting followed (real files nest 6-8 deep).
const MAX_DEPTH: usize = 16;

fn refused(detail: impl Into<String>) -> MediaError {
    MediaError::UnsupportedAudioFormat {
        detail: format!("inconsistent MP4 structure: {}", detail.into()),
    }
}

/// Checks the top-level boxes and everything inside `moov`.
pub fn check(path: &Path) -> Result<(), MediaError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut pos = 0u64;
    let mut saw_moov = false;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head[..8])?;
        let kind: [u8; 4] = head[4..8].try_into().expect("four bytes");
        let mut size = u64::from(u32::from_be_bytes(
            head[0..4].try_into().expect("four bytes"),
        ));
        let mut header = 8;
        if size == 1 {
            file.read_exact(&mut head[8..16])?;
            size = u64::from_be_bytes(head[8..16].try_into().expect("eight bytes"));
            header = 16;
        } else if size == 0 {
            size = len - pos;
        }
        if size < header {
            return Err(refused(format!(
                "box {} is smaller than its header",
                name(&kind)
            )));
        }
        // A truncated upload may end inside `mdat` (what decoded is kept); any other box must fit.
        if pos.saturating_add(size) > len && &kind != b"mdat" {
            return Err(refused(format!(
                "box {} runs past the end of the file",
                name(&kind)
            )));
        }
        match &kind {
            b"moof" | b"mfra" => {
                // Browsers' recorders write these; ffmpeg decodes them (see `media::audio_upload`).
                return Err(MediaError::NeedsFfmpeg {
                    detail: "fragmented MP4 audio".to_owned(),
                });
            }
            b"moov" => {
                if saw_moov {
                    return Err(refused("more than one moov box"));
                }
                saw_moov = true;
                let body_len = size - header;
                if body_len > MAX_MOOV {
                    return Err(refused("the moov box is too large"));
                }
                let mut body = vec![0u8; body_len as usize];
                file.read_exact(&mut body)?;
                check_children(&body, 0)?;
            }
            _ => {}
        }
        pos = pos.saturating_add(size);
    }
    Ok(())
}

fn name(kind: &[u8]) -> String {
    kind.iter()
        .map(|b| {
            if b.is_ascii_graphic() {
                *b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Walks the boxes packed in `data`, checking that each fits and, recursively, what they hold.
pub(crate) fn check_children(data: &[u8], depth: usize) -> Result<(), MediaError> {
    if depth > MAX_DEPTH {
        return Err(refused("boxes nest too deep"));
    }
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(refused("trailing bytes too short for a box"));
        }
        let mut size = u32::from_be_bytes(rest[0..4].try_into().expect("four bytes")) as u64;
        let kind: [u8; 4] = rest[4..8].try_into().expect("four bytes");
        let mut header = 8u64;
        if size == 1 {
            if rest.len() < 16 {
                return Err(refused("truncated large-size box header"));
            }
            size = u64::from_be_bytes(rest[8..16].try_into().expect("eight bytes"));
            header = 16;
        } else if size == 0 {
            size = rest.len() as u64;
        }
        if size < header || size > rest.len() as u64 {
            return Err(refused(format!(
                "box {} does not fit in its parent",
                name(&kind)
            )));
        }
        let body = &rest[header as usize..size as usize];
        check_box(&kind, body, depth)?;
        rest = &rest[size as usize..];
    }
    Ok(())
}

/// Bytes per entry of the sample tables whose entry count (at offset 4, after version and flags)
/// sizes an allocation.
fn entry_size(kind: &[u8; 4], version: u8) -> Option<u64> {
    Some(match kind {
        b"stts" | b"ctts" | b"co64" | b"sbgp" => 8,
        b"stsc" => 12,
        b"stco" | b"stss" | b"stps" => 4,
        b"elst" => {
            if version == 1 {
                20
            } else {
                12
            }
        }
        // Sample descriptions and data references: each entry is at least a box header.
        b"stsd" | b"dref" => 8,
        _ => return None,
    })
}

fn check_box(kind: &[u8; 4], body: &[u8], depth: usize) -> Result<(), MediaError> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"edts" | b"udta" | b"dinf" | b"mvex"
        | b"tref" | b"ilst" => check_children(body, depth + 1),
        // `meta` is a full box in MP4 (4 bytes of version and flags first), a plain one in QuickTime.
        b"meta" => check_children(body.get(4..).unwrap_or_default(), depth + 1)
            .or_else(|_| check_children(body, depth + 1)),
        b"stsz" => {
            // version/flags, sample_size, sample_count; a table only when sample_size is 0.
            let sample_size = be32(body, 4)?;
            let count = u64::from(be32(body, 8)?);
            if sample_size == 0 && count.saturating_mul(4) > (body.len() as u64).saturating_sub(12)
            {
                return Err(refused(format!("stsz declares {count} sizes")));
            }
            Ok(())
        }
        b"stz2" => Err(refused("compact sample sizes (stz2) are not supported")),
        _ => {
            // Items inside `ilst` are containers of `data` boxes, whatever their names.
            if let Some(per_entry) = entry_size(kind, body.first().copied().unwrap_or(0)) {
                let offset = if kind == b"sbgp" { 8 } else { 4 };
                let count = u64::from(be32(body, offset)?);
                let room = (body.len() as u64).saturating_sub(offset as u64 + 4);
                if count.saturating_mul(per_entry) > room {
                    return Err(refused(format!(
                        "{} declares {count} entries in {room} bytes",
                        name(kind)
                    )));
                }
            }
            Ok(())
        }
    }
}

fn be32(body: &[u8], at: usize) -> Result<u32, MediaError> {
    body.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")))
        .ok_or_else(|| refused("a table box is too short for its header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn file_with_stbl(table: Vec<u8>) -> std::path::PathBuf {
        let stbl = boxed(b"stbl", &table);
        let moov = boxed(
            b"moov",
            &boxed(b"trak", &boxed(b"mdia", &boxed(b"minf", &stbl))),
        );
        let mut file = boxed(b"ftyp", b"M4A \0\0\0\0");
        file.extend(moov);
        let dir = std::env::temp_dir().join(format!("mp4guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.m4a", uuid::Uuid::new_v4()));
        std::fs::write(&path, file).unwrap();
        path
    }

    #[test]
    fn a_table_declaring_more_entries_than_it_holds_is_refused() {
        for kind in [
            b"stts", b"stsc", b"stco", b"co64", b"stss", b"elst", b"stsd",
        ] {
            // version/flags, count = 2^32-1, one entry's worth of bytes.
            let mut body = vec![0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
            body.extend([0u8; 12]);
            let err = check(&file_with_stbl(boxed(kind, &body))).unwrap_err();
            assert_eq!(err.code(), "unsupported_audio_format", "{}", name(kind));
        }
        let mut stsz = vec![0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        stsz.extend([0u8; 8]);
        assert!(check(&file_with_stbl(boxed(b"stsz", &stsz))).is_err());
    }

    #[test]
    fn consistent_tables_pass() {
        let mut stts = vec![0, 0, 0, 0, 0, 0, 0, 2];
        stts.extend([0u8; 16]);
        assert!(check(&file_with_stbl(boxed(b"stts", &stts))).is_ok());
        // A constant sample size needs no table.
        let stsz = [0, 0, 0, 0, 0, 0, 4, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(check(&file_with_stbl(boxed(b"stsz", &stsz))).is_ok());
    }

    #[test]
    fn a_child_larger_than_its_parent_is_refused() {
        let mut liar = boxed(b"stts", &[0u8; 16]);
        liar[0..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(check(&file_with_stbl(liar)).is_err());
    }
}
