//! Latency statistics and the report etcd's `benchmark` prints, plus a JSON
//! form for scripts.
//!
//! Figures follow etcd's `pkg/report`: requests/s is successful requests
//! divided by the wall time of the whole run; slowest/fastest/average/stddev
//! are over successful requests; errors are counted apart, by message.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The percentiles etcd's report prints.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Highest latency the histogram tracks exactly (larger ones are clamped).
const MAX_TRACKED_NS: u64 = 3_600 * 1_000_000_000;

/// Latencies of one class of requests, as recorded by one or more clients.
#[derive(Clone, Debug)]
pub struct Stats {
    hist: Histogram<u64>,
    count: u64,
    sum_s: f64,
    sum_sq_s: f64,
    min_ns: u64,
    max_ns: u64,
    errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            // 3 significant digits: percentiles are within 0.1 %.
            hist: Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("histogram bounds"),
            count: 0,
            sum_s: 0.0,
            sum_sq_s: 0.0,
            min_ns: u64::MAX,
            max_ns: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Records one successful request that took `d`.
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos().min(MAX_TRACKED_NS as u128) as u64).max(1);
        self.hist.saturating_record(ns);
        self.count += 1;
        let s = ns as f64 / 1e9;
        self.sum_s += s;
        self.sum_sq_s += s * s;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Records one failed request (counted apart, by message).
    pub fn record_error(&mut self, msg: &str) {
        let mut m: String = msg.chars().take(160).collect();
        if m.is_empty() {
            m.push_str("(empty error)");
        }
        *self.errors.entry(m).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.count += other.count;
        self.sum_s += other.sum_s;
        self.sum_sq_s += other.sum_sq_s;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency (seconds) at percentile `p` (0..=100), 0 when nothing was recorded.
    pub fn percentile_s(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.hist.value_at_quantile(p / 100.0) as f64 / 1e9
    }

    /// The summary of this run, given its wall time.
    pub fn summary(&self, name: &str, wall: Duration) -> Report {
        let n = self.count as f64;
        let (avg, stddev, fastest, slowest) = if self.count == 0 {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            let avg = self.sum_s / n;
            let var = (self.sum_sq_s / n - avg * avg).max(0.0);
            (avg, var.sqrt(), self.min_ns as f64 / 1e9, self.max_ns as f64 / 1e9)
        };
        let total_s = wall.as_secs_f64();
        Report {
            name: name.to_string(),
            total_s,
            ok: self.count,
            errors: self.error_count(),
            rps: if total_s > 0.0 { n / total_s } else { 0.0 },
            slowest_s: slowest,
            fastest_s: fastest,
            average_s: avg,
            stddev_s: stddev,
            percentiles: PERCENTILES.iter().map(|&p| (p, self.percentile_s(p))).collect(),
            histogram: self.buckets(fastest, slowest),
            error_counts: self.errors.clone(),
            unimplemented: false,
            stopped_early: None,
            extra: BTreeMap::new(),
        }
    }

    /// etcd's response-time histogram: 10 equal-width buckets from fastest
    /// to slowest (a bucket's mark is its upper edge; the first one is the
    /// fastest itself), counts of requests at or below each mark.
    fn buckets(&self, fastest: f64, slowest: f64) -> Vec<(f64, u64)> {
        if self.count == 0 {
            return Vec::new();
        }
        let n = 10usize;
        let bs = (slowest - fastest) / n as f64;
        let mut marks: Vec<f64> = (0..n).map(|i| fastest + bs * i as f64).collect();
        marks.push(slowest);
        let mut counts = vec![0u64; marks.len()];
        for v in self.hist.iter_recorded() {
            let s = self.hist.median_equivalent(v.value_iterated_to()) as f64 / 1e9;
            let i = marks.iter().position(|&m| s <= m).unwrap_or(marks.len() - 1);
            counts[i] += v.count_at_value();
        }
        marks.into_iter().zip(counts).collect()
    }
}

/// One run's figures (one class of requests).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub name: String,
    /// Wall time of the whole run, seconds.
    pub total_s: f64,
    pub ok: u64,
    pub errors: u64,
    /// Successful requests per second of wall time.
    pub rps: f64,
    pub slowest_s: f64,
    pub fastest_s: f64,
    pub average_s: f64,
    pub stddev_s: f64,
    pub percentiles: Vec<(f64, f64)>,
    pub histogram: Vec<(f64, u64)>,
    pub error_counts: BTreeMap<String, u64>,
    /// The server answered `Unimplemented` (the workload needs an API it lacks).
    pub unimplemented: bool,
    /// Why the run stopped before its total, if it did (time bound, error).
    pub stopped_early: Option<String>,
    /// Workload-specific figures (e.g. txn commits vs conflicts).
    pub extra: BTreeMap<String, f64>,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        self.percentiles.iter().find(|(q, _)| (*q - p).abs() < 1e-9).map(|x| x.1)
    }

    /// The report in etcd's text layout. `precise` prints full float precision.
    pub fn to_text(&self, precise: bool) -> String {
        use std::fmt::Write;
        let f = |x: f64, w: usize| if precise { format!("{x}") } else { format!("{x:.w$}") };
        let mut s = String::new();
        if !self.name.is_empty() {
            let _ = writeln!(s, "{}:", self.name);
        }
        let _ = writeln!(s, "\nSummary:");
        let _ = writeln!(s, "  Total:\t{} secs.", f(self.total_s, 4));
        let _ = writeln!(s, "  Slowest:\t{} secs.", f(self.slowest_s, 4));
        let _ = writeln!(s, "  Fastest:\t{} secs.", f(self.fastest_s, 4));
        let _ = writeln!(s, "  Average:\t{} secs.", f(self.average_s, 4));
        let _ = writeln!(s, "  Stddev:\t{} secs.", f(self.stddev_s, 4));
        let _ = writeln!(s, "  Requests/sec:\t{}", f(self.rps, 4));
        if !self.histogram.is_empty() {
            let _ = writeln!(s, "\nResponse time histogram:");
            let max = self.histogram.iter().map(|b| b.1).max().unwrap_or(0).max(1);
            for (mark, c) in &self.histogram {
                let bar = (*c as f64 * 40.0 / max as f64).round() as usize;
                let _ = writeln!(s, "  {} [{}]\t|{}", f(*mark, 4), c, "∎".repeat(bar));
            }
            let _ = writeln!(s, "\nLatency distribution:");
            for (p, v) in &self.percentiles {
                if *v > 0.0 {
                    let _ = writeln!(s, "  {p}% in {} secs.", f(*v, 4));
                }
            }
        }
        if !self.extra.is_empty() {
            let _ = writeln!(s, "\nExtra:");
            for (k, v) in &self.extra {
                let _ = writeln!(s, "  {k}:\t{}", f(*v, 4));
            }
        }
        if !self.error_counts.is_empty() {
            let _ = writeln!(s, "\nError distribution:");
            for (m, c) in &self.error_counts {
                let _ = writeln!(s, "  [{c}]\t{m}");
            }
        }
        if let Some(why) = &self.stopped_early {
            let _ = writeln!(s, "\nStopped early: {why}");
        }
        s
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }
}

/// Median of a list (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn percentiles_of_1_to_100_ms() {
        let mut s = Stats::new();
        for i in 1..=100 {
            s.record(ms(i));
        }
        let r = s.summary("t", Duration::from_secs(2));
        assert_eq!(r.ok, 100);
        assert!((r.rps - 50.0).abs() < 1e-9);
        // hdrhistogram with 3 significant digits: within 0.1 %.
        for (p, want_ms) in [(10.0, 10.0), (50.0, 50.0), (90.0, 90.0), (99.0, 99.0), (99.9, 100.0)] {
            let got = r.percentile(p).unwrap() * 1e3;
            assert!((got - want_ms).abs() <= want_ms * 0.001 + 1e-9, "p{p}: {got} vs {want_ms}");
        }
        assert!((r.average_s - 0.0505).abs() < 1e-9);
        assert!((r.fastest_s - 0.001).abs() < 1e-12);
        assert!((r.slowest_s - 0.1).abs() < 1e-12);
        // population stddev of 1..=100 ms = sqrt((100^2-1)/12) ms
        let want = ((100.0f64 * 100.0 - 1.0) / 12.0).sqrt() / 1e3;
        assert!((r.stddev_s - want).abs() < 1e-9, "{} vs {want}", r.stddev_s);
    }

    #[test]
    fn errors_are_counted_apart() {
        let mut a = Stats::new();
        a.record(ms(1));
        a.record_error("boom");
        let mut b = Stats::new();
        b.record_error("boom");
        b.record_error("other");
        b.record(ms(3));
        a.merge(&b);
        let r = a.summary("x", Duration::from_secs(1));
        assert_eq!(r.ok, 2);
        assert_eq!(r.errors, 3);
        assert_eq!(r.error_counts["boom"], 2);
        assert!((r.rps - 2.0).abs() < 1e-9, "errors do not count in requests/s");
        assert!((r.average_s - 0.002).abs() < 1e-9);
    }

    #[test]
    fn histogram_buckets_hold_every_request() {
        let mut s = Stats::new();
        for i in 0..1000u64 {
            s.record(Duration::from_micros(100 + (i * 37) % 5000));
        }
        let r = s.summary("h", Duration::from_secs(1));
        assert_eq!(r.histogram.len(), 11);
        assert_eq!(r.histogram.iter().map(|b| b.1).sum::<u64>(), 1000);
        assert!(r.histogram.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn text_report_has_etcds_sections() {
        let mut s = Stats::new();
        for i in 1..=10 {
            s.record(ms(i));
        }
        s.record_error("rpc error: code = Unavailable");
        let t = s.summary("", Duration::from_secs(1)).to_text(false);
        for needle in [
            "Summary:",
            "  Total:\t1.0000 secs.",
            "  Slowest:\t0.0100 secs.",
            "  Fastest:\t0.0010 secs.",
            "  Requests/sec:\t10.0000",
            "Response time histogram:",
            "Latency distribution:",
            "  50% in 0.0050 secs.",
            "  99.9% in 0.0100 secs.",
            "Error distribution:",
            "  [1]\trpc error: code = Unavailable",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        let precise = s.summary("", Duration::from_millis(1500)).to_text(true);
        assert!(precise.contains("  Total:\t1.5 secs."), "{precise}");
    }

    #[test]
    fn json_round_trips() {
        let mut s = Stats::new();
        s.record(ms(5));
        let mut r = s.summary("put", Duration::from_secs(1));
        r.extra.insert("commits".into(), 1.0);
        let j = r.to_json();
        assert!(!j.contains('\n'));
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn empty_run_reports_zeroes() {
        let r = Stats::new().summary("none", Duration::from_secs(1));
        assert_eq!(r.ok, 0);
        assert_eq!(r.rps, 0.0);
        assert!(r.histogram.is_empty());
        assert_eq!(r.percentile(50.0), Some(0.0));
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
