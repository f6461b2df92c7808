//! The text a command works on (`score`, `tokenize`): given on the command line, or read from
//! `--file PATH` or standard input (`--file -`), since Linux caps one argument at 128 kB and a
//! validation split is larger than that.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::fsutil::human_bytes;

/// The most a text read from `--file` or standard input may hold. The whole text is held in
/// memory (and, for `score`, every one of its tokens goes through the model), so a file that
/// never ends (`--file /dev/zero`, a stuck pipe) is refused at this size instead of eating the
/// machine's memory. 256 MB is about a hundred times TinyStories' validation split.
pub const MAX_TEXT_BYTES: u64 = 256_000_000;

/// A command's text and where it came from, named the way the user gave it.
#[derive(Debug)]
pub struct InputText {
    pub text: String,
    /// `--text`, `--file PATH` or `standard input`, for messages.
    pub origin: String,
}

/// The text of exactly one of `argument` (shown as `argument_name`) and `file` (`-`: standard
/// input), at most [`MAX_TEXT_BYTES`] of UTF-8.
pub fn text_or_file(
    argument: Option<String>,
    file: Option<&Path>,
    argument_name: &str,
) -> Result<InputText> {
    match (argument, file) {
        (Some(_), Some(_)) => bail!("give {argument_name} or --file, not both"),
        (None, None) => {
            bail!(
                "give {argument_name}, or --file PATH to read it from a file (- for standard input)"
            )
        }
        (Some(text), None) => Ok(InputText {
            text,
            origin: argument_name.to_string(),
        }),
        (None, Some(path)) if path == Path::new("-") => {
            let origin = "standard input".to_string();
            let text = read_text(std::io::stdin().lock(), MAX_TEXT_BYTES, &origin)?;
            Ok(InputText { text, origin })
        }
        (None, Some(path)) => {
            let origin = format!("--file {}", path.display());
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let text = read_text(file, MAX_TEXT_BYTES, &origin)?;
            Ok(InputText { text, origin })
        }
    }
}

/// Reads `reader` to its end as UTF-8, refusing more than `limit` bytes without reading past
/// them.
fn read_text(reader: impl Read, limit: u64, origin: &str) -> Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {origin}"))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{origin} holds more than {}, the most tinyllm reads as one text; split it",
            human_bytes(limit)
        );
    }
    String::from_utf8(bytes).map_err(|err| {
        anyhow::anyhow!(
            "{origin} is not UTF-8 text (invalid byte at offset {})",
            err.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_up_to_the_limit_is_read_whole() {
        assert_eq!(read_text(&b"Once"[..], 4, "x").unwrap(), "Once");
        assert_eq!(read_text(&b""[..], 4, "x").unwrap(), "");
    }

    #[test]
    fn a_text_over_the_limit_is_refused_naming_it() {
        let err = read_text(&b"Once upon"[..], 4, "standard input").unwrap_err();
        assert_eq!(
            err.to_string(),
            "standard input holds more than 4 B, the most tinyllm reads as one text; split it"
        );
        // A reader that never ends is read only up to the limit.
        let err = read_text(std::io::repeat(b'a'), 1000, "--file /dev/zero").unwrap_err();
        assert!(err.to_string().contains("more than 1.0 kB"), "{err}");
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let err = read_text(&b"ab\xffcd"[..], 100, "--file x.bin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--file x.bin is not UTF-8 text (invalid byte at offset 2)"
        );
    }

    #[test]
    fn exactly_one_source_is_accepted() {
        let both = text_or_file(Some("a".into()), Some(Path::new("f")), "--text").unwrap_err();
        assert_eq!(both.to_string(), "give --text or --file, not both");
        let neither = text_or_file(None, None, "--text").unwrap_err();
        assert!(
            neither
                .to_string()
                .starts_with("give --text, or --file PATH")
        );
        let given = text_or_file(Some("a".into()), None, "--text").unwrap();
        assert_eq!(
            (given.text.as_str(), given.origin.as_str()),
            ("a", "--text")
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = text_or_file(None, Some(Path::new("no/such/file.txt")), "--text").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read no/such/file.txt: "),
            "{err:#}"
        );
    }
}
