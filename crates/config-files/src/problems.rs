//! The problems a validation finds, each named by its key and the line of that key.

use std::fmt;
use std::time::Duration;

use crate::lines::KeyLines;
use crate::values::parse_duration;

/// One problem with a config value: the key, its line when it can be found, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    /// `line 4: `limits.max_body`: …`; a message that already begins with its key is not
    /// prefixed with it again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        let named = self.message.strip_prefix('`').and_then(|m| m.strip_prefix(self.key.as_str()));
        if named.is_some_and(|rest| rest.starts_with('`')) {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

/// Every problem found so far in one file's text. A validation records a problem and goes on
/// with a usable default, so that one run reports everything.
pub struct Problems<'a> {
    lines: KeyLines<'a>,
    list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(text: &'a str) -> Problems<'a> {
        Problems { lines: KeyLines::new(text), list: Vec::new() }
    }

    /// The line of a key path (`tokens[1].scope`), or of its nearest enclosing key.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.find(key)
    }

    /// A problem with `key` at a line already found.
    pub fn add(&mut self, key: &str, line: Option<usize>, message: String) {
        self.list.push(Problem { key: key.to_owned(), line, message });
    }

    /// A problem with `key`, at its line.
    pub fn at(&mut self, key: &str, message: String) {
        let line = self.line(key);
        self.add(key, line, message);
    }

    /// A problem whose message begins with the key it is about in backticks
    /// (`` `limits.max_body` must be … ``).
    pub fn named(&mut self, message: String) {
        let key = message.strip_prefix('`').and_then(|m| m.split_once('`')).map_or("", |(k, _)| k).to_owned();
        self.at(&key, message);
    }

    /// A duration such as `30s` at `key`; `default` when it is not given, or (with a problem)
    /// invalid.
    pub fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(m)) => {
                self.at(key, m.to_string());
                default
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_list(self) -> Vec<Problem> {
        self.list
    }

    /// `Ok` when nothing was found; otherwise every problem, refused as the file `path`'s.
    pub fn finish(self, path: &std::path::Path) -> Result<(), crate::ConfigError> {
        if self.list.is_empty() {
            return Ok(());
        }
        Err(crate::ConfigError::Invalid { path: path.display().to_string(), problems: self.list })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_their_key_and_line_and_read_once() {
        let mut p = Problems::new("listen: x\nlimits:\n  max_body: 2XB\n");
        p.named("`limits.max_body`: invalid size".into());
        p.at("listen", "not an address".into());
        assert_eq!(p.duration("limits.header_timeout", Some("soon"), Duration::ZERO), Duration::ZERO);
        let list = p.into_list();
        assert_eq!(list[0].to_string(), "line 3: `limits.max_body`: invalid size");
        assert_eq!(list[1].to_string(), "line 1: `listen`: not an address");
        assert_eq!((list[2].key.as_str(), list[2].line), ("limits.header_timeout", Some(2)));
    }
}
