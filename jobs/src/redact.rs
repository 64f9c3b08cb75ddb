//! Masking secret values in text that may leave the process (errors, reports, logs, messages, API
//! answers), in every form a server or a library may echo them: as they are, base64 (alone or
//! inside a longer encoding such as `Basic base64(user:password)`), percent- and form-encoded, and
//! JSON-escaped.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

/// What replaces a secret.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: they would mask ordinary words (and a secret this
/// short protects nothing).
const MIN_SECRET_LEN: usize = 3;
/// A base64 fragment shorter than this could match by chance inside unrelated text.
const MIN_ENCODED_LEN: usize = 6;

/// The forms of a set of secret values to mask, longest first (so a longer form is masked
/// before a shorter one inside it).
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("forms", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// Masks nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Masks `values` in every form.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for value in values {
            if value.len() < MIN_SECRET_LEN {
                continue;
            }
            needles.push(value.to_owned());
            needles.extend(encoded_forms(value));
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles }
    }

    /// Also masks what `other` masks.
    pub fn merged(mut self, other: &Redactor) -> Self {
        self.needles.extend(other.needles.iter().cloned());
        self.needles
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.needles.dedup();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), MASK);
            }
        }
        out
    }

    /// Whether `text` holds any form of a secret (for tests and assertions).
    pub fn finds_secret_in(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }
}

/// The encoded forms of one value besides itself.
fn encoded_forms(value: &str) -> Vec<String> {
    let mut forms = Vec::new();
    // Base64 anywhere inside a longer encoding: the part of the encoding that depends only on the
    // value, for each of the three byte alignments it can start at.
    for engine in [&STANDARD, &URL_SAFE] {
        for shift in 0..3 {
            let mut bytes = vec![0u8; shift];
            bytes.extend_from_slice(value.as_bytes());
            let encoded = engine.encode(&bytes);
            let first = (8 * shift).div_ceil(6);
            let last = (8 * bytes.len()) / 6;
            if last > first && last - first >= MIN_ENCODED_LEN {
                forms.push(encoded[first..last].to_owned());
            }
        }
    }
    // Percent-encoding as in URLs (userinfo, query strings) and form bodies.
    let percent: String =
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    forms.push(percent.clone());
    forms.push(percent.to_lowercase_escapes());
    forms.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
    // JSON string escaping (a body that quotes the value back).
    if let Ok(json) = serde_json::to_string(value) {
        forms.push(json[1..json.len() - 1].to_owned());
    }
    forms.retain(|f| f != value && f.len() >= MIN_SECRET_LEN);
    forms
}

trait LowercaseEscapes {
    fn to_lowercase_escapes(&self) -> String;
}

impl LowercaseEscapes for String {
    /// `%2F` → `%2f`: some encoders write lowercase hex digits.
    fn to_lowercase_escapes(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut chars = self.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                for _ in 0..2 {
                    if let Some(h) = chars.next() {
                        out.push(h.to_ascii_lowercase());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pa:ss/w rd+\"x\"";

    #[test]
    fn every_form_of_a_secret_is_masked() {
        let redactor = Redactor::new([PASSWORD, "ana"]);
        let basic = STANDARD.encode(format!("ana:{PASSWORD}"));
        let url_safe = URL_SAFE.encode(PASSWORD);
        let percent =
            percent_encoding::utf8_percent_encode(PASSWORD, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let form: String = url::form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect();
        let json = serde_json::to_string(&serde_json::json!({ "p": PASSWORD })).unwrap();
        let text = format!(
            "raw {PASSWORD} | Authorization: Basic {basic} | b64 {} | urlsafe {url_safe} | pct {percent} | pct-lower {} | form {form} | json {json}",
            STANDARD.encode(PASSWORD),
            percent.to_lowercase_escapes(),
        );
        let shown = redactor.redact(&text);
        assert!(!redactor.finds_secret_in(&shown), "{shown}");
        for leaked in [
            PASSWORD,
            basic.as_str(),
            &STANDARD.encode(PASSWORD),
            &url_safe,
            &percent,
            &form,
        ] {
            assert!(!shown.contains(leaked), "{leaked} in {shown}");
        }
        assert!(shown.contains("Authorization: Basic "), "{shown}");
    }

    #[test]
    fn base64_of_a_secret_inside_a_longer_encoding_is_masked_at_any_offset() {
        let redactor = Redactor::new(["s3cr3t-token-value"]);
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let blob = STANDARD.encode(format!("{prefix}s3cr3t-token-value and more"));
            let shown = redactor.redact(&blob);
            assert!(shown.contains(MASK), "prefix {prefix:?}: {shown}");
        }
    }

    #[test]
    fn short_values_and_plain_text_are_left_alone() {
        let redactor = Redactor::new(["ab", "hunter2"]);
        assert_eq!(redactor.redact("about a table"), "about a table");
        assert_eq!(redactor.redact("pw hunter2"), "pw ***");
        assert!(Redactor::none().is_empty());
    }
}
