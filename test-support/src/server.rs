//! What the gateway and control-api harnesses share: a server's config file (its own keys, and
//! the top-level keys a test adds) and how its process is launched ([`Launch`]).
//! [`crate::gateway::GatewayConfig`] and [`crate::control_api::ControlApiConfig`] are this
//! [`ServerConfig`] with their own [`Keys`].

use std::path::PathBuf;

use anyhow::Context as _;

use crate::process::Launch;

/// A server's own config keys.
pub trait Keys {
    /// The variable its log filter is read from (`GATEWAY_LOG`).
    const LOG_VAR: &'static str;

    /// The config's text, with `top` (the top-level keys a caller added, each line ending in a
    /// newline) where they belong.
    fn yaml(&self, top: &str) -> String;
}

/// A config file to write, and how to launch the server on it.
#[derive(Clone, Debug)]
pub struct ServerConfig<K> {
    path: PathBuf,
    top: String,
    pub(crate) launch: Launch,
    pub(crate) keys: K,
}

impl<K: Keys> ServerConfig<K> {
    pub(crate) fn with(path: PathBuf, keys: K, launch: Launch) -> ServerConfig<K> {
        ServerConfig { path, top: String::new(), launch, keys }
    }

    /// Another file name in the same folder.
    pub fn file_name(mut self, name: &str) -> ServerConfig<K> {
        self.path.set_file_name(name);
        self
    }

    /// More top-level keys (lines, each ending in a newline; one is added if missing).
    pub fn top(mut self, yaml: &str) -> ServerConfig<K> {
        self.top.push_str(&crate::yaml_lines(yaml));
        self
    }

    /// The log filter.
    pub fn log(self, filter: &str) -> ServerConfig<K> {
        self.launch(|l| l.env(K::LOG_VAR, filter))
    }

    /// Changes how the process is started (binary, environment, outputs, stopping).
    pub fn launch(mut self, edit: impl FnOnce(Launch) -> Launch) -> ServerConfig<K> {
        self.launch = edit(self.launch);
        self
    }

    /// The config's text.
    pub fn yaml(&self) -> String {
        self.keys.yaml(&self.top)
    }

    pub(crate) fn try_write(&self) -> anyhow::Result<PathBuf> {
        std::fs::write(&self.path, self.yaml()).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self.path.clone())
    }

    /// Writes the config file (for `--check-config`, or for a process started later).
    pub fn write(&self) -> PathBuf {
        self.try_write().unwrap_or_else(|e| panic!("{e:#}"))
    }
}
