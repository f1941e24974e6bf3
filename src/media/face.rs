//! Face detection (pure-Rust SeetaFace port `rustface`) and the Sonic-style
//! crop plan derived from the detected face.

use std::borrow::Cow;

use image::imageops;
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use super::MediaError;

/// SeetaFace frontal model, BSD-2-Clause, shipped inside the `rustface` 0.1.7
/// crate (see assets/models/README.md). Embedded so the binary has no runtime
/// file dependency.
static MODEL_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/models/seeta_fd_frontal_v1.0.bin"
));

mod scan;

/// The first pass works on images at most this many pixels on the long side.
/// rustface's pyramid always starts at scale 1.0 and its window is 40 px, so
/// time grows with the pixel count (~0.1 s at 480x480 on one 2-core box)
/// while the smallest face it can find is 40 px in the *downscaled* image,
/// i.e. 40/480 = 8 % of the long side: every ordinary portrait is found here,
/// and later, finer passes run only when this one finds nothing.
const DETECT_MAX_SIDE: u32 = 480;

/// Smallest face looked for, in source pixels: the last pass enlarges the
/// image so that such a face fills the classifier's 40 px window.
pub const MIN_FACE: u32 = 32;

/// How many times the crop around the face (the face grown by `expand_ratio`
/// on each side) may be enlarged to reach `min_resolution`. Sonic's own example
/// (a 94 px face at 1024 px with `expand_ratio` 0.18) is 8x; a smaller face
/// than this allows gives a video of upscaling blur.
pub const MAX_UPSCALE: f64 = 10.0;

/// rustface's fixed classifier window (its `K_WND_SIZE`).
const WINDOW: u32 = 40;
/// Pyramid step between scales; rustface's default and the usual SeetaFace value.
const PYRAMID_SCALE: f32 = 0.8;
/// Lower than SeetaFace's 3.85 default would catch more faces but also more
/// false positives; 2.0 keeps both rare on portraits.
const SCORE_THRESH: f64 = 2.0;

/// One detected face, in pixel coordinates of the image given to `detect`,
/// clipped to the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (SeetaFace boxes are square before clipping).
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Classifier confidence; higher is surer (typically 2..30).
    pub score: f64,
}

/// Axis-aligned pixel rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Where to crop the photo and what size to scale the crop to for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropPlan {
    /// Region of the (oriented) source image to keep.
    pub crop: Rect,
    /// Width to resize the crop to; a multiple of 64.
    pub output_width: u32,
    /// Height to resize the crop to; a multiple of 64.
    pub output_height: u32,
}

/// Thread-safe face detector. The model is parsed once in `new`; rustface's
/// detector object is neither `Send` nor `Sync` and keeps per-run scratch
/// buffers, so each `detect` call builds its own from a clone of the parsed
/// model (a ~1 MB memcpy, negligible next to detection). Share one
/// `FaceDetector` (e.g. in an `Arc`) and call it from `spawn_blocking`.
#[derive(Clone)]
pub struct FaceDetector {
    model: rustface::Model,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector").finish_non_exhaustive()
    }
}

impl FaceDetector {
    /// Parses the embedded SeetaFace model.
    pub fn new() -> Result<Self, MediaError> {
        // rustface's reader panics on an unknown classifier kind; the model is
        // a fixed embedded file, but keep a corrupt build from killing the process.
        let model = super::guard(
            |detail| MediaError::FaceModel { detail },
            || {
                rustface::read_model(MODEL_BYTES).map_err(|e| MediaError::FaceModel {
                    detail: e.to_string(),
                })
            },
        )?;
        Ok(FaceDetector { model })
    }

    /// Finds frontal faces down to [`MIN_FACE`] px anywhere in the image;
    /// returns them largest first (ties: higher score first). An empty vector
    /// means no face was found.
    ///
    /// Passes go from coarse to fine (see `scan`): the first works on a copy
    /// at most 480 px long and finds every face of at least 8 % of the long
    /// side; each further pass, run only when the previous ones found nothing,
    /// looks at a larger copy for faces too small for the previous one, split
    /// into overlapping bands that run on all cores.
    pub fn detect(&self, image: &RgbImage) -> Vec<FaceBox> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Vec::new();
        }
        let passes = scan::passes(w, h, DETECT_MAX_SIDE, MIN_FACE);
        let mut gray: Option<GrayImage> = None;
        for pass in passes {
            let scaled = if pass.scale < 1.0 {
                // Area-averaging `thumbnail` is ~4x faster than a Triangle resize on a 3000 px photo
                // and anti-aliases as well; shrink first, then go gray.
                Cow::Owned(imageops::grayscale(&imageops::thumbnail(
                    image,
                    pass.width,
                    pass.height,
                )))
            } else {
                let full = gray.get_or_insert_with(|| imageops::grayscale(image));
                if (pass.width, pass.height) == (w, h) {
                    Cow::Borrowed(&*full)
                } else {
                    Cow::Owned(imageops::resize(
                        &*full,
                        pass.width,
                        pass.height,
                        imageops::FilterType::Triangle,
                    ))
                }
            };
            let mut faces = self.detect_pass(&scaled, pass.max_face, w, h);
            if !faces.is_empty() {
                faces.sort_by(|a, b| {
                    let area = |f: &FaceBox| u64::from(f.width) * u64::from(f.height);
                    area(b).cmp(&area(a)).then(b.score.total_cmp(&a.score))
                });
                return faces;
            }
        }
        Vec::new()
    }

    /// One pass over `scaled` (a copy of the `w` x `h` source), in bands on as
    /// many threads as there are cores when it is large; boxes in source pixels.
    fn detect_pass(
        &self,
        scaled: &GrayImage,
        max_face: Option<u32>,
        w: u32,
        h: u32,
    ) -> Vec<FaceBox> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let bands = scan::bands(scaled.width(), scaled.height(), max_face, threads);
        let scale = (f64::from(scaled.width()) / f64::from(w)
            + f64::from(scaled.height()) / f64::from(h))
            / 2.0;
        let found: Vec<Vec<FaceBox>> = if bands.len() == 1 {
            vec![self.detect_band(scaled, bands[0], max_face, scale, w, h)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = bands
                    .iter()
                    .map(|band| s.spawn(|| self.detect_band(scaled, *band, max_face, scale, w, h)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap_or_default())
                    .collect()
            })
        };
        scan::merge(found.into_iter().flatten().collect())
    }

    /// Runs rustface on rows `band` of `scaled`; boxes in source pixels.
    fn detect_band(
        &self,
        scaled: &GrayImage,
        band: (u32, u32),
        max_face: Option<u32>,
        scale: f64,
        w: u32,
        h: u32,
    ) -> Vec<FaceBox> {
        let width = scaled.width();
        let (top, bottom) = band;
        // rustface subtracts the window size from each pyramid level's size in
        // unsigned arithmetic; a level that rounds to < 40 px would underflow and
        // read out of bounds. Shave a pixel until the pyramid is safe (usually 0 tries).
        let Some((bw, bh)) = scan::safe_size(width, bottom - top, max_face) else {
            return Vec::new();
        };
        let cropped;
        let data: &[u8] = if bw == width {
            let row = width as usize;
            &scaled.as_raw()[top as usize * row..(top + bh) as usize * row]
        } else {
            cropped = imageops::crop_imm(scaled, 0, top, bw, bh).to_image();
            cropped.as_raw()
        };
        let mut det = rustface::create_detector_with_model(self.model.clone());
        // Ineffective in rustface 0.1.7 (its pyramid never upscales, so 40 px
        // is the floor: the passes enlarge the image instead) but set for clarity.
        det.set_min_face_size(WINDOW);
        if let Some(max) = max_face {
            // Stops the pyramid once faces are large enough for the previous pass.
            det.set_max_face_size(max);
        }
        det.set_score_thresh(SCORE_THRESH);
        det.set_pyramid_scale_factor(PYRAMID_SCALE);
        det.set_slide_window_step(4, 4);
        let image = rustface::ImageData::new(data, bw, bh);
        let faces = match super::guard(
            |detail| MediaError::FaceModel { detail },
            || Ok(det.detect(&image)),
        ) {
            Ok(f) => f,
            Err(_) => return Vec::new(),
        };
        faces
            .iter()
            .filter_map(|f| {
                let b = f.bbox();
                let top = f64::from(top);
                // Back to source coordinates, then clip: boxes can overhang
                // the border when a face is cut off by the frame.
                let x0 = (f64::from(b.x()) / scale).max(0.0);
                let y0 = ((f64::from(b.y()) + top) / scale).max(0.0);
                let x1 = ((f64::from(b.x()) + f64::from(b.width())) / scale).min(f64::from(w));
                let y1 =
                    ((f64::from(b.y()) + top + f64::from(b.height())) / scale).min(f64::from(h));
                if x1 - x0 < 1.0 || y1 - y0 < 1.0 {
                    return None;
                }
                let (x, y) = (x0.round() as u32, y0.round() as u32);
                Some(FaceBox {
                    x,
                    y,
                    width: (x1.round() as u32).saturating_sub(x).max(1),
                    height: (y1.round() as u32).saturating_sub(y).max(1),
                    score: f.score(),
                })
            })
            .collect()
    }
}

/// The smallest face (its longer side, px) usable for a video of
/// `min_resolution` with `expand_ratio`: the crop around it is the face grown by
/// `expand_ratio` on each side, and may be enlarged at most [`MAX_UPSCALE`] times.
pub fn smallest_usable_face(min_resolution: u32, expand_ratio: f64) -> u32 {
    let crop_per_face = 1.0 + 2.0 * expand_ratio.max(0.0);
    (f64::from(min_resolution) / (MAX_UPSCALE * crop_per_face))
        .ceil()
        .max(1.0) as u32
}

/// Plans the crop around `face` the way Sonic's `process_bbox` does, and the
/// engine input size the way Sonic's `image_audio_to_tensor` does.
///
/// Crop: each edge of the face box moves out by `expand_ratio` times the box
/// size (so an unclipped side becomes `side * (1 + 2 * expand_ratio)`), the
/// result is clipped to the image, and then cut to a square whose side is the
/// shorter side of the clipped box, positioned as close to the face centre as
/// the clipped box allows. Hence the crop is square unless the face box itself
/// is degenerate, and always lies inside the image.
///
/// Output size: scale so the crop's short side equals `min_resolution`, then
/// round each side to the nearest multiple of 64 (at least 64). Halves round
/// away from zero (Python's `round` would round half to even).
pub fn plan_crop(
    face: &FaceBox,
    image_w: u32,
    image_h: u32,
    expand_ratio: f32,
    min_resolution: u32,
) -> CropPlan {
    let (iw, ih) = (f64::from(image_w.max(1)), f64::from(image_h.max(1)));
    let r = f64::from(expand_ratio.max(0.0));
    let (fx, fy) = (f64::from(face.x), f64::from(face.y));
    let (fw, fh) = (f64::from(face.width), f64::from(face.height));

    // Expanded box, clipped to the image.
    let ex0 = clampf(fx - r * fw, 0.0, iw);
    let ey0 = clampf(fy - r * fh, 0.0, ih);
    let ex1 = clampf(fx + fw + r * fw, ex0, iw);
    let ey1 = clampf(fy + fh + r * fh, ey0, ih);

    // Square of the shorter side, centre slid toward the face centre but
    // kept inside the clipped box.
    let side = (ex1 - ex0).min(ey1 - ey0);
    let half = side / 2.0;
    let cx = clampf(fx + fw / 2.0, ex0 + half, ex1 - half);
    let cy = clampf(fy + fh / 2.0, ey0 + half, ey1 - half);

    let x0 = clampf((cx - half).round(), 0.0, iw - 1.0);
    let y0 = clampf((cy - half).round(), 0.0, ih - 1.0);
    let s = side.round().max(1.0);
    let crop = Rect {
        x: x0 as u32,
        y: y0 as u32,
        width: s.min(iw - x0) as u32,
        height: s.min(ih - y0) as u32,
    };

    let short = f64::from(crop.width.min(crop.height).max(1));
    let scale = f64::from(min_resolution) / short;
    let to64 = |v: u32| (((f64::from(v) * scale / 64.0).round() as u32) * 64).max(64);
    CropPlan {
        crop,
        output_width: to64(crop.width),
        output_height: to64(crop.height),
    }
}

/// Like `f64::clamp` but never panics: float rounding can leave `lo` a hair
/// above `hi`, in which case `hi` wins.
fn clampf(v: f64, lo: f64, hi: f64) -> f64 {
    v.max(lo).min(hi)
}

#[cfg(test)]
#[path = "face_tests.rs"]
mod tests;
