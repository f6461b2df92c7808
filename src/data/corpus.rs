//! Stories out of corpus files: JSON shards (arrays of objects with a `story` string, as the
//! official TinyStories archive has them; other keys are ignored), text with one story per line,
//! or text split by a separator. Errors name the file and where in it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pipeline::spec::{StoryLayout, TextFormat};

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid UTF-8 at byte {offset}", path.display())]
    Utf8 { path: PathBuf, offset: usize },
    #[error("{}:{line}:{column}: not a JSON array of stories: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("no corpus file matches {key} {patterns:?}; the corpus holds: {available}")]
    NoFiles {
        key: &'static str,
        patterns: Vec<String>,
        available: String,
    },
    #[error("the files matching {key} hold no text ({files})")]
    Empty { key: &'static str, files: String },
}

impl CorpusError {
    /// The error for files that hold no story, naming them as the user gave them.
    pub fn empty(key: &'static str, files: &[PathBuf]) -> CorpusError {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        CorpusError::Empty {
            key,
            files: names.join(", "),
        }
    }
}

/// The files under `root` whose relative paths match any of `patterns`, sorted.
pub fn matching_files(
    root: &Path,
    patterns: &[String],
    key: &'static str,
) -> Result<Vec<PathBuf>, CorpusError> {
    let all = crate::fsutil::list_files(root).map_err(|source| CorpusError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let matched: Vec<PathBuf> = all
        .iter()
        .filter(|p| {
            let text = p.to_string_lossy().replace('\\', "/");
            patterns.iter().any(|pattern| glob_match(pattern, &text))
        })
        .map(|p| root.join(p))
        .collect();
    if matched.is_empty() {
        let mut available: Vec<String> = all
            .iter()
            .take(10)
            .map(|p| p.display().to_string())
            .collect();
        if all.len() > 10 {
            available.push(format!("… ({} files)", all.len()));
        }
        return Err(CorpusError::NoFiles {
            key,
            patterns: patterns.to_vec(),
            available: if available.is_empty() {
                "nothing".into()
            } else {
                available.join(", ")
            },
        });
    }
    Ok(matched)
}

/// `*` matches any run of characters but `/`, `?` any one character but `/`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => t.first().is_some_and(|&c| c != '/') && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// Cuts `story` into pieces of at most `max` bytes (`max` ≥ 4, so any character fits), each
/// ending after whitespace where one is in its second half, so words stay whole.
pub fn split_long(story: &str, max: usize) -> impl Iterator<Item = &str> {
    let max = max.max(4);
    let mut rest = story;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= max {
            return Some(std::mem::take(&mut rest));
        }
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut half = max / 2;
        while !rest.is_char_boundary(half) {
            half += 1;
        }
        if half < cut
            && let Some(at) = rest[half..cut].rfind(char::is_whitespace)
        {
            let at = half + at;
            cut = at + rest[at..].chars().next().map_or(1, char::len_utf8);
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

#[derive(Deserialize)]
struct StoryRecord {
    story: String,
}

/// Calls `each` with every story of `path` (trimmed, empty ones skipped).
pub fn for_each_story(
    path: &Path,
    layout: &StoryLayout,
    mut each: impl FnMut(String),
) -> Result<(), CorpusError> {
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| CorpusError::Utf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let format = match layout.format {
        TextFormat::Auto if is_json => TextFormat::Json,
        TextFormat::Auto if !layout.separator.is_empty() && text.contains(&layout.separator) => {
            TextFormat::Separator
        }
        TextFormat::Auto => TextFormat::Lines,
        other => other,
    };
    let mut emit = |story: &str| {
        let story = story.trim();
        if !story.is_empty() {
            each(story.to_string());
        }
    };
    match format {
        TextFormat::Json => {
            let records: Vec<StoryRecord> =
                serde_json::from_str(&text).map_err(|e| CorpusError::Json {
                    path: path.to_path_buf(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                })?;
            records.iter().for_each(|r| emit(&r.story));
        }
        TextFormat::Separator => text.split(layout.separator.as_str()).for_each(emit),
        TextFormat::Lines | TextFormat::Auto => text.lines().for_each(emit),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("data*.json", "data00.json"));
        assert!(!glob_match("data*.json", "sub/data00.json"));
        assert!(glob_match("*/*.txt", "sub/a.txt"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("*.json", "a.jsonl"));
    }

    #[test]
    fn formats_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::pipeline::spec::CorpusConfig::default().layout();
        let read = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let mut stories = Vec::new();
            for_each_story(&path, &layout, |s| stories.push(s)).map(|_| stories)
        };
        let json = br#"[{"story": "One.", "summary": "x"}, {"story": " Two. "}]"#;
        assert_eq!(read("a.json", json).unwrap(), ["One.", "Two."]);
        assert_eq!(read("b.txt", b"One.\n\nTwo.\n").unwrap(), ["One.", "Two."]);
        assert_eq!(
            read("c.txt", b"One.\nStill one.<|endoftext|>Two.").unwrap(),
            ["One.\nStill one.", "Two."]
        );
        let err = read("d.json", b"[{\"story\": \"One.\"},\n {\"story\": 3}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.json:2:"), "{err}");
        let err = read("e.txt", b"good\xffbad").unwrap_err().to_string();
        assert!(err.contains("e.txt: invalid UTF-8 at byte 4"), "{err}");
    }
}
