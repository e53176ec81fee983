//! Prometheus metrics: request counts and latency histograms per route, method and status.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

type Key = (String, String, u16);

/// The in-process metrics registry.
#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<Key, Series>>,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_owned(), method.to_owned(), status);
        let s = map.entry(key).or_default();
        s.count += 1;
        s.sum += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let map = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP azotte_http_requests_total HTTP requests served.\n");
        out.push_str("# TYPE azotte_http_requests_total counter\n");
        for ((route, method, status), s) in map.iter() {
            let _ = writeln!(
                out,
                "azotte_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP azotte_http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE azotte_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in map.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "azotte_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "azotte_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(out, "azotte_http_request_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "azotte_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
        out
    }
}

/// Records one observation per request, labelled by the matched route template (never the raw
/// path, which would hold ids and explode the series count).
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    metrics.observe(&method, route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("GET", "/healthz", 200, 0.0007);
        m.observe("GET", "/healthz", 200, 0.2);
        let text = m.render();
        assert!(
            text.contains("azotte_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2")
        );
        assert!(text.contains("le=\"0.0005\"} 0"));
        assert!(text.contains("le=\"0.001\"} 1"));
        assert!(text.contains("le=\"0.25\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
