//! The console's page shell (head, navigation, sign-out) and the small formatters its pages
//! share. Every value is interpolated through `maud`, which escapes it.

use axum::http::StatusCode;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use crate::auth::{Principal, Scope};
use crate::clock;

/// A document: its head (the title, the console's style sheet, and its script when `script`)
/// and its body.
fn document(title: &str, script: bool, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · control-api" }
                    link rel="stylesheet" href="/ui/console.css";
                    @if script { script src="/ui/console.js" defer {} }
                }
                body { (body) }
            }
        }
        .into_string(),
    )
}

/// A whole page: the title, the navigation for this token's scope, the body.
pub fn layout(title: &str, who: &Principal, body: Markup) -> Html<String> {
    let nav = [
        ("/ui/fleet", "Fleet", Scope::Read),
        ("/ui/bundles", "Bundles", Scope::Read),
        ("/ui/decisions", "Decisions", Scope::Logs),
        ("/ui/propagation", "Propagation", Scope::Read),
    ];
    let body = html! {
        header {
            strong { "control-api" }
            nav {
                @for (href, label, scope) in nav {
                    @if who.scope.allows(scope) { a href=(href) { (label) } }
                }
            }
            span.who { "token " code { (who.name) } " (" (who.scope.as_str()) ")" }
            form method="post" action="/ui/logout" { button type="submit" { "Sign out" } }
        }
        main {
            h1 { (title) }
            (body)
        }
    };
    document(title, true, body)
}

/// The sign-in form, with why the last attempt failed.
pub fn login(error: Option<&str>) -> Html<String> {
    let body = html! {
        main.login {
            h1 { "control-api console" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" {
                label for="token" { "Token (read, publish or logs)" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The token is kept in this browser session only, in a cookie no script can read." }
        }
    };
    document("Sign in", false, body)
}

/// A page saying why what was asked is not shown.
pub fn error(status: StatusCode, message: &str) -> Html<String> {
    let body = html! {
        main {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/ui/" { "Back to the console" } }
        }
    };
    document(&status.as_u16().to_string(), false, body)
}

/// `12 s ago`, `3 min ago`, `2 h ago`, `4 d ago`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    let s = now_ms.saturating_sub(ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A time as the API writes it (RFC 3339, UTC).
pub fn time(ms: i64) -> String {
    clock::rfc3339(ms)
}

/// A byte count for people: `812 B`, `14.2 KiB`, `3.1 MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A value for a URL's query or path: everything but letters and digits percent-encoded.
pub fn q(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The first 12 hex digits of a digest.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Seconds for people: `850 ms`, `4.2 s`, `3 min 10 s`.
pub fn seconds(ms: i64) -> String {
    match ms {
        i64::MIN..=999 => format!("{} ms", ms.max(0)),
        1000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatters_read_as_people_write() {
        assert_eq!(ago(0, 12_000), "12 s ago");
        assert_eq!(ago(0, 600_000), "10 min ago");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("ab"), "ab");
        assert_eq!(seconds(4200), "4.2 s");
        assert_eq!(seconds(190_000), "3 min 10 s");
    }

    #[test]
    fn a_hostile_value_is_escaped_in_every_page() {
        let who =
            Principal { name: "<script>alert(1)</script>".into(), scope: Scope::Read, instance: None, bundles: None };
        let Html(page) = layout("<img src=x onerror=alert(1)>", &who, html! { p { ("\"><b>") } });
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
        assert!(page.contains("&quot;&gt;&lt;b&gt;"), "{page}");
        let Html(e) = error(StatusCode::FORBIDDEN, "<script>x</script>");
        assert!(e.contains("&lt;script&gt;x&lt;/script&gt;") && !e.contains("<script>x"), "{e}");
    }
}
