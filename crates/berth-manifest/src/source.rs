//! Where things are: a manifest file split into its YAML documents, and positions within one
//! document mapped back to the file for errors.

use serde::de::DeserializeOwned;

use crate::ManifestError;

/// Splits a multi-document YAML text at `---` lines: `(first line, text)` per document.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // Keep line numbers aligned: the marker line becomes an empty line.
            current.push('\n');
            start -= 1;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, t)| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// One document of a manifest file, and how its positions map to the file's.
pub(crate) struct Source<'a> {
    file: &'a str,
    /// The file's line where the document's text begins.
    first_line: usize,
    text: &'a str,
    /// The document's first line with content (neither blank nor a comment), 1-based.
    start: usize,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a str, first_line: usize, text: &'a str) -> Self {
        let start = text
            .lines()
            .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map_or(1, |p| p + 1);
        Self {
            file,
            first_line,
            text,
            start,
        }
    }

    /// The file's line where the document's content starts.
    pub(crate) fn line(&self) -> usize {
        self.first_line + self.start - 1
    }

    /// The document as `T`, or serde's error at its position.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        serde_yaml_ng::from_str(self.text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            // serde_yaml_ng appends " at line L column C"; the prefix says it already.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            self.error(line, column, msg)
        })
    }

    /// An error about the whole document, at its start.
    pub(crate) fn at_start(&self, message: String) -> ManifestError {
        self.error(self.start, 1, message)
    }

    /// An error about `field` (a path such as `spec.containers[1].memory`), at the field when
    /// it can be found and at the document's start otherwise.
    pub(crate) fn at(&self, field: &str, message: String) -> ManifestError {
        let (line, column) = locate(self.text, field).unwrap_or((self.start, 1));
        self.error(line, column, format!("{field}: {message}"))
    }

    /// An error at `line` and `column` (1-based) of the document.
    fn error(&self, line: usize, column: usize, message: String) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            line: self.first_line + line.saturating_sub(1),
            column,
            message,
        }
    }
}

/// Finds the line and column of a field path such as `spec.containers[1].memory` in one
/// YAML document written in block style (how manifests are written). Flow-style documents
/// fall back to the document start.
fn locate(doc: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut from = 0; // first line of the current block
    let mut indent: Option<usize> = None; // indentation of the current block's keys
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        // Find `key:` at the block's indentation.
        // A key that is absent (defaulted) points at its parent.
        let Some((line_no, col)) = (from..lines.len()).find_map(|i| {
            let l = lines[i];
            let trimmed = l.trim_start().trim_start_matches("- ");
            let col = l.len() - trimmed.len();
            let ok = trimmed.starts_with(&format!("{key}:")) && indent.is_none_or(|ind| col >= ind);
            ok.then_some((i, col))
        }) else {
            return found;
        };
        found = Some((line_no + 1, col + 1));
        from = line_no + 1;
        indent = Some(col + 1);
        if let Some(index) = index {
            // Find the index-th `- ` item below the key.
            let mut seen = 0;
            // A flow sequence (`[...]`) has no such items: the key is as close as it gets.
            let Some(item) = (from..lines.len()).find(|&i| {
                let t = lines[i].trim_start();
                if t.starts_with("- ") || t == "-" {
                    seen += 1;
                    seen == index + 1
                } else {
                    false
                }
            }) else {
                return found;
            };
            let col = lines[item].len() - lines[item].trim_start().len();
            found = Some((item + 1, col + 1));
            from = item;
            indent = Some(col);
        }
    }
    found
}
