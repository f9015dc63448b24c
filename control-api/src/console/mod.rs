//! The console (`/ui/`): server-rendered pages over what the API already knows (fleet, bundles
//! and their revisions and diffs, rollouts, decisions, propagation), with a little same-origin
//! JavaScript to refresh live parts. DESIGN.md's "The console".
//!
//! Security, each point tested:
//! * The token is entered once in a form (`POST /ui/login`) and kept in a session cookie:
//!   `HttpOnly` (no script can read it), `SameSite=Strict` (no other site's page sends it),
//!   `Path=/ui`. It is never in a URL. Every page checks it exactly as the API checks a bearer
//!   token, scope included: a read token sees, a publish token may also roll back and promote,
//!   a logs token sees decisions.
//! * Every value that comes from a bundle, a log or a gateway is escaped: the pages are
//!   [`maud`] templates, which escape every interpolated string.
//! * A strict Content-Security-Policy: scripts, styles and fetches from this origin only, no
//!   inline script or style, no frames, forms post here only. No third-party origin is named.
//! * No GET changes state: rollback and promotion are `POST` forms behind a confirmation page,
//!   and every `POST` must come from this origin (`Origin`, `Sec-Fetch-Site`).

mod bundles;
mod decisions;
mod diff;
mod fleet;
mod page;
mod propagation;

use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use crate::app_state::AppState;
use crate::auth::{AuthError, Principal, Scope};

/// The session cookie: the token, hex-encoded. Behind TLS (`console.secure_cookie`) it is
/// [`SECURE_COOKIE_NAME`], which browsers accept only with `Secure`, `Path=/` and no `Domain`:
/// sent over HTTPS only, and no sibling host can plant one.
const COOKIE_NAME: &str = "console_token";
const SECURE_COOKIE_NAME: &str = "__Host-console_token";

/// The cookie's name and attributes, as configured.
fn cookie_shape(state: &AppState) -> (&'static str, &'static str) {
    if state.0.config.console.secure_cookie {
        (SECURE_COOKIE_NAME, "Path=/; Secure; HttpOnly; SameSite=Strict")
    } else {
        (COOKIE_NAME, "Path=/ui; HttpOnly; SameSite=Strict")
    }
}
/// What the console's pages may load: this origin's script and style, nothing inline, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (merged beside the API's by [`crate::serve`]'s router).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/console.css", get(|| async { asset("text/css", include_str!("console.css")) }))
        .route("/ui/console.js", get(|| async { asset("text/javascript", include_str!("console.js")) }))
        .route("/ui/fleet", get(fleet::page))
        .route("/ui/fleet/live", get(fleet::live))
        .route("/ui/bundles", get(bundles::index))
        .route("/ui/bundles/{name}", get(bundles::page))
        .route("/ui/bundles/{name}/rollout/live", get(bundles::rollout_live))
        .route("/ui/bundles/{name}/rollback", get(bundles::confirm_rollback).post(bundles::rollback))
        .route("/ui/bundles/{name}/promote", get(bundles::confirm_promote).post(bundles::promote))
        .route("/ui/bundles/{name}/diff", get(diff::page))
        .route("/ui/decisions", get(decisions::page))
        .route("/ui/propagation", get(propagation::page))
        .layer(axum::middleware::map_response(secure))
        .with_state(state)
}

/// The headers every console answer carries.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP));
    h.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    h.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    h.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("same-origin"));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    h.entry(CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")];
    (headers, body).into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response()
}

/// Why a console page is not shown: a page saying so, with the status the API would answer.
#[derive(Debug)]
pub enum ConsoleError {
    /// No session, or its token is not (or no longer) valid: back to the login form.
    SignIn,
    /// The token's scope does not allow this page or action.
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    /// The action came too late (a canary already judged).
    Conflict(String),
    /// A POST from another origin.
    CrossOrigin,
    Api(crate::api::ApiError),
}

impl From<crate::api::ApiError> for ConsoleError {
    fn from(e: crate::api::ApiError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<crate::store::StoreError> for ConsoleError {
    fn from(e: crate::store::StoreError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ConsoleError::SignIn => return redirect("/ui/login"),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ConsoleError::Conflict(m) => (StatusCode::CONFLICT, m),
            ConsoleError::CrossOrigin => {
                (StatusCode::FORBIDDEN, "refused: a console form must be posted from the console's own origin".into())
            }
            ConsoleError::Api(e) => {
                let message = e.to_string();
                (e.into_response().status(), message)
            }
        };
        (status, page::error(status, &message)).into_response()
    }
}

/// Whoever holds the session's token: any valid token, whatever its scope.
pub struct Viewer(pub Principal);

impl Viewer {
    /// This page needs `scope` (a publish token has read's rights too).
    pub fn needs(&self, scope: Scope, what: &str) -> Result<(), ConsoleError> {
        if self.0.scope.allows(scope) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "token `{}` has scope `{}`: {what} needs a {} token",
                self.0.name,
                self.0.scope.as_str(),
                scope.as_str()
            )))
        }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.0.scope.allows(scope)
    }
}

/// Checks a token as the API checks a bearer token, for any scope.
fn identify(state: &AppState, token: &[u8]) -> Result<Principal, AuthError> {
    let mut header = b"Bearer ".to_vec();
    header.extend_from_slice(token);
    match state.0.tokens.authorize(Some(&header), Scope::Read) {
        Err(AuthError::Forbidden { .. }) => state.0.tokens.authorize(Some(&header), Scope::Logs),
        other => other,
    }
}

/// Every `console_token` the request's cookies carry, decoded (a browser may send several: one
/// planted by a sibling host with a narrower path comes first).
fn session_tokens<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .filter_map(|(_, v)| hex::decode(v).ok())
        .filter(|t| !t.is_empty())
}

/// The first session token that is a valid token, and whose it is.
fn session(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    session_tokens(headers, cookie_shape(state).0).take(4).find_map(|t| identify(state, &t).ok())
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ConsoleError> {
        session(state, &parts.headers).map(Viewer).ok_or(ConsoleError::SignIn)
    }
}

/// A `POST` must come from the console's own origin. Browsers send `Sec-Fetch-Site`: it must be
/// `same-origin`, and decides alone (a reverse proxy may rewrite `Host`). Without it, an
/// `Origin`, when sent, must name this host. The session cookie is `SameSite=Strict` already;
/// this is the second lock.
pub fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site.as_bytes() == b"same-origin" { Ok(()) } else { Err(ConsoleError::CrossOrigin) };
    }
    if let Some(origin) = headers.get("origin") {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).ok_or(ConsoleError::CrossOrigin)?;
        let origin = origin.to_str().map_err(|_| ConsoleError::CrossOrigin)?;
        let bare = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if bare != Some(host) {
            return Err(ConsoleError::CrossOrigin);
        }
    }
    Ok(())
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session(&state, &headers) {
        Some(who) if who.scope.allows(Scope::Read) => redirect("/ui/fleet"),
        Some(_) => redirect("/ui/decisions"),
        None => redirect("/ui/login"),
    }
}

async fn login_form() -> Response {
    page::login(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`: checks the token, then keeps it in the session cookie.
async fn login(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    let token = form.token.trim();
    let who = match identify(&state, token.as_bytes()) {
        Ok(who) => who,
        Err(e) => {
            let why = match e {
                AuthError::Missing => "enter a token".to_string(),
                _ => "this token is not one control-api knows".to_string(),
            };
            return (StatusCode::UNAUTHORIZED, page::login(Some(&why))).into_response();
        }
    };
    tracing::info!(token = %who.name, "console sign-in");
    let (name, attributes) = cookie_shape(&state);
    let cookie = format!("{name}={}; {attributes}", hex::encode(token));
    let to = if who.scope.allows(Scope::Read) { "/ui/fleet" } else { "/ui/decisions" };
    let mut response = redirect(to);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// `POST /ui/logout`: forgets the session's token.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    let mut response = redirect("/ui/login");
    let (name, attributes) = cookie_shape(&state);
    let gone = format!("{name}=; {attributes}; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{config, PUBLISH, READ};
    use crate::config::TokenConfig;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    use tower::ServiceExt;

    const LOGS: &str = "logs-secret";

    /// The API and the console over one in-memory store, with `main` published as r1 then r2.
    async fn stack() -> Router {
        let mut c = config();
        c.max_bundle_size = 1 << 20;
        c.tokens.push(TokenConfig {
            name: "auditor".into(),
            scope: Scope::Logs,
            sha256: Sha256::digest(LOGS.as_bytes()).into(),
            instance: None,
            bundles: None,
        });
        let store = Arc::new(crate::store::SqlStore::sqlite_memory().await.unwrap());
        let state = AppState::new(c, store).unwrap();
        let app = crate::api::app(state.clone()).merge(router(state));
        for rev in ["r1", "r2"] {
            let tarball = test_support::bundles::tarball_with(rev, |_| {});
            let put = Request::put("/v1/bundles/main").header("authorization", format!("Bearer {PUBLISH}"));
            let resp = app.clone().oneshot(put.body(Body::from(tarball)).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED, "publish {rev}");
        }
        app
    }

    fn cookie(token: &str) -> String {
        format!("{COOKIE_NAME}={}", hex::encode(token))
    }

    async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let text = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
        (parts.status, parts.headers, text)
    }

    /// A rollback form's POST with a session of `token` (the body is `to=...`).
    fn post_rollback(token: &str) -> axum::http::request::Builder {
        Request::post("/ui/bundles/main/rollback")
            .header("cookie", cookie(token))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("host", "console.test")
    }

    async fn active(app: &Router) -> String {
        let req = Request::get("/v1/bundles/main").header("authorization", format!("Bearer {READ}"));
        let (_, headers, _) = send(app, req.body(Body::empty()).unwrap()).await;
        headers.get("x-bundle-revision").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }

    #[tokio::test]
    async fn every_console_answer_carries_a_strict_csp_naming_no_other_origin() {
        let app = stack().await;
        for path in ["/ui/login", "/ui/fleet", "/ui/console.js", "/ui/nothing-here"] {
            let req = Request::get(path).header("cookie", cookie(READ)).body(Body::empty()).unwrap();
            let (status, headers, _) = send(&app, req).await;
            if status == StatusCode::NOT_FOUND {
                continue; // the API's JSON 404, outside the console
            }
            let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
            assert_eq!(csp, CSP, "{path}");
            assert!(!csp.contains("http") && !csp.contains("unsafe"), "{csp}");
            assert_eq!(headers.get("x-frame-options").unwrap(), "DENY", "{path}");
        }
        let (_, _, page) = send(&app, Request::get("/ui/login").body(Body::empty()).unwrap()).await;
        assert!(!page.contains("http://") && !page.contains("https://"), "no third-party origin: {page}");
        assert!(!page.contains("<script>") && !page.contains(" style="), "no inline script or style: {page}");
    }

    #[tokio::test]
    async fn a_session_is_an_http_only_strict_cookie_and_the_token_is_never_in_a_url() {
        let app = stack().await;
        let (status, headers, _) = send(&app, Request::get("/ui/fleet").body(Body::empty()).unwrap()).await;
        assert_eq!((status, headers.get(LOCATION).unwrap().to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/login"));
        let login = Request::post("/ui/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={READ}")))
            .unwrap();
        let (status, headers, _) = send(&app, login).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let set = headers.get(SET_COOKIE).unwrap().to_str().unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Max-Age") && !set.contains("Expires"), "a session cookie: {set}");
        assert!(!headers.get(LOCATION).unwrap().to_str().unwrap().contains(READ));
        let wrong = Request::post("/ui/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("token=guess"))
            .unwrap();
        let (status, headers, _) = send(&app, wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.get(SET_COOKIE).is_none());
        let forged = Request::get("/ui/fleet").header("cookie", cookie("guess")).body(Body::empty()).unwrap();
        assert_eq!(send(&app, forged).await.0, StatusCode::SEE_OTHER, "an unknown token is no session");
    }

    #[tokio::test]
    async fn a_planted_junk_cookie_before_the_real_one_neither_signs_out_nor_in_as_another() {
        let app = stack().await;
        let both = format!("{COOKIE_NAME}=zz; {}", cookie(READ));
        let req = Request::get("/ui/fleet").header("cookie", both).body(Body::empty()).unwrap();
        assert_eq!(send(&app, req).await.0, StatusCode::OK, "the valid session is used");
        let unknown_first = format!("{}; {}", cookie("guess"), cookie(READ));
        let req = Request::get("/ui/fleet").header("cookie", unknown_first).body(Body::empty()).unwrap();
        let (status, _, page) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("token <code>gw</code>"), "{page}");
    }

    #[tokio::test]
    async fn behind_tls_the_session_cookie_is_host_prefixed_and_secure() {
        let mut c = config();
        c.console.secure_cookie = true;
        let store = Arc::new(crate::store::SqlStore::sqlite_memory().await.unwrap());
        let app = router(AppState::new(c, store).unwrap());
        let login = Request::post("/ui/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={READ}")))
            .unwrap();
        let (_, headers, _) = send(&app, login).await;
        let set = headers.get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
        assert!(
            set.starts_with("__Host-console_token=") && set.contains("; Secure") && set.contains("Path=/;"),
            "{set}"
        );
        let plain = Request::get("/ui/fleet").header("cookie", cookie(READ)).body(Body::empty()).unwrap();
        assert_eq!(send(&app, plain).await.0, StatusCode::SEE_OTHER, "the plain cookie is no session here");
        let secure = format!("__Host-console_token={}", hex::encode(READ));
        let ok = Request::get("/ui/fleet").header("cookie", secure).body(Body::empty()).unwrap();
        assert_eq!(send(&app, ok).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_cross_site_post_cannot_roll_back_even_with_a_publish_session() {
        let app = stack().await;
        for (header, value) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site"), ("origin", "null")]
        {
            let req = post_rollback(PUBLISH).header(header, value).body(Body::from("to=r1")).unwrap();
            let (status, _, page) = send(&app, req).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{header}: {value}");
            assert!(page.contains("own origin"), "{page}");
        }
        assert_eq!(active(&app).await, "r2");
        let same = post_rollback(PUBLISH)
            .header("origin", "http://console.test")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from("to=r1"))
            .unwrap();
        assert_eq!(send(&app, same).await.0, StatusCode::SEE_OTHER);
        assert_eq!(active(&app).await, "r1", "the same-origin POST of a publish session rolls back");
    }

    #[tokio::test]
    async fn no_get_changes_state_and_a_read_session_cannot_roll_back_or_promote() {
        let app = stack().await;
        let get = Request::get("/ui/bundles/main/rollback?to=r1").header("cookie", cookie(PUBLISH));
        let (status, _, page) = send(&app, get.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("method=\"post\""), "the confirmation is a form: {page}");
        assert_eq!(active(&app).await, "r2", "the confirmation page changed nothing");
        let read = post_rollback(READ).body(Body::from("to=r1")).unwrap();
        let (status, _, page) = send(&app, read).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(page.contains("needs a publish token"), "{page}");
        let promote = Request::post("/ui/bundles/main/promote")
            .header("cookie", cookie(READ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("revision=r2"))
            .unwrap();
        assert_eq!(send(&app, promote).await.0, StatusCode::FORBIDDEN);
        assert_eq!(active(&app).await, "r2");
    }

    #[tokio::test]
    async fn decisions_need_a_logs_token_and_a_logs_token_sees_nothing_else() {
        let app = stack().await;
        let read = Request::get("/ui/decisions").header("cookie", cookie(READ)).body(Body::empty()).unwrap();
        assert_eq!(send(&app, read).await.0, StatusCode::FORBIDDEN);
        let logs = Request::get("/ui/decisions").header("cookie", cookie(LOGS)).body(Body::empty()).unwrap();
        assert_eq!(send(&app, logs).await.0, StatusCode::OK);
        for path in ["/ui/fleet", "/ui/bundles/main", "/ui/propagation"] {
            let req = Request::get(path).header("cookie", cookie(LOGS)).body(Body::empty()).unwrap();
            assert_eq!(send(&app, req).await.0, StatusCode::FORBIDDEN, "{path}");
        }
    }
}
