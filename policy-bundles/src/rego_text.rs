//! Rego source text as OPA reads it, before regorus parses it: the one rewrite that closes a
//! parse gap between the two (docs/src/authors/regorus-parse-gap.md).
//!
//! OPA's scanner ends a `"..."` string only at `"` or a newline, and its parser keeps the text
//! of a string without a backslash as it is: a raw tab (or another control character) inside
//! such a string is part of its value. regorus 0.14's lexer refuses every character below
//! U+0020 in a string, and when that string sits in the first statement of a rule body the
//! error it reports is `expecting `}` while parsing set`. [`escape_raw_controls`] writes those
//! characters as the JSON escapes they stand for, which regorus reads to the same value.

use std::borrow::Cow;

/// `source` with every control character (below U+0020, newline aside) inside a `"..."` string
/// that holds no backslash written as its escape (`\t`, `\r`, `\u0001`): the value OPA gives the
/// string, in a form regorus accepts. Comments, raw strings and strings that hold a backslash
/// (OPA decodes those as JSON and refuses a raw control character in them too) are left as
/// they are. Lines do not move; a column after a rewritten character moves right.
pub fn escape_raw_controls(source: &str) -> Cow<'_, str> {
    if !source.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len() + 16);
    let mut rest = source;
    while let Some(i) = rest.find(['"', '`', '#']) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let end = match from.as_bytes()[0] {
            b'"' => string_end(from),
            b'`' => from[1..].find('`').map_or(from.len(), |j| j + 2),
            _ => from.find('\n').unwrap_or(from.len()),
        };
        let (token, after) = from.split_at(end);
        if token.starts_with('"') && !token.contains('\\') {
            push_escaped(&mut out, token);
        } else {
            out.push_str(token);
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The length of the `"..."` string `s` starts with, its closing quote included: up to the
/// first unescaped `"`, or up to (not including) a newline or the end when it is unterminated.
fn string_end(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return i + 1,
            b'\n' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn push_escaped(out: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(source: &str, rule: &str) -> anyhow::Result<regorus::Value> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("t.rego".into(), escape_raw_controls(source).into_owned())?;
        engine.eval_rule(rule.into())
    }

    /// The minimal case of docs/src/authors/regorus-parse-gap.md: OPA accepts it, regorus 0.14
    /// alone answers "expecting `}` while parsing set".
    #[test]
    fn a_raw_tab_in_a_string_in_a_rule_bodys_first_statement_parses_as_opa_does() {
        let src = "package p\nx := input.a\nt if { x with input as {\"a\": \"b\tc\"} }\n";
        let mut engine = regorus::Engine::new();
        let err = engine.add_policy("t.rego".into(), src.into()).unwrap_err().to_string();
        assert!(err.contains("expecting `}` while parsing set"), "{err}");
        assert_eq!(value_of(src, "data.p.t").unwrap(), regorus::Value::Bool(true));
    }

    #[test]
    fn the_rewritten_string_has_the_value_opa_gives_it() {
        let src = "package p\ns := \"a\tb\rc\u{1}d\"\n";
        assert_eq!(value_of(src, "data.p.s").unwrap(), regorus::Value::from("a\tb\rc\u{1}d"));
    }

    #[test]
    fn comments_raw_strings_and_strings_with_a_backslash_are_left_as_written() {
        let src = "# a\tcomment \"x\ty\"\nr := `a\tb`\ns := \"a\\n\tb\"\nt := \"q\\\"\t\"\n";
        assert_eq!(escape_raw_controls(src), src);
        let plain = "package p\nx := \"no controls\"\n";
        assert!(matches!(escape_raw_controls(plain), Cow::Borrowed(_)));
    }

    #[test]
    fn quotes_hashes_and_tabs_in_raw_strings_comments_and_other_scripts_keep_their_meaning() {
        // A multi-line raw string holding `"`, `#` and a tab; then a plain string after it.
        let raw = "package p\nr := `a \"q\" # not a comment\n\tb`\ns := \"x\ty\"\n";
        assert_eq!(value_of(raw, "data.p.r").unwrap(), regorus::Value::from("a \"q\" # not a comment\n\tb"));
        assert_eq!(value_of(raw, "data.p.s").unwrap(), regorus::Value::from("x\ty"));
        // `#` inside a string is no comment: the tab after it is still in the string.
        let hash = "package p\ns := \"a#b\t\"\n";
        assert_eq!(value_of(hash, "data.p.s").unwrap(), regorus::Value::from("a#b\t"));
        // A quote inside a comment opens no string: the next line's string is read on its own.
        let comment = "package p\n# say \"hi\t\ns := \"c\td\"\n";
        assert_eq!(value_of(comment, "data.p.s").unwrap(), regorus::Value::from("c\td"));
        // Non-ASCII around a tab, and a CRLF file.
        let wide = "package p\r\ns := \"é\t日本\"\r\n";
        assert_eq!(value_of(wide, "data.p.s").unwrap(), regorus::Value::from("é\t日本"));
    }

    #[test]
    fn an_unterminated_string_stops_at_the_newline_and_lines_never_move() {
        let src = "s := \"a\tb\nt := \"c\td\"\n";
        let out = escape_raw_controls(src);
        assert_eq!(out, "s := \"a\\tb\nt := \"c\\td\"\n");
        assert_eq!(out.lines().count(), src.lines().count());
    }
}
