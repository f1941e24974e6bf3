//! The labelling pass over every finished video: the visible AI label drawn on its frames (an
//! opening label, then a corner mark) and the implicit label written into its metadata. The video
//! is an engine's output (ours, or a remote machine's that was already checked), read like our own
//! MP4s: MP4 demuxer forced, local files only.
//!
//! No label text ever reaches ffmpeg's filter parser: the text is in files drawtext reads with
//! `textfile=` (named by fixed relative names, ffmpeg running in their directory), with `expansion=none`
//! so that `%{...}` in a text is not evaluated. The one configured value in the graph, the font's
//! path, is escaped for both levels of the parser.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{command, encode_slots, file_input, words, FfmpegError, FFMPEG};

/// The opening label's file, relative to [`LabelSpec::dir`].
pub const OPENING_FILE: &str = "label-opening.txt";
/// The corner mark's file, relative to [`LabelSpec::dir`].
pub const CORNER_FILE: &str = "label-corner.txt";
/// How long the opening label is shown (the standard asks for at least 2 s).
pub const OPENING_S: f64 = 3.0;

/// What to draw on the frames.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// A font with the glyphs of every label text (CJK).
    pub font: PathBuf,
    /// The video's frame size.
    pub width: u32,
    pub height: u32,
    /// Widest line of the opening label, in font heights (see `domain::label::em_width`).
    pub opening_ems: f64,
    /// Widest line of the corner mark, in font heights; `None`: no corner mark.
    pub corner_ems: Option<f64>,
}

/// One labelling run.
#[derive(Debug, Clone)]
pub struct LabelSpec {
    /// The engine's MP4.
    pub input: PathBuf,
    /// Where the labelled MP4 is written (overwritten if present).
    pub output: PathBuf,
    /// The directory holding [`OPENING_FILE`] and [`CORNER_FILE`]; ffmpeg runs in it.
    pub dir: PathBuf,
    /// `None`: the frames are copied as they are (only the metadata is written).
    pub overlay: Option<Overlay>,
    /// Global metadata of the output, in place of whatever the input had (`AIGC`).
    pub metadata: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Sizes of the visible label, in pixels, for a frame whose short side is `short`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSizes {
    pub opening_font: u32,
    pub corner_font: u32,
    pub margin: u32,
}

/// Font size as a share of the short side: the opening label's (shrunk for long texts, never below
/// the minimum) and the corner mark's. At 7 %, the glyphs of Latin capitals are 5.1 % of the short
/// side and CJK characters 6.2 %: the standard's 5 % either way.
const OPENING_SHARE: f64 = 0.10;
const MIN_SHARE: f64 = 0.07;
/// Share of the frame's width a label line may take.
const FIT_SHARE: f64 = 0.92;

impl Overlay {
    pub fn sizes(&self) -> LabelSizes {
        let short = f64::from(self.width.min(self.height));
        let width = f64::from(self.width);
        let fit = |ems: f64| (width * FIT_SHARE / ems.max(1.0)) / short;
        let opening = OPENING_SHARE.min(fit(self.opening_ems)).max(MIN_SHARE);
        LabelSizes {
            opening_font: (short * opening).ceil() as u32,
            corner_font: (short * MIN_SHARE).ceil() as u32,
            margin: (short * 0.03).round().max(2.0) as u32,
        }
    }

    /// The filter graph: the opening label for [`OPENING_S`], then the corner mark.
    fn graph(&self) -> String {
        let LabelSizes {
            opening_font,
            corner_font,
            margin,
        } = self.sizes();
        let font = filter_value(&self.font.to_string_lossy());
        let opening_until = format!(":enable={}", filter_value(&format!("lt(t,{OPENING_S})")));
        let mut graph = format!(
            "[0:v:0]drawtext=fontfile={font}:textfile={OPENING_FILE}:expansion=none:fix_bounds=1\
             :fontsize={opening_font}:fontcolor=white:line_spacing={spacing}\
             :box=1:boxcolor=black@0.55:boxborderw={border}\
             :x=(w-text_w)/2:y={top}{opening_until}",
            spacing = opening_font / 5,
            border = opening_font / 4,
            top = margin * 2,
        );
        if self.corner_ems.is_some() {
            graph.push_str(&format!(
                ",drawtext=fontfile={font}:textfile={CORNER_FILE}:expansion=none:fix_bounds=1\
                 :fontsize={corner_font}:fontcolor=white@0.9:line_spacing={spacing}\
                 :box=1:boxcolor=black@0.4:boxborderw={border}\
                 :x=w-text_w-{margin}:y=h-text_h-{margin}:enable={enable}",
                spacing = corner_font / 5,
                border = corner_font / 5,
                enable = filter_value(&format!("gte(t,{OPENING_S})")),
            ));
        }
        graph.push_str(",format=yuv420p[v]");
        graph
    }
}

/// Escapes `value` for an option of a filter inside a filter graph: once for the filter's option
/// parser (`\ ' :`), then once more for the graph's parser (`\ ' [ ] , ;`).
pub fn filter_value(value: &str) -> String {
    let escape = |text: &str, special: &[char]| {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    let option = escape(value, &['\\', '\'', ':']);
    escape(&option, &['\\', '\'', '[', ']', ',', ';'])
}

/// Writes the labelled MP4. Re-encoding the frames takes an encode slot like every other encode;
/// without an overlay the streams are copied.
pub async fn label_video(spec: &LabelSpec) -> Result<(), FfmpegError> {
    if let Some(overlay) = &spec.overlay {
        if overlay.width == 0 || overlay.height == 0 {
            return Err(FfmpegError::failed(
                "label setup",
                format!("frame size {}x{}", overlay.width, overlay.height),
            ));
        }
    }
    let _permit = match spec.overlay {
        Some(_) => Some(
            encode_slots()
                .acquire_owned()
                .await
                .expect("encode semaphore is never closed"),
        ),
        None => None,
    };
    let mut cmd = command(FFMPEG);
    cmd.args(label_args(spec)).current_dir(&spec.dir);
    super::run_command(cmd, FFMPEG, "label", spec.timeout).await?;
    Ok(())
}

/// The ffmpeg command line for a [`LabelSpec`].
fn label_args(spec: &LabelSpec) -> Vec<OsString> {
    let mut a = words(
        "-nostdin -hide_banner -nostats -loglevel error -y -protocol_whitelist file -f mov -i",
    );
    a.push(file_input(&spec.input));
    match &spec.overlay {
        Some(overlay) => {
            a.push("-filter_complex".into());
            a.push(overlay.graph().into());
            a.extend(words(
                "-map [v] -map 0:a:0? -c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p",
            ));
        }
        None => a.extend(words("-map 0:v:0 -map 0:a:0? -c:v copy")),
    }
    // Whatever metadata the engine wrote (a remote machine's claims included) is dropped.
    a.extend(words("-c:a copy -map_metadata -1 -map_chapters -1"));
    for (key, value) in &spec.metadata {
        a.push("-metadata".into());
        a.push(format!("{key}={value}").into());
    }
    // `use_metadata_tags` writes keys that are not iTunes atoms (`AIGC`) as `mdta` keys.
    a.extend(words("-movflags +faststart+use_metadata_tags -f mp4"));
    a.push(file_input(&spec.output));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(corner: bool) -> Overlay {
        Overlay {
            font: "/fonts/cjk.ttc".into(),
            width: 512,
            height: 640,
            opening_ems: 7.44,
            corner_ems: corner.then_some(7.44),
        }
    }

    #[test]
    fn filter_values_are_escaped_for_both_parsers() {
        assert_eq!(filter_value("/a/b.ttc"), "/a/b.ttc");
        assert_eq!(filter_value("lt(t,3)"), r"lt(t\,3)");
        assert_eq!(filter_value("C:/x"), r"C\\:/x");
        assert_eq!(filter_value("a'b"), r"a\\\'b");
        assert_eq!(filter_value(r"a\b"), r"a\\\\b");
        assert_eq!(filter_value("f[0];x"), r"f\[0\]\;x");
    }

    #[test]
    fn text_comes_from_files_never_from_the_graph() {
        let graph = overlay(true).graph();
        assert!(graph.contains("textfile=label-opening.txt"), "{graph}");
        assert!(graph.contains("textfile=label-corner.txt"), "{graph}");
        assert!(
            !graph.contains(":text=") && !graph.contains("drawtext=text="),
            "{graph}"
        );
        assert_eq!(graph.matches("expansion=none").count(), 2, "{graph}");
        assert!(graph.contains(r"enable=lt(t\,3)"), "{graph}");
        assert!(graph.contains(r"enable=gte(t\,3)"), "{graph}");
        // Without the corner mark, the opening label still ends after 3 s.
        let graph = overlay(false).graph();
        assert_eq!(graph.matches("enable=").count(), 1, "{graph}");
        assert!(!graph.contains(CORNER_FILE), "{graph}");
    }

    #[test]
    fn label_sizes_follow_the_short_side_and_shrink_only_to_the_minimum() {
        let sizes = overlay(true).sizes();
        assert_eq!(
            sizes,
            LabelSizes {
                opening_font: 52,
                corner_font: 36,
                margin: 15
            }
        );
        let wide_text = Overlay {
            opening_ems: 13.0,
            ..overlay(true)
        };
        assert_eq!(wide_text.sizes().opening_font, 37);
        let landscape = Overlay {
            width: 1280,
            height: 720,
            ..overlay(true)
        };
        assert_eq!(landscape.sizes().opening_font, 72);
    }

    #[test]
    fn metadata_replaces_the_inputs_and_frames_are_copied_without_overlay() {
        let spec = LabelSpec {
            input: "/w/in.mp4".into(),
            output: "/w/out.mp4".into(),
            dir: "/w".into(),
            overlay: None,
            metadata: vec![("AIGC".into(), r#"{"Label":"1"}"#.into())],
            timeout: Duration::from_secs(60),
        };
        let args: Vec<String> = label_args(&spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-protocol_whitelist file -f mov -i file:/w/in.mp4"),
            "{joined}"
        );
        assert!(joined.contains("-c:v copy"), "{joined}");
        assert!(joined.contains("-map_metadata -1"), "{joined}");
        assert!(
            args.contains(&r#"AIGC={"Label":"1"}"#.to_owned()),
            "{joined}"
        );
        assert!(joined.contains("use_metadata_tags"), "{joined}");
    }
}
