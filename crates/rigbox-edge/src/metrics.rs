//! Per-app request metrics recorded at the edge.
//!
//! Every proxied request adds to a 10-second bucket of its app and host:
//! the request count, the count per status class, 5xx responses, response
//! body bytes sent to the client, and a latency histogram (time from the
//! request's arrival to the response headers, in fixed buckets). The
//! buckets are drained regularly into a [`MetricsSink`] (the control plane
//! stores them in its database); percentiles over any range are computed by
//! adding histograms.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Width of a bucket.
pub const STEP_SECS: i64 = 10;

/// Upper bounds (ms) of the latency histogram; one more bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [f64; 27] = [
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0,
    5000.0, 7500.0, 10000.0, 15000.0, 30000.0, 60000.0,
];

/// Number of histogram buckets.
pub const HIST_LEN: usize = LATENCY_BOUNDS_MS.len() + 1;

/// One drained bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSample {
    /// App.
    pub app_id: String,
    /// Host the requests came for.
    pub host: String,
    /// Bucket start (seconds since the epoch).
    pub t: i64,
    /// Bucket width (seconds).
    pub step_secs: i64,
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
    /// Responses per class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status_classes: [u64; 5],
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Latency histogram ([`HIST_LEN`] counts over [`LATENCY_BOUNDS_MS`]).
    pub latency_hist: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Acc {
    requests: u64,
    errors_5xx: u64,
    status_classes: [u64; 5],
    bytes_out: u64,
    hist: [u64; HIST_LEN],
}

impl Default for Acc {
    fn default() -> Self {
        Acc { requests: 0, errors_5xx: 0, status_classes: [0; 5], bytes_out: 0, hist: [0; HIST_LEN] }
    }
}

/// The histogram bucket of a latency.
pub fn bucket_of(ms: f64) -> usize {
    LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Percentile `p` (0–100) of a histogram, interpolating linearly inside the
/// bucket it falls in; 0 for an empty histogram.
pub fn percentile(hist: &[u64], p: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (p / 100.0 * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lo = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MS[i - 1] };
            let hi = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(lo * 2.0);
            let frac = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return lo + (hi - lo) * frac;
        }
        seen += n;
    }
    *LATENCY_BOUNDS_MS.last().unwrap_or(&0.0)
}

/// Adds histogram `b` into `a` (growing `a` as needed).
pub fn merge_hist(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Accumulates metrics in memory until drained.
#[derive(Debug, Default)]
pub struct Recorder {
    buckets: Mutex<HashMap<(String, String, i64), Acc>>,
}

impl Recorder {
    /// A new recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(&self, app_id: &str, host: &str, f: impl FnOnce(&mut Acc)) {
        let t = now_secs() / STEP_SECS * STEP_SECS;
        if let Ok(mut m) = self.buckets.lock() {
            f(m.entry((app_id.to_string(), host.to_string(), t)).or_default());
        }
    }

    /// Records a response (status and time to its headers).
    pub fn response(&self, app_id: &str, host: &str, status: u16, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.with(app_id, host, |a| {
            a.requests += 1;
            let class = usize::from((status / 100).clamp(1, 5)) - 1;
            a.status_classes[class] += 1;
            if status >= 500 {
                a.errors_5xx += 1;
            }
            a.hist[bucket_of(ms)] += 1;
        });
    }

    /// Records response body bytes sent.
    pub fn bytes_out(&self, app_id: &str, host: &str, n: u64) {
        self.with(app_id, host, |a| a.bytes_out += n);
    }

    /// Takes every bucket recorded so far.
    pub fn drain(&self) -> Vec<MetricSample> {
        let m = match self.buckets.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<MetricSample> = m
            .into_iter()
            .map(|((app_id, host, t), a)| MetricSample {
                app_id,
                host,
                t,
                step_secs: STEP_SECS,
                requests: a.requests,
                errors_5xx: a.errors_5xx,
                status_classes: a.status_classes,
                bytes_out: a.bytes_out,
                latency_hist: a.hist.to_vec(),
            })
            .collect();
        out.sort_by(|a, b| (a.t, &a.app_id).cmp(&(b.t, &b.app_id)));
        out
    }
}

/// Where drained samples go.
#[async_trait::async_trait]
pub trait MetricsSink: Send + Sync + 'static {
    /// Stores samples (several samples of one bucket add up).
    async fn store(&self, samples: Vec<MetricSample>) -> Result<(), crate::route::LookupError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histograms() {
        let mut h = vec![0u64; HIST_LEN];
        assert_eq!(percentile(&h, 50.0), 0.0);
        // 100 requests between 5 and 7.5 ms.
        h[bucket_of(6.0)] = 100;
        let p50 = percentile(&h, 50.0);
        assert!((5.0..=7.5).contains(&p50), "{p50}");
        // One slow request.
        h[bucket_of(900.0)] += 1;
        let p99 = percentile(&h, 99.0);
        let p100 = percentile(&h, 100.0);
        assert!(p99 <= 7.5, "{p99}");
        assert!((750.0..=1000.0).contains(&p100), "{p100}");
        assert_eq!(bucket_of(1e9), LATENCY_BOUNDS_MS.len());
        let mut sum = vec![];
        merge_hist(&mut sum, &h);
        merge_hist(&mut sum, &h);
        assert_eq!(sum.iter().sum::<u64>(), 202);
    }

    #[test]
    fn recorder_counts_and_drains() {
        let r = Recorder::new();
        r.response("app-1", "a.localhost", 200, Duration::from_millis(3));
        r.response("app-1", "a.localhost", 503, Duration::from_millis(30));
        r.response("app-1", "a.localhost", 101, Duration::from_millis(1));
        r.bytes_out("app-1", "a.localhost", 1234);
        let s = r.drain();
        let requests: u64 = s.iter().map(|x| x.requests).sum();
        let errors: u64 = s.iter().map(|x| x.errors_5xx).sum();
        let bytes: u64 = s.iter().map(|x| x.bytes_out).sum();
        assert_eq!((requests, errors, bytes), (3, 1, 1234));
        assert_eq!(s.iter().map(|x| x.status_classes[0] + x.status_classes[1] + x.status_classes[4]).sum::<u64>(), 3);
        assert!(r.drain().is_empty(), "drained");
    }
}
