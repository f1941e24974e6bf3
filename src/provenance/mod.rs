//! Labels and provenance of every output video: the visible AI label and the implicit label
//! (GB 45438-2025's `AIGC` metadata), applied by one step after every engine
//! (`videos::output`), before a video is stored.

pub mod aigc;
pub mod cli;
pub mod credentials;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::domain::{LabelLanguage, LabelTexts};
use crate::media::ffmpeg::{self, FfmpegError, LabelSpec, Overlay, CORNER_FILE, OPENING_FILE};
use aigc::AigcMetadata;

/// The operator's labelling settings.
#[derive(Debug, Clone)]
pub struct LabelSettings {
    /// The visible label at all (`explicit_label`); off, only the metadata is written.
    pub explicit_label: bool,
    /// The corner mark after the opening label (`label_corner_mark`).
    pub corner_mark: bool,
    /// A font with CJK glyphs (`label_font`).
    pub font: PathBuf,
    /// The service's name or code in the metadata (`aigc_producer_id`).
    pub producer_id: String,
    /// Budget of one labelling run.
    pub timeout: Duration,
}

/// What one video's label says.
#[derive(Debug, Clone)]
pub struct LabelRequest<'a> {
    /// The unique production id: the job id.
    pub produce_id: String,
    pub language: LabelLanguage,
    /// The tenant's texts, or the defaults.
    pub texts: &'a LabelTexts,
}

/// Labels videos; built once at startup, where a missing font or a bad producer id stops the server.
#[derive(Debug)]
pub struct Labeller {
    settings: LabelSettings,
}

/// The first bytes of the font formats FreeType reads here (TrueType, OpenType, collections).
const FONT_MAGICS: [&[u8; 4]; 4] = [b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf"];

impl Labeller {
    /// Checks the settings: the font must be a readable TrueType/OpenType file when the visible label
    /// is on.
    pub fn new(settings: LabelSettings) -> anyhow::Result<Self> {
        if !aigc::valid_producer_id(&settings.producer_id) {
            bail!("aigc_producer_id must be 1 to 128 characters on one line");
        }
        if settings.explicit_label {
            check_font(&settings.font).with_context(|| {
                format!(
                    "label_font {}: the visible AI label needs a font with CJK glyphs \
                     (Debian: apt-get install fonts-wqy-microhei, or run scripts/setup.sh)",
                    settings.font.display()
                )
            })?;
        }
        Ok(Self { settings })
    }

    pub fn settings(&self) -> &LabelSettings {
        &self.settings
    }

    /// Writes `output`: `input` with the visible label drawn on its frames (unless turned off) and
    /// the AIGC metadata. `dir` is scratch space of this run (the label texts are written there).
    pub async fn label(
        &self,
        request: &LabelRequest<'_>,
        input: &Path,
        output: &Path,
        dir: &Path,
    ) -> Result<(), FfmpegError> {
        let overlay = if self.settings.explicit_label {
            let info = ffmpeg::probe(input).await?;
            let lines = request.texts.lines(request.language);
            let ems = request
                .language
                .texts(request.texts)
                .iter()
                .map(|t| t.ems())
                .fold(0.0, f64::max);
            tokio::fs::write(dir.join(OPENING_FILE), lines.join("\n")).await?;
            let corner_ems = if self.settings.corner_mark {
                tokio::fs::write(dir.join(CORNER_FILE), lines.join("\n")).await?;
                Some(ems)
            } else {
                None
            };
            Some(Overlay {
                font: self.settings.font.clone(),
                width: info.width,
                height: info.height,
                opening_ems: ems,
                corner_ems,
            })
        } else {
            None
        };
        let metadata = AigcMetadata::generated(&self.settings.producer_id, &request.produce_id);
        ffmpeg::label_video(&LabelSpec {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            dir: dir.to_path_buf(),
            overlay,
            metadata: vec![(aigc::AIGC_KEY.to_owned(), metadata.to_json())],
            timeout: self.settings.timeout,
        })
        .await
    }
}

fn check_font(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .context("cannot be read")?;
    if !FONT_MAGICS.iter().any(|m| **m == magic) {
        bail!("is not a TrueType or OpenType font");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
