//! Text from a bundle, a log or a server, made safe to print to a terminal: every control
//! character but the tab (C0, DEL and C1, which start escape sequences, and line breaks, which
//! could fake a line of output) is written as its Unicode escape. One implementation for every
//! tool that prints what it did not write (`bundlectl diff`, `eval`, `test --coverage`).

use std::borrow::Cow;

/// `s` with its control characters but tabs escaped (`\u{1b}`); borrowed when it has none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Several lines, each made [`printable`]; the line breaks kept.
pub fn printable_lines(s: &str) -> String {
    s.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        assert_eq!(printable("plain\ttab"), "plain\ttab");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}]0;pwned\u{7}"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(printable("csi\u{9b}31m"), "csi\\u{9b}31m", "C1 controls too");
        assert_eq!(printable("two\nlines\r"), "two\\u{a}lines\\u{d}");
        assert_eq!(printable_lines("a\u{1b}\nb"), "a\\u{1b}\nb");
    }
}
