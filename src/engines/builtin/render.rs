//! Pure CPU frame rendering for the built-in engine: a 2D "puppet" built
//! from one photo. The mouth opens with a jaw warp plus a drawn inner mouth,
//! the eyes blink on a seeded schedule and the whole head sways a little.
//!
//! Everything works in place on preallocated buffers; one frame costs two
//! frame-sized copies plus work proportional to the mouth/eye areas.

use image::RgbImage;

use super::features::{MouthPose, FPS};
use super::pixels::{blend, next, shift_into, smooth, splitmix, zoom_shift_into, Sampler};

/// Animation parameters (see the engine's API docs for user-facing ranges).
#[derive(Debug, Clone, Copy)]
pub struct AnimParams {
    /// Scales mouth movement (0.5–2.0; values are clamped to 0–2).
    pub dynamic_scale: f32,
    /// Scales head sway/nod (0.5–2.0; clamped to 0–2, 0 disables sway).
    pub motion_scale: f32,
    /// Drives blink timing and sway phase deterministically.
    pub seed: u32,
}

/// Blink closure per frame at 25 fps: ~160 ms, closing fast, opening slower.
const BLINK_PROFILE: [f32; 4] = [0.6, 1.0, 0.8, 0.35];

/// An axis-aligned pixel rectangle `[x0, x1) x [y0, y1)`.
pub type Rect = (usize, usize, usize, usize);

struct Eye {
    cx: f32,
    cy: f32,
    lid: [f32; 3],
}

/// Renders animated RGB24 frames of one face photo.
pub struct Animator {
    w: usize,
    h: usize,
    base: Vec<u8>,
    work: Vec<u8>,
    /// Face box height/width in pixels.
    fw: f32,
    fh: f32,
    /// Mouth centre and the column weights of the jaw warp around it.
    mouth_cx: f32,
    mouth_cy: f32,
    jaw_rx: f32,
    lip: [f32; 3],
    eyes: [Eye; 2],
    params: AnimParams,
    blink_starts: Vec<usize>,
    rng: u64,
    sway_phase: [f32; 2],
    /// Constant zoom that keeps the largest sway inside the photo (1.0 without sway), so the moving
    /// frame never shows a smeared border.
    zoom: f32,
    /// Source column (byte offset) of each output column, reused between frames.
    columns: Vec<usize>,
}

impl Animator {
    /// Creates an animator for `face_crop` (already at output size). `face`
    /// is the face box `(x, y, w, h)` inside the crop; it is clamped to the
    /// image. Odd sizes are accepted here; the encoder requires even ones.
    pub fn new(face_crop: RgbImage, face: (u32, u32, u32, u32), params: AnimParams) -> Self {
        let (w, h) = (face_crop.width() as usize, face_crop.height() as usize);
        let base = face_crop.into_raw();
        let fx = (face.0 as f32).min(w.saturating_sub(1) as f32);
        let fy = (face.1 as f32).min(h.saturating_sub(1) as f32);
        let fw = (face.2 as f32).clamp(4.0, w as f32 - fx);
        let fh = (face.3 as f32).clamp(4.0, h as f32 - fy);
        let params = AnimParams {
            dynamic_scale: params.dynamic_scale.clamp(0.0, 2.0),
            motion_scale: params.motion_scale.clamp(0.0, 2.0),
            seed: params.seed,
        };
        let (mouth_cx, mouth_cy) = (fx + 0.5 * fw, fy + 0.78 * fh);
        let sample =
            |x: f32, y: f32, rw: f32, rh: f32| Sampler { img: &base, w, h }.region(x, y, rw, rh);
        let lip = Sampler { img: &base, w, h }.lip_colour(mouth_cx, mouth_cy, 0.4 * fw, 0.12 * fh);
        // Eyelid skin is taken from the cheek just below each eye: it is skin
        // in nearly every photo, unlike the brow area above.
        let eye = |cx: f32| {
            // Slightly above the nominal 0.40 and with a tall lid: face detectors vary
            // in where they put the box top, and an over-tall lid still looks right.
            let cy = fy + 0.38 * fh;
            Eye {
                cx,
                cy,
                lid: sample(cx, cy + 0.13 * fh, 0.1 * fw, 0.05 * fh),
            }
        };
        let eyes = [eye(fx + 0.30 * fw), eye(fx + 0.70 * fw)];
        let mut rng = splitmix(params.seed as u64 ^ 0x5EED_F00D);
        let sway_phase = [
            (next(&mut rng) % 6283) as f32 / 1000.0,
            (next(&mut rng) % 6283) as f32 / 1000.0,
        ];
        Animator {
            w,
            h,
            work: base.clone(),
            base,
            fw,
            fh,
            mouth_cx,
            mouth_cy,
            jaw_rx: 0.32 * fw,
            lip,
            eyes,
            params,
            blink_starts: Vec::new(),
            rng,
            sway_phase,
            zoom: 1.0,
            columns: Vec::new(),
        }
        .with_sway_margin()
    }

    /// Sets the zoom from the largest offset `sway_offset` can produce (see its amplitudes).
    fn with_sway_margin(mut self) -> Self {
        let m = self.params.motion_scale;
        let size = self.w.min(self.h) as f32;
        let max_dx = 0.012 * size * m;
        let max_dy = 0.6 * 0.012 * size * m + 0.006 * self.h as f32 * m;
        // One extra pixel for rounding; the visible region shrinks by the margin on each side.
        let margin_x = (max_dx.ceil() + 1.0) / self.w.max(1) as f32;
        let margin_y = (max_dy.ceil() + 1.0) / self.h.max(1) as f32;
        let margin = margin_x.max(margin_y);
        if m > 0.0 && margin < 0.25 {
            self.zoom = 1.0 / (1.0 - 2.0 * margin);
        }
        self
    }

    /// Output frame width in pixels.
    pub fn width(&self) -> usize {
        self.w
    }

    /// Output frame height in pixels.
    pub fn height(&self) -> usize {
        self.h
    }

    /// The area the mouth animation may touch (before sway).
    pub fn mouth_rect(&self) -> Rect {
        let drop = self.max_drop();
        self.rect(
            self.mouth_cx - self.jaw_rx,
            self.mouth_cy - 0.05 * self.fh - 3.0,
            self.mouth_cx + self.jaw_rx,
            self.mouth_cy + 0.40 * self.fh + drop,
        )
    }

    /// The areas the blinks may touch (before sway).
    pub fn eye_rects(&self) -> [Rect; 2] {
        let (rx, ry) = self.eye_radii();
        self.eyes.each_ref().map(|e| {
            self.rect(
                e.cx - rx - 1.0,
                e.cy - ry - 1.0,
                e.cx + rx + 1.0,
                e.cy + ry + 1.0,
            )
        })
    }

    /// How closed the eyes are at `frame` (0 = open, 1 = shut).
    pub fn blink_amount(&mut self, frame: usize) -> f32 {
        // Extend the seeded schedule lazily: first blink after 0.5–2.5 s, then
        // every 3–5 s, so any frame can be asked for in any order.
        while self.blink_starts.last().is_none_or(|&s| s <= frame) {
            let fps = FPS as u64;
            let gap = match self.blink_starts.last() {
                None => fps / 2 + next(&mut self.rng) % (2 * fps),
                Some(_) => 3 * fps + next(&mut self.rng) % (2 * fps),
            };
            let last = self.blink_starts.last().copied().unwrap_or(0);
            self.blink_starts.push(last + gap as usize);
        }
        let idx = self.blink_starts.partition_point(|&s| s <= frame);
        match idx.checked_sub(1).map(|i| frame - self.blink_starts[i]) {
            Some(k) if k < BLINK_PROFILE.len() => BLINK_PROFILE[k],
            _ => 0.0,
        }
    }

    /// Whole-frame translation in pixels at `frame` (0 when sway is off).
    pub fn sway_offset(&self, frame: usize, open: f32) -> (i32, i32) {
        let m = self.params.motion_scale;
        let t = frame as f32 / FPS as f32;
        let tau = std::f32::consts::TAU;
        // Two incommensurate slow periods so the motion never looks looped;
        // a slight nod with loud syllables ties the head to the speech.
        let amp = 0.012 * self.w.min(self.h) as f32 * m;
        let dx = amp * (tau * t / 4.3 + self.sway_phase[0]).sin();
        let dy = 0.6 * amp * (tau * t / 3.1 + self.sway_phase[1]).sin()
            + 0.006 * self.h as f32 * m * open;
        (dx.round() as i32, dy.round() as i32)
    }

    /// Renders frame `frame_index` with mouth `pose` into `out` (RGB24,
    /// width*height*3 bytes; panics on a wrong length, a caller bug).
    pub fn render(&mut self, frame_index: usize, pose: MouthPose, out: &mut [u8]) {
        assert_eq!(
            out.len(),
            self.base.len(),
            "output buffer must be width*height*3"
        );
        let open = (pose.open * self.params.dynamic_scale).clamp(0.0, 2.0);
        let wide = pose.wide.clamp(0.0, 1.0);
        self.work.copy_from_slice(&self.base);
        let drop = 0.09 * self.fh * open;
        // Below one pixel the warp and mouth would only add noise to a closed mouth.
        if drop >= 1.0 {
            self.jaw_warp(drop);
            self.draw_mouth(drop, wide);
        }
        let blink = self.blink_amount(frame_index);
        if blink > 0.0 {
            for i in 0..2 {
                self.draw_blink(i, blink);
            }
        }
        let (dx, dy) = self.sway_offset(frame_index, pose.open.clamp(0.0, 1.0));
        if self.zoom > 1.0 {
            zoom_shift_into(
                &self.work,
                out,
                self.w,
                self.h,
                (dx, dy),
                self.zoom,
                &mut self.columns,
            );
        } else {
            shift_into(&self.work, out, self.w, self.h, dx, dy);
        }
    }

    fn max_drop(&self) -> f32 {
        0.09 * self.fh * 2.0
    }

    fn eye_radii(&self) -> (f32, f32) {
        (0.12 * self.fw, 0.075 * self.fh)
    }

    fn rect(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> Rect {
        let cl = |v: f32, max: usize| (v.max(0.0) as usize).min(max);
        (
            cl(x0.floor(), self.w),
            cl(y0.floor(), self.h),
            cl(x1.ceil(), self.w),
            cl(y1.ceil(), self.h),
        )
    }

    /// Moves the lower lip and chin down by `drop` pixels: a vertical
    /// displacement that ramps in from the lip line, holds over the chin and
    /// fades out below it, weighted by a smooth column falloff so the warp
    /// blends into the cheeks without a seam.
    fn jaw_warp(&mut self, drop: f32) {
        let (cy, fh) = (self.mouth_cy, self.fh);
        let ramp0 = cy - 0.02 * fh;
        // The ramp is longer than `drop`, so the mapping stays monotonic
        // (no folded/duplicated rows).
        let ramp1 = cy + 0.06 * fh + drop;
        let hold1 = cy + 0.16 * fh + drop;
        let end = cy + 0.40 * fh + drop;
        let (x0, y0, x1, y1) = self.rect(
            self.mouth_cx - self.jaw_rx,
            ramp0,
            self.mouth_cx + self.jaw_rx,
            end,
        );
        let stride = self.w * 3;
        for y in y0..y1 {
            let yf = y as f32;
            let wy = if yf < ramp1 {
                smooth((yf - ramp0) / (ramp1 - ramp0))
            } else if yf < hold1 {
                1.0
            } else {
                1.0 - smooth((yf - hold1) / (end - hold1))
            };
            if wy <= 0.0 {
                continue;
            }
            for x in x0..x1 {
                let u = (x as f32 - self.mouth_cx) / self.jaw_rx;
                let wx = (1.0 - u * u).max(0.0);
                let sy = (yf - drop * wy * wx * wx).max(0.0);
                let (r0, t) = (sy as usize, sy.fract());
                let r1 = (r0 + 1).min(self.h - 1);
                let (a, b, o) = (r0 * stride + x * 3, r1 * stride + x * 3, y * stride + x * 3);
                for c in 0..3 {
                    let v = self.base[a + c] as f32 * (1.0 - t) + self.base[b + c] as f32 * t;
                    self.work[o + c] = v as u8;
                }
            }
        }
    }

    /// Draws the opening between the lips: a lens shape (pointed corners
    /// like real lips) whose lower edge follows the dropped lower lip, dark
    /// towards the throat with upper teeth, and a feathered lip-coloured rim.
    fn draw_mouth(&mut self, drop: f32, wide: f32) {
        let (cx, line) = (self.mouth_cx, self.mouth_cy);
        // The upper lip barely moves; the lower one travels with the jaw.
        let (up, down) = (0.12 * drop + 0.5, 0.9 * drop);
        let rx = 0.2 * self.fw * (0.62 + 0.3 * wide);
        let lip_px = (0.025 * self.fh).max(2.0);
        let rim = (drop / (0.05 * self.fh)).min(1.0) * 0.7;
        let teeth_max = 0.035 * self.fh;
        let pad = lip_px + 2.0;
        let (x0, y0, x1, y1) = self.rect(
            cx - rx - 1.0,
            line - up - pad,
            cx + rx + 1.0,
            line + down + pad,
        );
        let stride = self.w * 3;
        for x in x0..x1 {
            let u = (x as f32 + 0.5 - cx) / rx;
            let p = (1.0 - u * u).max(0.0).powf(0.6);
            if p <= 0.0 {
                continue;
            }
            let (top, bot) = (line - up * p, line + down * p);
            let teeth_h = (0.3 * (bot - top)).min(teeth_max);
            for y in y0..y1 {
                let yf = y as f32 + 0.5;
                // Vertical distance to the lens edge in pixels (negative inside).
                let dist = (top - yf).max(yf - bot);
                let o = y * stride + x * 3;
                if dist < 0.5 {
                    let depth = ((yf - top) / (bot - top).max(1.0)).clamp(0.0, 1.0);
                    let shade = 1.0 - 0.5 * (1.0 - (2.0 * depth - 1.0).abs());
                    let mut col = [75.0 * shade, 28.0 * shade, 32.0 * shade];
                    let mut a = (0.5 - dist).clamp(0.0, 1.0);
                    if yf < top + teeth_h {
                        col = [200.0, 190.0, 180.0];
                        a *= 0.75;
                    }
                    blend(&mut self.work[o..o + 3], col, a * p.sqrt());
                } else if dist < lip_px {
                    blend(
                        &mut self.work[o..o + 3],
                        self.lip,
                        rim * p * (1.0 - dist / lip_px),
                    );
                }
            }
        }
    }

    /// Lowers the upper eyelid over eye `i` by `amount` (0..1).
    fn draw_blink(&mut self, i: usize, amount: f32) {
        let (rx, ry) = self.eye_radii();
        let (cx, cy, lid) = (self.eyes[i].cx, self.eyes[i].cy, self.eyes[i].lid);
        let lid_y = cy - ry + amount * 2.0 * ry;
        let lash = [lid[0] * 0.45, lid[1] * 0.4, lid[2] * 0.4];
        let (x0, y0, x1, y1) = self.eye_rects()[i];
        let stride = self.w * 3;
        for y in y0..y1 {
            let yf = y as f32 + 0.5;
            let vy = (yf - cy) / ry;
            for x in x0..x1 {
                let u = (x as f32 + 0.5 - cx) / rx;
                let q = u * u + vy * vy;
                // Soft elliptical mask so the lid blends into the surrounding skin.
                let m = ((1.0 - q) * 3.0).clamp(0.0, 1.0);
                if m <= 0.0 {
                    continue;
                }
                let o = y * stride + x * 3;
                let cover = (lid_y - yf + 0.75).clamp(0.0, 1.0);
                // Shade the lid darker towards its edge so it reads as a
                // curved eyelid rather than a flat patch.
                let s = 0.82 + 0.18 * ((lid_y - yf) / (2.0 * ry)).clamp(0.0, 1.0);
                blend(&mut self.work[o..o + 3], lid.map(|c| c * s), m * cover);
                let near = 1.0 - ((yf - lid_y).abs() / 1.5).min(1.0);
                if near > 0.0 && amount > 0.2 {
                    blend(&mut self.work[o..o + 3], lash, m * near * 0.8);
                }
            }
        }
    }
}
