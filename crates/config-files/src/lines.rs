//! Where a key is in a config file's text, for problems found after parsing (serde knows the
//! line of a syntax error, not of a value that parsed and was then refused).

/// Finds the line of a key path such as `tokens[1].scope` or `limits.max_body` in YAML text:
/// block mappings and block lists, as config files are written. Where a key is written inline
/// (`logs: { max_age: 2d }`) or is missing, the line of the nearest enclosing key is given.
pub struct KeyLines<'a> {
    lines: Vec<&'a str>,
}

/// One step of a key path: a name, and an index into the list it holds.
struct Step<'p> {
    name: &'p str,
    index: Option<usize>,
}

fn steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    path.split('.').filter(|s| !s.is_empty()).map(|s| match s.split_once('[') {
        Some((name, rest)) => Step { name, index: rest.trim_end_matches(']').parse().ok() },
        None => Step { name: s, index: None },
    })
}

/// A line's content: its indentation, and its text after any list dash.
fn content(line: &str) -> Option<(usize, &str, bool)> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let indent = line.len() - t.len();
    match t.strip_prefix("- ").or(if t == "-" { Some("") } else { None }) {
        Some(item) => Some((indent + 2 + (item.len() - item.trim_start().len()), item.trim_start(), true)),
        None => Some((indent, t, false)),
    }
}

fn is_key(text: &str, key: &str) -> bool {
    text.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':'))
}

impl<'a> KeyLines<'a> {
    pub fn new(text: &'a str) -> KeyLines<'a> {
        KeyLines { lines: text.lines().collect() }
    }

    /// The 1-based line of `path`, or of the nearest enclosing key found; `None` when even its
    /// first key is not in the text.
    pub fn find(&self, path: &str) -> Option<usize> {
        let (mut from, mut to) = (0, self.lines.len());
        let mut found = None;
        for step in steps(path) {
            let Some(at) = self.child(from, to, step.name) else { break };
            found = Some(at);
            (from, to) = (at + 1, self.block_end(at));
            if let Some(i) = step.index {
                let Some((item, end)) = self.item(from, to, i) else { break };
                found = Some(item);
                (from, to) = (item, end);
            }
        }
        found.map(|i| i + 1)
    }

    /// The line in `from..to` holding `name:` at the block's own indentation.
    fn child(&self, from: usize, to: usize, name: &str) -> Option<usize> {
        let indent = (from..to).find_map(|i| content(self.lines[i]).map(|(ind, _, _)| ind))?;
        (from..to).find(|&i| content(self.lines[i]).is_some_and(|(ind, text, _)| ind == indent && is_key(text, name)))
    }

    /// Where the block of the key at `at` ends: the next line indented no deeper than it
    /// (a list dash at the key's own indentation still belongs to it).
    fn block_end(&self, at: usize) -> usize {
        let Some((key_indent, _, _)) = content(self.lines[at]) else { return at + 1 };
        (at + 1..self.lines.len())
            .find(|&i| {
                let line = self.lines[i];
                let t = line.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    return false;
                }
                let ind = line.len() - t.len();
                ind < key_indent || (ind == key_indent && !t.starts_with('-'))
            })
            .unwrap_or(self.lines.len())
    }

    /// The `index`th item of the block list in `from..to`: its first line and its end.
    fn item(&self, from: usize, to: usize, index: usize) -> Option<(usize, usize)> {
        let dash = |i: usize| {
            let t = self.lines[i].trim_start();
            (t == "-" || t.starts_with("- ")).then_some(self.lines[i].len() - t.len())
        };
        let indent = (from..to).find_map(dash)?;
        let items: Vec<usize> = (from..to).filter(|&i| dash(i) == Some(indent)).collect();
        let start = *items.get(index)?;
        Some((start, items.get(index + 1).copied().unwrap_or(to)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen: 127.0.0.1:8181
# a comment
limits:
  max_body: 1MiB
  header_timeout: 0s
tokens:
  - name: ci
    scope: publish
  - name: gw
    scope: admin
    bundles: [a]
logs: { max_age: soon }
bundle:
  sources:
  - http://a
  - http://b
  signing:
    keys:
      - id: k1
        algorithm: RS1
";

    #[test]
    fn finds_nested_keys_list_items_and_the_nearest_enclosing_key() {
        let l = KeyLines::new(TEXT);
        assert_eq!(l.find("listen"), Some(1));
        assert_eq!(l.find("limits.header_timeout"), Some(5));
        assert_eq!(l.find("tokens[1].scope"), Some(10));
        assert_eq!(l.find("tokens[1].bundles"), Some(11));
        assert_eq!(l.find("tokens[0].name"), Some(7));
        assert_eq!(l.find("tokens[0].bundles"), Some(7), "missing: the item's line");
        assert_eq!(l.find("logs.max_age"), Some(12), "inline: the mapping's line");
        assert_eq!(l.find("bundle.sources[1]"), Some(16));
        assert_eq!(l.find("bundle.signing.keys[0].algorithm"), Some(20));
        assert_eq!(l.find("tokens[5].name"), Some(6), "no such item: the list's line");
        assert_eq!(l.find("nowhere"), None);
        assert_eq!(l.find("scope"), None, "only top-level keys at the top");
    }
}
