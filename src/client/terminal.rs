//! What a server says, made safe for a terminal. A hostile or broken server could otherwise send
//! escape sequences (clear the screen, rewrite earlier lines, set the window title, hide text with
//! bidirectional overrides) inside a job's error message or a user name, and the CLI would play them.
//! Every JSON answer the CLI reads passes through `clean_json` before anything looks at it.

use serde_json::Value;

/// A character a terminal may act on instead of showing: C0 controls but newline and tab, DEL, C1
/// controls, and the bidirectional embeddings, overrides and isolates.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` without the characters a terminal would act on.
pub fn clean_text(text: &str) -> String {
    text.chars().filter(|&c| !is_unsafe(c)).collect()
}

/// Every string in `value` (object keys too) cleaned with `clean_text`.
pub fn clean_json(value: Value) -> Value {
    match value {
        Value::String(text) if text.chars().any(is_unsafe) => Value::String(clean_text(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(clean_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (clean_text(&key), clean_json(value)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_sequences_and_bidi_overrides_are_removed_and_text_kept() {
        assert_eq!(
            clean_text("fail\u{1b}[2J\u{1b}]0;pwned\u{7}ed\r\u{9b}31m\u{202E}txt.exe\nnext\tcol"),
            "fail[2J]0;pwneded31mtxt.exe\nnext\tcol"
        );
        assert_eq!(clean_text("人脸 ok — é"), "人脸 ok — é");
    }

    #[test]
    fn every_string_of_an_answer_is_cleaned() {
        let cleaned = clean_json(json!({
            "error": { "message": "bad\u{1b}[31m", "list": ["\u{85}x", 3, null] },
            "k\u{1b}ey": true
        }));
        assert_eq!(
            cleaned,
            json!({ "error": { "message": "bad[31m", "list": ["x", 3, null] }, "key": true })
        );
    }
}
