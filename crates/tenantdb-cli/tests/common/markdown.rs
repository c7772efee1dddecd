//! Reading the guides under `docs/` (and the README) as the tests that run them need: their
//! fenced code blocks, in order, with the file each one is marked as.

use std::path::{Path, PathBuf};

/// One fenced code block of a markdown document.
#[derive(Debug, Clone)]
pub struct Block {
    /// The info string after the opening fence: `sh`, `sql`, `js`, `text`, or empty.
    pub lang: String,
    /// The path given by a `<!-- file: path -->` line right before the block: the reader is
    /// meant to save the block's text under that name.
    pub file: Option<String>,
    /// The block's lines, each followed by a newline.
    pub body: String,
    /// The 1-based line of the opening fence, for messages.
    pub line: usize,
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The text of a document, by its path from the workspace root (`docs/quickstart.md`).
pub fn read_doc(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every fenced block of `markdown`, in order. A `<!-- file: path -->` comment applies to the
/// next block only; a fence left open at the end is an error in the document.
pub fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut pending_file: Option<String> = None;
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        if let Some(block) = &mut open {
            if line.trim_start().starts_with("```") {
                out.push(open.take().unwrap());
            } else {
                block.body.push_str(line);
                block.body.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.trim().strip_prefix("<!-- file:") {
            pending_file = Some(rest.trim_end_matches("-->").trim().to_string());
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            open = Some(Block {
                lang: lang.trim().to_string(),
                file: pending_file.take(),
                body: String::new(),
                line: i + 1,
            });
        }
    }
    assert!(
        open.is_none(),
        "a code block opened at line {} is never closed",
        open.map_or(0, |b| b.line)
    );
    out
}
