//! The per-document parse cache: policy files as separate YAML documents, and the
//! documents parsed by the last load, so a change re-parses only the documents it touched.
//! Parsing YAML is most of what a policy change costs (about 150 ms for a 10,000-rule
//! NetworkPolicy), so one rule edited in a large directory must not parse everything
//! again.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
};

use super::document::parse_text;
use crate::policy::{error::PolicyErrors, model::PolicySet};

/// A file's YAML documents, each with the number of lines before it: the text is split
/// before every `---` marker at the start of a line. YAML forbids such a line inside any
/// scalar, so the parts parse exactly as the whole does. Texts with directives (`%`),
/// document end markers (`...`) or carriage returns (which YAML also counts as line
/// breaks) are rare in policy files and are kept whole rather than split by a rule that
/// would have to know more of YAML.
pub fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    if text.contains('\r') || text.lines().any(|l| l.starts_with('%') || marker(l, "...")) {
        return vec![(0, text)];
    }
    let mut parts = Vec::new();
    let (mut start, mut start_line) = (0, 0u32);
    let mut offset = 0;
    for (line_number, line) in (0u32..).zip(text.split_inclusive('\n')) {
        if marker(line.trim_end_matches('\n'), "---") && offset > start {
            parts.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, line_number);
        }
        offset += line.len();
    }
    parts.push((start_line, &text[start..]));
    parts
}

/// Where a document was read and what it says: equal keys, equal parse results (origins
/// included, which is why the position is part of it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DocumentKey {
    file: PathBuf,
    line_offset: u32,
    /// A hash of `text`, computed once: the maps hash this, not the whole text again at
    /// every lookup and insert (a 10,000-rule document is 600 KB).
    text_hash: u64,
    text: String,
}

impl Hash for DocumentKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.file.hash(state);
        self.line_offset.hash(state);
        self.text_hash.hash(state);
    }
}

/// The documents the last load parsed without error, as parsed. Only the last load's
/// documents are kept, so the cache never holds more than the directory.
#[derive(Debug, Default)]
pub struct ParseCache {
    documents: HashMap<DocumentKey, PolicySet>,
    /// Documents parsed by the load in progress.
    next: HashMap<DocumentKey, PolicySet>,
    /// Documents parsed (not found in the cache) since the cache was made, for the
    /// agent's log and tests.
    pub parsed: usize,
}

impl ParseCache {
    /// Parses `file`'s `text` into `set`, taking unchanged documents from the last load.
    pub fn parse_into(
        &mut self,
        file: &Path,
        text: &str,
        set: &mut PolicySet,
    ) -> Result<(), PolicyErrors> {
        let mut errors = Vec::new();
        for (line_offset, document) in split_documents(text) {
            let mut hasher = DefaultHasher::new();
            document.hash(&mut hasher);
            let key = DocumentKey {
                file: file.to_path_buf(),
                line_offset,
                text_hash: hasher.finish(),
                text: document.to_string(),
            };
            let parsed = match self.documents.remove(&key) {
                Some(parsed) => parsed,
                None => {
                    self.parsed += 1;
                    let mut parsed = PolicySet::default();
                    if let Err(mut e) = parse_text(file, document, line_offset, &mut parsed) {
                        errors.append(&mut e.0);
                        continue;
                    }
                    parsed
                }
            };
            set.extend_from(&parsed);
            self.next.insert(key, parsed);
        }
        PolicyErrors::result(errors, ())
    }

    /// Ends a load: documents it did not read are forgotten.
    pub fn finish_load(&mut self) {
        self.documents = std::mem::take(&mut self.next);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::parse::{load_dir, parse_into, policy_files};

    /// The example policies, one file after the other: every kind, comments, flow and
    /// block style.
    fn examples() -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let files = policy_files(&dir).expect("example policies");
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// Parsing in parts through the cache gives what parsing the whole text gives.
    fn same_as_whole(text: &str) -> Result<(), TestCaseError> {
        let file = Path::new("p.yaml");
        let mut whole = PolicySet::default();
        let whole_result = parse_into(file, text, &mut whole);
        let mut cache = ParseCache::default();
        for _ in 0..2 {
            let mut parts = PolicySet::default();
            let parts_result = cache.parse_into(file, text, &mut parts);
            cache.finish_load();
            prop_assert_eq!(whole_result.is_ok(), parts_result.is_ok(), "{}", text);
            if whole_result.is_ok() {
                prop_assert_eq!(&whole, &parts);
            }
        }
        Ok(())
    }

    #[test]
    fn documents_split_at_markers_with_their_line_offsets() {
        let text = "# head\na: 1\n---\nb: 2\n--- \nc: 3\n---x\nd: 4\n";
        assert_eq!(
            split_documents(text),
            vec![
                (0, "# head\na: 1\n"),
                (2, "---\nb: 2\n"),
                (4, "--- \nc: 3\n---x\nd: 4\n"),
            ]
        );
        assert_eq!(split_documents("---\na: 1"), vec![(0, "---\na: 1")]);
        assert_eq!(split_documents(""), vec![(0, "")]);
    }

    #[test]
    fn texts_with_directives_end_markers_or_carriage_returns_stay_whole() {
        for text in [
            "%YAML 1.2\n---\na: 1\n---\nb: 2\n",
            "a: 1\n...\n---\nb: 2\n",
            "a: 1\r\n---\r\nb: 2\r\n",
        ] {
            assert_eq!(split_documents(text), vec![(0, text)]);
        }
    }

    #[test]
    fn a_changed_document_is_the_only_one_parsed_again() {
        let dir = std::env::temp_dir().join(format!("stagewall-doc-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("all.yaml");
        let text = examples();
        std::fs::write(&file, &text).unwrap();
        let documents = split_documents(&text).len();
        let mut cache = ParseCache::default();
        let first = load_dir(&dir, &mut cache).unwrap();
        assert_eq!(cache.parsed, documents);
        assert_eq!(load_dir(&dir, &mut cache).unwrap(), first);
        assert_eq!(cache.parsed, documents, "nothing changed, nothing parsed");
        // One port of one rule changes (the last document's first port).
        let at = text.rfind("port: ").expect("a port in the examples");
        let changed = format!("{}port: 1{}", &text[..at], &text[at + "port: ".len()..]);
        std::fs::write(&file, &changed).unwrap();
        let again = load_dir(&dir, &mut cache).unwrap();
        assert_eq!(cache.parsed, documents + 1);
        let fresh = load_dir(&dir, &mut ParseCache::default()).unwrap();
        assert_eq!(again, fresh, "origins and contents as a fresh parse gives");
        assert_ne!(again, first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        // Any character replaced anywhere in the examples (making `---` markers, breaking
        // them, breaking YAML): the parts parse as the whole does.
        #[test]
        fn parts_parse_as_the_whole(pos in 0usize..100_000, c in prop::sample::select(vec!['-', '\n', ' ', '#', ':', 'x', '|', '\'', '%', '.'])) {
            let mut chars: Vec<char> = examples().chars().collect();
            let i = pos % chars.len();
            chars[i] = c;
            same_as_whole(&chars.into_iter().collect::<String>())?;
        }

        #[test]
        fn documents_of_pieces_parse_in_parts_as_whole(pieces in prop::collection::vec(prop::sample::select(vec![
            "---\n", "--- x\n", "---x\n", "a: [\n", "b: 1\n", "kind: Namespace\n",
            "apiVersion: v1\n", "metadata: {name: n}\n", "  c: |\n", "\n", "# c\n",
        ]), 0..12)) {
            same_as_whole(&pieces.concat())?;
        }
    }

    #[test]
    fn the_examples_parse_in_parts_as_whole() {
        same_as_whole(&examples()).unwrap();
        assert!(split_documents(&examples()).len() > 10);
    }
}
