//! How the gateway's and control-api's config files are read, in one place: strict YAML into
//! serde structs (an unknown key or a wrong type names its line, [`from_yaml`]), the values
//! both write the same way (durations such as `250ms` or `7d`, sizes such as `64MiB`), and the
//! [`Problems`] a validation collects, each named by its key and the line that key is on, so
//! that one run reports every problem of a file.

mod lines;
mod problems;
mod values;

pub use lines::KeyLines;
pub use problems::{Problem, Problems};
pub use values::{opt_duration, parse_duration, parse_size, ValueError};

/// A configuration file that could not be read, or whose YAML does not fit its schema.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// YAML that does not parse or does not fit the schema (unknown key, missing key, wrong
    /// type); `line` is 1-based, 0 when the parser does not know it.
    #[error("{path}:{line}: {message}")]
    Syntax { path: String, line: usize, message: String },
}

/// Why a config file was refused: it could not be read or parsed, or values in it are invalid
/// (every one listed, with its key and line).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable, or YAML that does not parse or fit the schema (unknown key, missing key,
    /// wrong type), named with its line.
    #[error(transparent)]
    File(#[from] FileError),
    /// Values that parse but are invalid; every one is listed.
    #[error("{path}: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { path: String, problems: Vec<Problem> },
}

/// A program's configuration, read from one YAML file: [`ConfigFile::parse`] validates the text
/// (the path names the file in errors and anchors relative paths); [`ConfigFile::load`] reads it.
pub trait ConfigFile: Sized {
    fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError>;

    /// Reads and validates a config file.
    fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::parse(&read_text(path)?, path)
    }
}

/// The text of a configuration file.
pub fn read_text(path: &std::path::Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.display().to_string(), source })
}

/// Reads YAML `text` from the file `path` (named in errors) into `T`, whose serde structs
/// should `deny_unknown_fields` so that a misspelt key is named with its line.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &std::path::Path) -> Result<T, FileError> {
    yaml_serde::from_str(text).map_err(|e| FileError::Syntax {
        path: path.display().to_string(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        message: e.to_string(),
    })
}
