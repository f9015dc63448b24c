//! Prometheus text read with a parser (`prometheus-parse`), so a test names a metric and its
//! labels instead of matching a rendered line by prefix.

use std::collections::BTreeMap;
use std::time::Duration;

/// One scrape of a `/metrics` page.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// Parses Prometheus text; panics naming the problem when it is not valid.
    pub fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}")))
    }

    /// GETs `url` (the `/metrics` page) and parses it; `None` when it does not answer 200.
    pub fn fetch(url: &str) -> Option<Scrape> {
        let resp = crate::http::request_within(Duration::from_secs(10), "GET", url, &[], None);
        (resp.status == 200).then(|| Scrape::parse(&resp.text()))
    }

    /// The value of the sample `name` whose labels include every pair of `labels`.
    /// Histogram and summary parts are addressed by their sample names (`x_count`, `x_sum`).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| scalar(&s.value))
    }

    /// The sum over every sample `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| scalar(&s.value))
            // `f64`'s empty sum is -0.0, which prints as "-0": start from +0.0.
            .fold(0.0, |a, b| a + b)
    }

    /// Every label set of `name`, with its value.
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| {
                let labels = s.labels.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                scalar(&s.value).map(|v| (labels, v))
            })
            .collect()
    }
}

fn scalar(v: &prometheus_parse::Value) -> Option<f64> {
    match v {
        prometheus_parse::Value::Counter(x)
        | prometheus_parse::Value::Gauge(x)
        | prometheus_parse::Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// A series written as it is rendered, `name` or `name{k="v",...}`, split into its name and
/// labels, so callers can keep naming series the way Prometheus shows them.
pub fn split_series(series: &str) -> (&str, Vec<(&str, &str)>) {
    let Some((name, rest)) = series.split_once('{') else { return (series, Vec::new()) };
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .collect();
    (name, labels)
}

/// The value of `series` (`name{k="v"}` as rendered) on the `/metrics` page at `url`.
pub fn metric(url: &str, series: &str) -> Option<f64> {
    let (name, labels) = split_series(series);
    Scrape::fetch(url)?.value(name, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{route=\"orders\",decision=\"allow\"} 3\na_total{route=\"public\",decision=\"allow\"} 4\n# TYPE g gauge\ng 1.5\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";

    #[test]
    fn finds_samples_by_name_and_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.value("a_total", &[("route", "orders")]), Some(3.0));
        assert_eq!(s.value("a_total", &[("route", "nope")]), None);
        assert_eq!(s.sum("a_total", &[("decision", "allow")]), 7.0);
        assert_eq!(s.value("g", &[]), Some(1.5));
        assert_eq!(s.value("h_count", &[]), Some(2.0));
        assert_eq!(s.series("a_total").len(), 2);
    }

    #[test]
    fn splits_rendered_series() {
        assert_eq!(split_series("x"), ("x", vec![]));
        assert_eq!(split_series("x{a=\"1\",b=\"2\"}"), ("x", vec![("a", "1"), ("b", "2")]));
    }
}
