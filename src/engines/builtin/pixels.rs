//! Small pixel helpers for the renderer: colour sampling, blending, frame
//! shifting and a tiny deterministic RNG.

/// Averages colours of the unmodified photo.
pub(super) struct Sampler<'a> {
    pub(super) img: &'a [u8],
    pub(super) w: usize,
    pub(super) h: usize,
}

impl Sampler<'_> {
    fn pixels(&self, cx: f32, cy: f32, rw: f32, rh: f32) -> impl Iterator<Item = [f32; 3]> + '_ {
        let cl = |v: f32, m: usize| (v.max(0.0) as usize).min(m - 1);
        let (x0, x1) = (cl(cx - rw / 2.0, self.w), cl(cx + rw / 2.0, self.w));
        let (y0, y1) = (cl(cy - rh / 2.0, self.h), cl(cy + rh / 2.0, self.h));
        (y0..=y1).flat_map(move |y| {
            (x0..=x1).map(move |x| {
                let o = (y * self.w + x) * 3;
                [
                    self.img[o] as f32,
                    self.img[o + 1] as f32,
                    self.img[o + 2] as f32,
                ]
            })
        })
    }

    pub(super) fn region(&self, cx: f32, cy: f32, rw: f32, rh: f32) -> [f32; 3] {
        mean(self.pixels(cx, cy, rw, rh))
    }

    /// The reddest third of the mouth area: robust to the mouth estimate
    /// being a little off, where a plain average would return skin.
    pub(super) fn lip_colour(&self, cx: f32, cy: f32, rw: f32, rh: f32) -> [f32; 3] {
        let mut px: Vec<[f32; 3]> = self.pixels(cx, cy, rw, rh).collect();
        let redness = |p: &[f32; 3]| p[0] - 0.5 * (p[1] + p[2]);
        px.sort_by(|a, b| redness(b).total_cmp(&redness(a)));
        let keep = (px.len() / 3).max(1);
        let m = mean(px.into_iter().take(keep));
        // Slightly darker than the lit lip surface: the rim is in shadow.
        [m[0] * 0.85, m[1] * 0.75, m[2] * 0.75]
    }
}

fn mean(it: impl Iterator<Item = [f32; 3]>) -> [f32; 3] {
    let (mut s, mut n) = ([0.0f32; 3], 0.0f32);
    for p in it {
        (0..3).for_each(|c| s[c] += p[c]);
        n += 1.0;
    }
    s.map(|v| v / n.max(1.0))
}

pub(super) fn blend(px: &mut [u8], col: [f32; 3], a: f32) {
    for c in 0..3 {
        px[c] = (px[c] as f32 + (col[c] - px[c] as f32) * a)
            .round()
            .clamp(0.0, 255.0) as u8;
    }
}

pub(super) fn smooth(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Copies `src` into `dst` moved by (dx, dy), replicating edge pixels into
/// the uncovered border (cheaper than rotation and invisible at ±2 %).
pub(super) fn shift_into(src: &[u8], dst: &mut [u8], w: usize, h: usize, dx: i32, dy: i32) {
    if dx == 0 && dy == 0 {
        dst.copy_from_slice(src);
        return;
    }
    let stride = w * 3;
    let shift = (dx.unsigned_abs() as usize).min(w - 1) * 3;
    for (y, row) in dst.chunks_exact_mut(stride).enumerate() {
        let sy = (y as i64 - dy as i64).clamp(0, h as i64 - 1) as usize;
        let s = &src[sy * stride..(sy + 1) * stride];
        if dx >= 0 {
            row[shift..].copy_from_slice(&s[..stride - shift]);
            let edge = [s[0], s[1], s[2]];
            row[..shift]
                .chunks_exact_mut(3)
                .for_each(|p| p.copy_from_slice(&edge));
        } else {
            row[..stride - shift].copy_from_slice(&s[shift..]);
            let edge = [s[stride - 3], s[stride - 2], s[stride - 1]];
            row[stride - shift..]
                .chunks_exact_mut(3)
                .for_each(|p| p.copy_from_slice(&edge));
        }
    }
}

/// Copies `src` into `dst` magnified by `zoom` about the centre and moved by `offset`, nearest neighbour.
/// With the zoom chosen for the largest offset, every sample comes from inside the image.
pub(super) fn zoom_shift_into(
    src: &[u8],
    dst: &mut [u8],
    w: usize,
    h: usize,
    offset: (i32, i32),
    zoom: f32,
    columns: &mut Vec<usize>,
) {
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let source = |out: usize, centre: f32, shift: i32, size: usize| {
        let at = centre + (out as f32 + 0.5 - centre - shift as f32) / zoom;
        (at.floor().max(0.0) as usize).min(size - 1)
    };
    columns.clear();
    columns.extend((0..w).map(|x| source(x, cx, offset.0, w) * 3));
    let stride = w * 3;
    for (y, row) in dst.chunks_exact_mut(stride).enumerate().take(h) {
        let sy = source(y, cy, offset.1, h);
        let from = &src[sy * stride..(sy + 1) * stride];
        for (pixel, &sx) in row.chunks_exact_mut(3).zip(columns.iter()) {
            pixel.copy_from_slice(&from[sx..sx + 3]);
        }
    }
}

pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*: tiny, deterministic, good enough for blink timing.
pub(super) fn next(state: &mut u64) -> u64 {
    let mut x = (*state).max(1);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_and_replicates_edges() {
        // 3x2 image, one byte value per pixel for readability.
        let px = |v: &[u8]| v.iter().flat_map(|&b| [b, b, b]).collect::<Vec<u8>>();
        let src = px(&[1, 2, 3, 4, 5, 6]);
        let mut dst = vec![0; src.len()];
        shift_into(&src, &mut dst, 3, 2, 1, 1);
        assert_eq!(dst, px(&[1, 1, 2, 1, 1, 2]));
        shift_into(&src, &mut dst, 3, 2, -1, 0);
        assert_eq!(dst, px(&[2, 3, 3, 5, 6, 6]));
        shift_into(&src, &mut dst, 3, 2, 0, 0);
        assert_eq!(dst, src);
    }

    #[test]
    fn zoomed_shift_never_samples_the_border_within_its_margin() {
        // 100x100 with a one-pixel frame of 255 around 0s; a margin of 6 px each side.
        let (w, h) = (100usize, 100usize);
        let mut src = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                    src[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[255; 3]);
                }
            }
        }
        let zoom = 1.0 / (1.0 - 2.0 * 0.06);
        let mut dst = vec![0u8; src.len()];
        let mut columns = Vec::new();
        for offset in [(5, 5), (-5, -5), (5, -5), (0, 0)] {
            zoom_shift_into(&src, &mut dst, w, h, offset, zoom, &mut columns);
            assert!(
                dst.iter().all(|&b| b == 0),
                "border sampled at offset {offset:?}"
            );
        }
        // Without zoom the same shift would show the border.
        zoom_shift_into(&src, &mut dst, w, h, (5, 5), 1.0, &mut columns);
        assert!(dst.contains(&255));
    }
}
