//! Face-photo intake: content-sniffed format check, size limits enforced from
//! the header before any pixel is decoded, EXIF orientation applied.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use super::{guard, MediaError};

/// Upper bounds for an uploaded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Maximum file size in bytes.
    pub max_bytes: u64,
    /// Maximum width and maximum height in pixels (checked on the stored,
    /// un-rotated dimensions; rotation only swaps them).
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 20 * 1024 * 1024,
            max_side: 4096,
        }
    }
}

/// The accepted image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormatName {
    /// JPEG / JFIF / EXIF.
    Jpeg,
    /// PNG (first frame only if animated).
    Png,
    /// WebP, lossy or lossless (first frame only if animated).
    Webp,
}

impl ImageFormatName {
    /// Lower-case name, the same string serde produces.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormatName::Jpeg => "jpeg",
            ImageFormatName::Png => "png",
            ImageFormatName::Webp => "webp",
        }
    }
}

/// A decoded, upright image.
#[derive(Debug, Clone)]
pub struct ProbedImage {
    /// Format detected from the file content.
    pub format: ImageFormatName,
    /// Width after EXIF orientation was applied.
    pub width: u32,
    /// Height after EXIF orientation was applied.
    pub height: u32,
    /// 8-bit RGB pixels, upright; alpha (if any) is dropped.
    pub image: RgbImage,
}

/// Opens `path`, checks it is a JPEG, PNG or WebP by its magic bytes, refuses
/// it if the file or its header dimensions exceed `limits`, then decodes it and
/// applies the EXIF orientation.
///
/// The file name and extension are ignored on purpose: uploads arrive with
/// arbitrary names.
pub fn probe_image(path: &Path, limits: &ImageLimits) -> Result<ProbedImage, MediaError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limits.max_bytes {
        return Err(MediaError::ImageTooLarge {
            detail: format!(
                "file is {size} bytes, the limit is {} bytes",
                limits.max_bytes
            ),
        });
    }
    if size == 0 {
        return Err(MediaError::UnsupportedImageFormat {
            detail: "the file is empty".into(),
        });
    }
    guard(
        |detail| MediaError::ImageDecodeFailed { detail },
        || decode(BufReader::new(file), limits),
    )
}

fn decode(reader: BufReader<File>, limits: &ImageLimits) -> Result<ProbedImage, MediaError> {
    // No format is preset, so only the content decides (with_guessed_format
    // looks at magic bytes alone).
    let mut reader = ImageReader::new(reader).with_guessed_format()?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => ImageFormatName::Jpeg,
        Some(ImageFormat::Png) => ImageFormatName::Png,
        Some(ImageFormat::WebP) => ImageFormatName::Webp,
        Some(other) => {
            return Err(MediaError::UnsupportedImageFormat {
                detail: format!("the file is {other:?}"),
            })
        }
        None => {
            return Err(MediaError::UnsupportedImageFormat {
                detail: "the content is not a recognised image".into(),
            })
        }
    };

    // Building the decoder parses only the header; the memory cap applies
    // to that already (e.g. huge PNG text chunks).
    let side = u64::from(limits.max_side);
    // RGBA8 output plus one same-size scratch buffer, plus slack for tables.
    let max_alloc = side * side * 4 * 2 + 64 * 1024 * 1024;
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(max_alloc);
    reader.limits(header_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, limits))?;
    let (w, h) = decoder.dimensions();
    if w > limits.max_side || h > limits.max_side {
        return Err(too_large(w, h, limits));
    }
    if w == 0 || h == 0 {
        return Err(MediaError::ImageDecodeFailed {
            detail: format!("the image has no pixels ({w}x{h})"),
        });
    }
    // Decoder-level limits are the second line of defence: the decoder itself
    // then refuses oversize frames (e.g. a later WebP/APNG frame bigger than
    // the header said) and caps its allocations.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(max_alloc);
    decoder
        .set_limits(decoder_limits)
        .map_err(|e| map_image_error(e, limits))?;
    // A broken EXIF block should not reject an otherwise good photo.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);

    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, limits))?;
    img.apply_orientation(orientation);
    let image = img.into_rgb8();
    Ok(ProbedImage {
        format,
        width: image.width(),
        height: image.height(),
        image,
    })
}

fn too_large(w: u32, h: u32, limits: &ImageLimits) -> MediaError {
    MediaError::ImageTooLarge {
        detail: format!("{w}x{h} pixels, the limit is {0}x{0}", limits.max_side),
    }
}

fn map_image_error(e: image::ImageError, limits: &ImageLimits) -> MediaError {
    use image::error::{ImageError, LimitErrorKind};
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => MediaError::ImageTooLarge {
                detail: format!("dimensions exceed {0}x{0} pixels", limits.max_side),
            },
            _ => MediaError::ImageTooLarge {
                detail: format!("decoding would need too much memory ({l})"),
            },
        },
        ImageError::Unsupported(u) => MediaError::UnsupportedImageFormat {
            detail: u.to_string(),
        },
        other => MediaError::ImageDecodeFailed {
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};
    use std::path::PathBuf;

    const ASTRONAUT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/samples/face_astronaut.png"
    );

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("media-img-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
    }

    #[test]
    fn astronaut_png() {
        let p = probe_image(Path::new(ASTRONAUT), &ImageLimits::default()).unwrap();
        assert_eq!(p.format, ImageFormatName::Png);
        assert_eq!((p.width, p.height), (512, 512));
        assert_eq!(p.image.dimensions(), (512, 512));
    }

    #[test]
    fn format_from_content_not_name() {
        // A PNG named .jpg is still a PNG; a text file named .png is rejected.
        let fake = tmp("really_png.jpg");
        std::fs::copy(ASTRONAUT, &fake).unwrap();
        let p = probe_image(&fake, &ImageLimits::default()).unwrap();
        assert_eq!(p.format, ImageFormatName::Png);

        let txt = tmp("notes.png");
        std::fs::write(&txt, b"hello, this is not an image at all").unwrap();
        let e = probe_image(&txt, &ImageLimits::default()).unwrap_err();
        assert_eq!(e.code(), "unsupported_image_format");
    }

    #[test]
    fn jpeg_and_webp_roundtrip() {
        let img = gradient(64, 48);
        let jpg = tmp("g.bin");
        img.save_with_format(&jpg, ImageFormat::Jpeg).unwrap();
        let p = probe_image(&jpg, &ImageLimits::default()).unwrap();
        assert_eq!(
            (p.format, p.width, p.height),
            (ImageFormatName::Jpeg, 64, 48)
        );

        let webp = tmp("g2.bin");
        img.save_with_format(&webp, ImageFormat::WebP).unwrap();
        let p = probe_image(&webp, &ImageLimits::default()).unwrap();
        assert_eq!(
            (p.format, p.width, p.height),
            (ImageFormatName::Webp, 64, 48)
        );
        assert_eq!(serde_json::to_string(&p.format).unwrap(), "\"webp\"");
    }

    #[test]
    fn other_formats_rejected() {
        // Hand-made BMP and GIF headers: recognised by `image` but not accepted.
        let bmp = tmp("x.bmp");
        std::fs::write(&bmp, b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0").unwrap();
        let gif = tmp("x.gif");
        std::fs::write(&gif, b"GIF89a\x01\0\x01\0\0\0\0;").unwrap();
        for p in [bmp, gif] {
            let e = probe_image(&p, &ImageLimits::default()).unwrap_err();
            assert_eq!(e.code(), "unsupported_image_format", "{e}");
        }
    }

    /// PNG's CRC-32 (IEEE, reflected), bitwise: only used on a few bytes.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn oversize_refused_from_header() {
        // A PNG header claiming 100000x100000 with no pixel data at all: must
        // be refused as too large, not attempted.
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        // IHDR width/height live at bytes 16..24, its CRC (over type + data)
        // at 29..33. A valid header with no matching pixel data: a 30 GB bomb.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let bomb = tmp("bomb.png");
        std::fs::write(&bomb, &png).unwrap();
        let e = probe_image(&bomb, &ImageLimits::default()).unwrap_err();
        assert_eq!(e.code(), "image_too_large", "{e}");
        assert!(e.to_string().contains("100000x100000"), "{e}");

        // A real, valid image just over a small limit.
        let big = tmp("big.png");
        gradient(300, 20)
            .save_with_format(&big, ImageFormat::Png)
            .unwrap();
        let limits = ImageLimits {
            max_side: 256,
            ..ImageLimits::default()
        };
        let e = probe_image(&big, &limits).unwrap_err();
        assert_eq!(e.code(), "image_too_large");
        assert!(e.to_string().contains("300x20"), "{e}");

        let limits = ImageLimits {
            max_bytes: 100,
            ..ImageLimits::default()
        };
        let e = probe_image(Path::new(ASTRONAUT), &limits).unwrap_err();
        assert_eq!(e.code(), "image_too_large");
    }

    #[test]
    fn exif_orientation_applied() {
        // JPEG of 40x20 with an EXIF APP1 segment saying "rotate 90 CW"
        // (orientation 6) must come out 20x40.
        let mut jpg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpg)
            .write_image(
                gradient(40, 20).as_raw(),
                40,
                20,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        #[rustfmt::skip]
        let tiff: [u8; 26] = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, // big-endian TIFF header, IFD at 8
            0, 1,                         // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation SHORT = 6
            0, 0, 0, 0,                   // no next IFD
        ];
        let mut app1 = vec![0xFF, 0xE1];
        let len = (2 + 6 + tiff.len()) as u16;
        app1.extend_from_slice(&len.to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        // Insert right after SOI (FF D8).
        let mut with_exif = jpg[..2].to_vec();
        with_exif.extend_from_slice(&app1);
        with_exif.extend_from_slice(&jpg[2..]);
        let p_path = tmp("rot.jpg");
        std::fs::write(&p_path, &with_exif).unwrap();
        let p = probe_image(&p_path, &ImageLimits::default()).unwrap();
        assert_eq!((p.width, p.height), (20, 40));
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        let full = std::fs::read(ASTRONAUT).unwrap();
        let mut jpg = Vec::new();
        gradient(64, 64)
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new(&mut jpg))
            .unwrap();
        let mut webp = Vec::new();
        gradient(64, 64)
            .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut webp))
            .unwrap();
        let path = tmp("fuzz.bin");
        let mut seed = 0x1234_5678_u32;
        for src in [&full, &jpg, &webp] {
            for cut in [1, 4, 8, 12, 16, 30, 33, 60, 100, src.len() / 2] {
                std::fs::write(&path, &src[..cut.min(src.len())]).unwrap();
                assert!(
                    probe_image(&path, &ImageLimits::default()).is_err(),
                    "cut {cut}"
                );
            }
            // Losing only the trailer may still decode; it must just not panic.
            std::fs::write(&path, &src[..src.len() - 1]).unwrap();
            let _ = probe_image(&path, &ImageLimits::default());
            // Flip bytes after the magic; may decode (garbage pixels) or fail, never panic.
            for _ in 0..20 {
                let mut bad = src.clone();
                for _ in 0..8 {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let i = 12 + (seed as usize % (bad.len() - 12));
                    bad[i] ^= (seed >> 24) as u8 | 1;
                }
                std::fs::write(&path, &bad).unwrap();
                let _ = probe_image(&path, &ImageLimits::default());
            }
        }
        std::fs::write(&path, b"").unwrap();
        assert!(probe_image(&path, &ImageLimits::default()).is_err());
        let e = probe_image(Path::new("/nonexistent/x.png"), &ImageLimits::default()).unwrap_err();
        assert_eq!(e.code(), "media_unreadable");
    }
}
