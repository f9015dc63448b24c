//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`,
//! which `.ci/run` installs), for the console's browser tests. Synchronous, like the rest of
//! the harness: each call runs on a runtime of its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::process::{free_port_outside_ephemeral, Proc};

/// Where Debian puts them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser session: chromedriver, its Chromium, and the WebDriver client.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with an empty profile and no
    /// background networking (this machine's network is closed: only loopback is used).
    pub fn start() -> anyhow::Result<Browser> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                bail!("{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)");
            }
        }
        let port = free_port_outside_ephemeral();
        let driver = Proc::try_spawn(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let profile = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let caps = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else { bail!("capabilities") };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match rt.block_on(ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url)) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(anyhow!("chromedriver at {url}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Ok(Browser { rt, client: Some(client), _driver: driver, _profile: profile })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("the session is open until drop")
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.rt.block_on(self.c().goto(url)).with_context(|| format!("goto {url}"))
    }

    pub fn url(&self) -> anyhow::Result<String> {
        Ok(self.rt.block_on(self.c().current_url())?.to_string())
    }

    /// Waits up to `limit` for the page's URL to satisfy `ok` (a click's navigation to end).
    pub fn wait_url(&self, limit: Duration, ok: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let url = self.url()?;
            if ok(&url) {
                return Ok(url);
            }
            if start.elapsed() > limit {
                bail!("after {limit:?} the page is still {url}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.with_context(|| format!("find {css}"))?;
            Ok(e.text().await?)
        })
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self.rt.block_on(self.c().find_all(Locator::Css(css)))?.len())
    }

    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.with_context(|| format!("find {css}"))?;
            Ok(e.click().await?)
        })
    }

    /// Replaces the value of the input matching `css` with `text`, as typed.
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.with_context(|| format!("find {css}"))?;
            e.clear().await?;
            Ok(e.send_keys(text).await?)
        })
    }

    /// Runs `script` in the page (a function body; `return` gives the value).
    pub fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.rt.block_on(self.c().execute(script, Vec::new()))?)
    }

    /// Runs an asynchronous `script` in the page: it calls `arguments[0](value)` when done.
    pub fn js_async(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.rt.block_on(self.c().execute_async(script, Vec::new()))?)
    }

    /// The text of an open `alert()`, if a page script opened one.
    pub fn alert(&self) -> Option<String> {
        self.rt.block_on(self.c().get_alert_text()).ok()
    }

    /// Waits up to `limit` for the text of `css` to satisfy `ok`; returns the text and how long.
    pub fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(String, Duration)> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            if let Ok(t) = self.text(css) {
                if ok(&t) {
                    return Ok((t, start.elapsed()));
                }
                last = t;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("after {limit:?}, `{css}` reads: {last:?}")
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.rt.block_on(self.c().screenshot())?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
    }
}
