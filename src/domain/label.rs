//! The visible AI label of every video: which language a job asked for, and the label texts a tenant
//! may set, validated so that only one short line of visible text ever reaches ffmpeg.

use serde::{Deserialize, Serialize};

use super::FieldError;

/// The language of a job's visible label (`label_language`): Chinese, English, or both (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LabelLanguage {
    Zh,
    En,
    #[default]
    Both,
}

impl LabelLanguage {
    /// `zh`, `en` or `both`, as `parse` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zh => "zh",
            Self::En => "en",
            Self::Both => "both",
        }
    }

    /// `zh`, `en` or `both`.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        match raw.trim() {
            "zh" => Ok(Self::Zh),
            "en" => Ok(Self::En),
            "both" => Ok(Self::Both),
            _ => Err(FieldError::new("label_language", "must be zh, en or both")),
        }
    }

    /// The texts shown in this language, Chinese first.
    pub fn texts(self, texts: &LabelTexts) -> Vec<&LabelText> {
        match self {
            Self::Zh => vec![&texts.zh],
            Self::En => vec![&texts.en],
            Self::Both => vec![&texts.zh, &texts.en],
        }
    }
}

/// Longest label text, in characters: a label is a few words.
pub const MAX_LABEL_CHARS: usize = 32;

/// Widest label text in font heights (a CJK character is about 1, others about 0.62): at the smallest
/// size a label may have, 7 % of the frame's short side, 13 of them still fit across it.
pub const MAX_LABEL_EMS: f64 = 13.0;

/// One line of label text: 1 to 32 characters no wider than [`MAX_LABEL_EMS`], not only spaces, without control characters
/// (line breaks, terminal escapes) or invisible format characters (bidirectional overrides,
/// zero-width characters), which could hide or reorder what the label says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelText(String);

impl LabelText {
    /// `field` names the value in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let text = raw.trim();
        if text.is_empty() || text.chars().count() > MAX_LABEL_CHARS {
            return Err(FieldError::new(
                field,
                format!("must be 1 to {MAX_LABEL_CHARS} characters"),
            ));
        }
        if em_width(text) > MAX_LABEL_EMS {
            return Err(FieldError::new(
                field,
                "is too wide to fit across a portrait video at the smallest label size \
                 (at most 13 CJK characters or about 20 Latin letters)",
            ));
        }
        if text.chars().any(hidden_or_control) {
            return Err(FieldError::new(
                field,
                "must be one line without control or invisible characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its approximate width in font heights.
    pub fn ems(&self) -> f64 {
        em_width(&self.0)
    }
}

/// Approximate width of `text` in font heights: East Asian wide characters 1, others 0.62 (generous
/// for the proportional Latin glyphs of CJK fonts).
pub fn em_width(text: &str) -> f64 {
    text.chars().map(|c| if wide(c) { 1.0 } else { 0.62 }).sum()
}

/// East Asian wide and fullwidth characters (CJK, kana, hangul, fullwidth forms), roughly.
fn wide(c: char) -> bool {
    matches!(c, '\u{1100}'..='\u{115F}' | '\u{2E80}'..='\u{A4CF}' | '\u{AC00}'..='\u{D7A3}' | '\u{F900}'..='\u{FAFF}' | '\u{FE30}'..='\u{FE4F}' | '\u{FF00}'..='\u{FF60}' | '\u{FFE0}'..='\u{FFE6}' | '\u{20000}'..='\u{3FFFD}')
}

impl TryFrom<String> for LabelText {
    type Error = FieldError;
    fn try_from(raw: String) -> Result<Self, FieldError> {
        Self::parse("label", &raw)
    }
}

impl From<LabelText> for String {
    fn from(text: LabelText) -> String {
        text.0
    }
}

/// Controls and invisible format characters (zero-width, bidirectional controls, line and paragraph
/// separators, the BOM, tag characters).
fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// The label texts in both languages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelTexts {
    pub zh: LabelText,
    pub en: LabelText,
}

impl Default for LabelTexts {
    fn default() -> Self {
        Self {
            zh: LabelText("AI生成".to_owned()),
            en: LabelText("AI-generated".to_owned()),
        }
    }
}

impl LabelTexts {
    /// The lines to show for `language`, Chinese first.
    pub fn lines(&self, language: LabelLanguage) -> Vec<&str> {
        language
            .texts(self)
            .into_iter()
            .map(LabelText::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_language_defaults_to_both_and_parses_three_values() {
        assert_eq!(LabelLanguage::default(), LabelLanguage::Both);
        assert_eq!(LabelLanguage::parse("zh").unwrap(), LabelLanguage::Zh);
        assert_eq!(LabelLanguage::parse(" en ").unwrap(), LabelLanguage::En);
        assert_eq!(LabelLanguage::parse("both").unwrap(), LabelLanguage::Both);
        assert_eq!(
            LabelLanguage::parse("fr").unwrap_err().field,
            "label_language"
        );
    }

    #[test]
    fn label_text_is_one_short_visible_line() {
        assert_eq!(
            LabelText::parse("zh", " 人工智能生成 ").unwrap().as_str(),
            "人工智能生成"
        );
        assert!(LabelText::parse("en", "Generated by AI: it's 100% synthetic").is_err());
        // Width, not characters, is what must fit: 13 CJK characters fit, 14 do not.
        assert!(LabelText::parse("zh", &"生".repeat(13)).is_ok());
        assert!(LabelText::parse("zh", &"生".repeat(14)).is_err());
        assert!(LabelText::parse("en", "Generated with AI").is_ok());
        for bad in [
            "",
            "   ",
            "two\nlines",
            "esc\u{1b}[31m",
            "rtl\u{202E}txt",
            "zero\u{200B}width",
            "nul\0",
            "tab\there",
        ] {
            assert!(LabelText::parse("en", bad).is_err(), "{bad:?}");
        }
        assert!(LabelText::parse("en", &"i".repeat(20)).is_ok());
        assert!(LabelText::parse("en", &"i".repeat(22)).is_err());
        // Filter syntax is only text here: it never reaches ffmpeg's parser.
        assert!(LabelText::parse("en", "AI'gen:[x];%{pts}").is_ok());
    }

    #[test]
    fn both_shows_chinese_then_english() {
        let texts = LabelTexts::default();
        assert_eq!(
            texts.lines(LabelLanguage::Both),
            vec!["AI生成", "AI-generated"]
        );
        assert_eq!(texts.lines(LabelLanguage::En), vec!["AI-generated"]);
    }
}
