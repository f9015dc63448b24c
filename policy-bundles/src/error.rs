//! Errors of the bundle format: every problem names the file (and line, where there is one).

use std::fmt;

/// What kind of problem made a bundle unusable; also the `reason` label of activation failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The archive itself is hostile or broken (traversal, links, bombs, sizes, bad gzip/tar).
    Archive,
    /// A `.manifest`, `data.json` or `data.yaml` that does not parse.
    Syntax,
    /// Data outside the manifest's roots, or data documents that collide.
    Roots,
    /// A Rego module that does not parse or compile.
    Rego,
    /// `data.gateway` settings that are invalid or inconsistent.
    Settings,
    /// JWT trust roots (JWKS) that cannot be used.
    Jwks,
    /// Over a resource budget (size, compiled size, memory or CPU of validation): see
    /// [`crate::budget`].
    Budget,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Archive => "archive",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Roots => "roots",
            ErrorKind::Rego => "rego",
            ErrorKind::Settings => "settings",
            ErrorKind::Jwks => "jwks",
            ErrorKind::Budget => "budget",
        }
    }

    /// The kind named by [`ErrorKind::as_str`].
    pub fn parse(s: &str) -> Option<ErrorKind> {
        [
            ErrorKind::Archive,
            ErrorKind::Syntax,
            ErrorKind::Roots,
            ErrorKind::Rego,
            ErrorKind::Settings,
            ErrorKind::Jwks,
            ErrorKind::Budget,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One problem in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    pub kind: ErrorKind,
    /// Path of the offending file inside the bundle, when one is to blame.
    pub file: Option<String>,
    /// 1-based line in that file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl BundleError {
    pub fn new(kind: ErrorKind, file: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        BundleError { kind, file: file.into(), line: None, message: message.into() }
    }

    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            (None, _) => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for BundleError {}

/// Every problem found in a bundle, so an author fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleErrors(pub Vec<BundleError>);

impl BundleErrors {
    /// The kind of the first problem: what a metric's `reason` label reports.
    pub fn kind(&self) -> ErrorKind {
        self.0.first().map(|e| e.kind).unwrap_or(ErrorKind::Archive)
    }
}

impl From<BundleError> for BundleErrors {
    fn from(e: BundleError) -> Self {
        BundleErrors(vec![e])
    }
}

impl fmt::Display for BundleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BundleErrors {}
