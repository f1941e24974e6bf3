//! An uploaded MP4 video checked before any parser sees it (the provenance check's uploads), and its
//! `mdta` metadata read (where ffmpeg's `use_metadata_tags` writes the AIGC label). Every box must
//! fit inside the file and inside its parent, and the sample tables must hold the entries they
//! declare (`mp4guard`), so no parser that trusts box sizes can be made to allocate more than the
//! file's size, itself bounded by the upload limit.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::mp4guard;

/// Largest `moov` loaded (a video's sample tables: a few MB for an hour of video).
const MAX_MOOV: u64 = 64 * 1024 * 1024;
/// Most top-level boxes walked (real files have a handful).
const MAX_TOP_LEVEL_BOXES: usize = 10_000;

/// Why a file is not an MP4 we read.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Rejection {
    #[error("not an MP4 file: {0}")]
    NotMp4(String),
    #[error("inconsistent MP4 structure: {0}")]
    Malformed(String),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

impl Mp4Rejection {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Mp4Rejection::NotMp4(_) => "not_mp4",
            Mp4Rejection::Malformed(_) => "malformed_mp4",
            Mp4Rejection::Io(_) => "unreadable",
        }
    }
}

/// One top-level box: its type, where its body starts and how long it is.
struct TopBox {
    kind: [u8; 4],
    body_start: u64,
    body_len: u64,
}

fn top_level_boxes(file: &mut File, len: u64) -> Result<Vec<TopBox>, Mp4Rejection> {
    let mut boxes = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        if boxes.len() >= MAX_TOP_LEVEL_BOXES {
            return Err(Mp4Rejection::Malformed("too many top-level boxes".into()));
        }
        if len - pos < 8 {
            return Err(Mp4Rejection::Malformed(
                "trailing bytes too short for a box".into(),
            ));
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head[..8])?;
        let kind: [u8; 4] = head[4..8].try_into().expect("four bytes");
        let mut size = u64::from(u32::from_be_bytes(
            head[0..4].try_into().expect("four bytes"),
        ));
        let mut header = 8u64;
        if size == 1 {
            if len - pos < 16 {
                return Err(Mp4Rejection::Malformed(
                    "truncated large-size box header".into(),
                ));
            }
            file.read_exact(&mut head[8..16])?;
            size = u64::from_be_bytes(head[8..16].try_into().expect("eight bytes"));
            header = 16;
        } else if size == 0 {
            size = len - pos;
        }
        if size < header || size > len - pos {
            return Err(Mp4Rejection::Malformed(format!(
                "box {} does not fit in the file",
                printable(&kind)
            )));
        }
        boxes.push(TopBox {
            kind,
            body_start: pos + header,
            body_len: size - header,
        });
        pos += size;
    }
    Ok(boxes)
}

/// Checks the MP4 at `path`; its `moov` body, for reading metadata from.
pub fn check(path: &Path) -> Result<Vec<u8>, Mp4Rejection> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < 8 || file.read_exact(&mut magic).is_err() || &magic[4..8] != b"ftyp" {
        return Err(Mp4Rejection::NotMp4(
            "it does not start with an ftyp box".into(),
        ));
    }
    let boxes = top_level_boxes(&mut file, len)?;
    let mut moov = None;
    for top in &boxes {
        match &top.kind {
            b"moov" => {
                if moov.is_some() {
                    return Err(Mp4Rejection::Malformed("more than one moov box".into()));
                }
                if top.body_len > MAX_MOOV {
                    return Err(Mp4Rejection::Malformed("the moov box is too large".into()));
                }
                let body = read_body(&mut file, top)?;
                check_children(&body)?;
                moov = Some(body);
            }
            b"moof" => {
                if top.body_len > MAX_MOOV {
                    return Err(Mp4Rejection::Malformed("a moof box is too large".into()));
                }
                check_children(&read_body(&mut file, top)?)?;
            }
            _ => {}
        }
    }
    moov.ok_or_else(|| Mp4Rejection::NotMp4("it has no moov box".into()))
}

fn read_body(file: &mut File, top: &TopBox) -> Result<Vec<u8>, Mp4Rejection> {
    file.seek(SeekFrom::Start(top.body_start))?;
    let mut body = vec![0u8; top.body_len as usize];
    file.read_exact(&mut body)?;
    Ok(body)
}

fn check_children(body: &[u8]) -> Result<(), Mp4Rejection> {
    mp4guard::check_children(body, 0).map_err(|e| {
        let text = e.to_string();
        let detail = text
            .strip_prefix("unsupported audio format: inconsistent MP4 structure: ")
            .unwrap_or(&text);
        Mp4Rejection::Malformed(
            detail
                .split(" (accepted")
                .next()
                .unwrap_or(detail)
                .to_owned(),
        )
    })
}

/// The value of the `mdta` metadata item named `key` (UTF-8), in `moov/udta/meta` or `moov/meta`.
pub fn metadata_value(moov: &[u8], key: &str) -> Option<String> {
    let meta = child(moov, b"meta").or_else(|| child(child(moov, b"udta")?, b"meta"))?;
    // A full box in MP4 (version and flags first); QuickTime's has none: try both.
    read_mdta(meta.get(4..)?, key).or_else(|| read_mdta(meta, key))
}

fn read_mdta(meta: &[u8], key: &str) -> Option<String> {
    let keys = child(meta, b"keys")?;
    let ilst = child(meta, b"ilst")?;
    // keys: version/flags, entry count, then (size, namespace, name) per key; indices start at 1.
    let count = u32::from_be_bytes(keys.get(4..8)?.try_into().ok()?);
    let mut rest = keys.get(8..)?;
    let mut index = None;
    for i in 1..=count {
        let size = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        let entry = rest.get(8..size)?;
        if rest.get(4..8)? == b"mdta" && entry == key.as_bytes() {
            index = Some(i);
            break;
        }
        rest = rest.get(size..)?;
    }
    let item = child(ilst, &index?.to_be_bytes())?;
    let data = child(item, b"data")?;
    // data: type (1: UTF-8), locale, value.
    if u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) != 1 {
        return None;
    }
    String::from_utf8(data.get(8..)?.to_vec()).ok()
}

/// The body of the first child box of type `kind` in `data` (boxes already checked to fit).
fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let mut rest = data;
    while rest.len() >= 8 {
        let mut size = u32::from_be_bytes(rest[0..4].try_into().ok()?) as u64;
        let mut header = 8usize;
        if size == 1 {
            size = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
            header = 16;
        } else if size == 0 {
            size = rest.len() as u64;
        }
        let size = usize::try_from(size).ok()?;
        if size < header || size > rest.len() {
            return None;
        }
        if &rest[4..8] == kind {
            return Some(&rest[header..size]);
        }
        rest = &rest[size..];
    }
    None
}

fn printable(kind: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn mdta_moov(key: &str, value: &str) -> Vec<u8> {
        let mut keys = vec![0, 0, 0, 0, 0, 0, 0, 1];
        keys.extend(((key.len() + 8) as u32).to_be_bytes());
        keys.extend(b"mdta");
        keys.extend(key.as_bytes());
        let mut data = vec![0, 0, 0, 1, 0, 0, 0, 0];
        data.extend(value.as_bytes());
        let ilst = boxed(b"ilst", &boxed(&1u32.to_be_bytes(), &boxed(b"data", &data)));
        let mut meta = vec![0, 0, 0, 0];
        meta.extend(boxed(b"keys", &keys));
        meta.extend(ilst);
        boxed(b"moov", &boxed(b"udta", &boxed(b"meta", &meta)))
    }

    #[test]
    fn reads_an_mdta_value_from_a_well_formed_file() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(mdta_moov("AIGC", r#"{"Label":"1"}"#));
        bytes.extend(boxed(b"mdat", &[0u8; 16]));
        let file = write(&bytes);
        let moov = check(file.path()).unwrap();
        assert_eq!(
            metadata_value(&moov, "AIGC").as_deref(),
            Some(r#"{"Label":"1"}"#)
        );
        assert_eq!(metadata_value(&moov, "other"), None);
    }

    #[test]
    fn refuses_what_is_not_an_mp4() {
        let file = write(b"<html>hello</html>");
        assert_eq!(check(file.path()).unwrap_err().code(), "not_mp4");
        let file = write(b"");
        assert_eq!(check(file.path()).unwrap_err().code(), "not_mp4");
    }

    #[test]
    fn refuses_a_box_claiming_more_than_the_file_holds() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        // A large-size mdat claiming 2^62 bytes.
        bytes.extend(1u32.to_be_bytes());
        bytes.extend(b"mdat");
        bytes.extend((1u64 << 62).to_be_bytes());
        bytes.extend([0u8; 32]);
        let file = write(&bytes);
        assert_eq!(check(file.path()).unwrap_err().code(), "malformed_mp4");
    }

    #[test]
    fn refuses_a_truncated_file_and_a_table_larger_than_its_box() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(mdta_moov("AIGC", "x"));
        bytes.extend(boxed(b"mdat", &[0u8; 64]));
        bytes.truncate(bytes.len() - 10);
        let file = write(&bytes);
        assert_eq!(check(file.path()).unwrap_err().code(), "malformed_mp4");

        let stts = boxed(b"stts", &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(boxed(b"moov", &boxed(b"trak", &stts)));
        let file = write(&bytes);
        assert_eq!(check(file.path()).unwrap_err().code(), "malformed_mp4");
    }

    #[test]
    fn a_file_without_moov_is_not_a_video() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(boxed(b"mdat", &[0u8; 8]));
        let file = write(&bytes);
        assert_eq!(check(file.path()).unwrap_err().code(), "not_mp4");
    }
}
