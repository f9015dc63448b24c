//! Traffic: one checked stream per gateway, each pausable while its own gateway restarts.

use e2e::{Gateway, Tally, Traffic};

use super::TRAFFIC_INTERVAL;

struct Stream {
    name: String,
    base: String,
    live: Option<Traffic>,
}

/// Steady streams through gateways; what stopped streams saw is kept in `done`.
pub struct Streams {
    streams: Vec<Stream>,
    done: Tally,
}

impl Streams {
    pub fn start(gws: &[(&str, &Gateway)]) -> Streams {
        let streams = gws
            .iter()
            .map(|(name, gw)| Stream {
                name: (*name).to_owned(),
                base: gw.base.clone(),
                live: Some(Traffic::start(std::slice::from_ref(&gw.base), TRAFFIC_INTERVAL)),
            })
            .collect();
        Streams { streams, done: Tally::default() }
    }

    /// Stops the stream through `name` (while that gateway itself restarts).
    pub fn pause(&mut self, name: &str) {
        for s in self.streams.iter_mut().filter(|s| s.name == name) {
            if let Some(t) = s.live.take() {
                self.done.add(&t.stop());
            }
        }
    }

    pub fn resume(&mut self, name: &str) {
        for s in self.streams.iter_mut().filter(|s| s.name == name && s.live.is_none()) {
            s.live = Some(Traffic::start(std::slice::from_ref(&s.base), TRAFFIC_INTERVAL));
        }
    }

    pub fn pause_all(&mut self) {
        let names: Vec<String> = self.streams.iter().map(|s| s.name.clone()).collect();
        for n in names {
            self.pause(&n);
        }
    }

    pub fn resume_all(&mut self) {
        let names: Vec<String> = self.streams.iter().map(|s| s.name.clone()).collect();
        for n in names {
            self.resume(&n);
        }
    }

    /// Everything sent so far through one gateway's live stream.
    pub fn snapshot_of(&self, name: &str) -> Tally {
        let mut t = Tally::default();
        for s in self.streams.iter().filter(|s| s.name == name) {
            if let Some(live) = &s.live {
                t.add(&live.snapshot());
            }
        }
        t
    }

    /// Everything sent so far, by every stream.
    pub fn snapshot(&self) -> Tally {
        let mut t = Tally::default();
        t.add(&self.done);
        for s in &self.streams {
            if let Some(live) = &s.live {
                t.add(&live.snapshot());
            }
        }
        t
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.pause_all();
    }
}
