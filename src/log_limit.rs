//! A rate limit for log lines that someone else can trigger at will (a
//! worker sending garbage to its notify socket, say): at most one line per
//! interval per key, and the next line that passes says how many were
//! suppressed meanwhile. Pure: the caller passes the clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most one line per `interval` for each key.
#[derive(Debug)]
pub struct LogLimit<K> {
    interval: Duration,
    keys: HashMap<K, Window>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

/// Most keys remembered; past it, the quiet ones are forgotten.
const MAX_KEYS: usize = 4096;

impl<K: Eq + Hash + Clone> LogLimit<K> {
    pub fn new(interval: Duration) -> LogLimit<K> {
        LogLimit { interval, keys: HashMap::new() }
    }

    /// Whether to log a line for `key` at `now`: `Some(n)` to log it, `n`
    /// being how many were suppressed since the last one; `None` to stay quiet.
    pub fn check(&mut self, key: &K, now: Instant) -> Option<u64> {
        if let Some(window) = self.keys.get_mut(key) {
            if now.saturating_duration_since(window.logged_at) < self.interval {
                window.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut window.suppressed);
            window.logged_at = now;
            return Some(suppressed);
        }
        if self.keys.len() >= MAX_KEYS {
            let interval = self.interval;
            self.keys
                .retain(|_, w| w.suppressed > 0 || now.saturating_duration_since(w.logged_at) < interval);
        }
        self.keys.insert(key.clone(), Window { logged_at: now, suppressed: 0 });
        Some(0)
    }
}

/// `" (N more suppressed)"` to end a line with, or nothing for 0.
pub fn suppressed(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more suppressed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_interval_then_the_count_of_the_rest() {
        let mut limit = LogLimit::new(SECOND);
        let t0 = Instant::now();
        assert_eq!(limit.check(&1, t0), Some(0));
        for i in 0..10_000 {
            assert_eq!(limit.check(&1, t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(limit.check(&1, t0 + SECOND), Some(10_000));
        assert_eq!(limit.check(&1, t0 + SECOND), None);
        assert_eq!(limit.check(&1, t0 + 3 * SECOND), Some(1));
    }

    #[test]
    fn keys_are_limited_apart() {
        let mut limit = LogLimit::new(SECOND);
        let t0 = Instant::now();
        assert_eq!(limit.check(&"a", t0), Some(0));
        assert_eq!(limit.check(&"b", t0), Some(0));
        assert_eq!(limit.check(&"a", t0), None);
        assert_eq!(limit.check(&"b", t0 + SECOND), Some(0));
        assert_eq!(limit.check(&"a", t0 + SECOND), Some(1));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut limit = LogLimit::new(SECOND);
        let t0 = Instant::now();
        for key in 0..3 * MAX_KEYS as u64 {
            limit.check(&key, t0 + SECOND * key as u32);
        }
        assert!(limit.keys.len() <= MAX_KEYS);
    }

    #[test]
    fn the_suffix_reads_naturally() {
        assert_eq!(suppressed(0), "");
        assert_eq!(suppressed(3), " (3 more suppressed)");
    }
}
