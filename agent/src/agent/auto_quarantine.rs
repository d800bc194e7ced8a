//! Automatic quarantine (assume breach): a workload whose egress the policy denied at
//! least N times within T seconds is quarantined, as `stagewall quarantine` would.
//!
//! Only egress denials count: they are what the workload itself tried (a scan, an
//! exfiltration attempt). Ingress denials happen *to* a workload, and quarantining the
//! target of a scan would be the attacker's win. The counts are the kernel's per-workload
//! statistics, exact whatever the event rate limit suppressed.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use crate::policy::model::ObjectName;

/// `--auto-quarantine N/T`: N egress denials within T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub denials: u64,
    pub window: Duration,
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Threshold, String> {
        let expected = "expected DENIALS/WINDOW such as 100/10s";
        let (n, t) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: {expected}"))?;
        let denials: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a number of denials; {expected}"))?;
        let window = humantime::parse_duration(t.trim())
            .map_err(|e| format!("{t:?} is not a duration ({e}); {expected}"))?;
        if denials == 0 || window.is_zero() {
            return Err(format!(
                "{s:?}: denials and window must be above zero; {expected}"
            ));
        }
        Ok(Threshold { denials, window })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} egress denials within {}",
            self.denials,
            humantime::format_duration(self.window)
        )
    }
}

/// Each workload's recent samples of its egress-denial total.
#[derive(Debug)]
pub struct AutoQuarantine {
    pub threshold: Threshold,
    samples: BTreeMap<ObjectName, VecDeque<(Instant, u64)>>,
}

impl AutoQuarantine {
    pub fn new(threshold: Threshold) -> AutoQuarantine {
        AutoQuarantine {
            threshold,
            samples: BTreeMap::new(),
        }
    }

    /// Takes the workloads' egress-denial totals at `now` and returns those that reached
    /// the threshold within the window, with how many denials they had in it. Workloads
    /// already quarantined are not watched (their denials during quarantine must not
    /// count once released), nor are those gone.
    pub fn observe(
        &mut self,
        now: Instant,
        totals: impl IntoIterator<Item = (ObjectName, u64)>,
        quarantined: &std::collections::BTreeSet<ObjectName>,
    ) -> Vec<(ObjectName, u64)> {
        let mut seen = BTreeMap::new();
        let mut crossed = Vec::new();
        for (workload, total) in totals {
            if quarantined.contains(&workload) {
                continue;
            }
            let mut samples = self.samples.remove(&workload).unwrap_or_default();
            // A total that went down belongs to another workload's counters (its
            // endpoint id was reused): start again.
            if samples.back().is_some_and(|&(_, last)| last > total) {
                samples.clear();
            }
            // The oldest sample inside the window is the baseline: denials are counted
            // over at most the window (a little less, by the sampling interval), never
            // more, so a slow trickle is never taken for a burst.
            while samples
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) > self.threshold.window)
            {
                samples.pop_front();
            }
            samples.push_back((now, total));
            let base = samples.front().map_or(total, |&(_, t)| t);
            if total - base >= self.threshold.denials {
                crossed.push((workload.clone(), total - base));
                samples.clear();
            }
            seen.insert(workload, samples);
        }
        self.samples = seen;
        crossed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn w(name: &str) -> ObjectName {
        ObjectName {
            namespace: "app".into(),
            name: name.into(),
        }
    }

    #[test]
    fn thresholds_parse_with_clear_errors() {
        assert_eq!(
            "100/10s".parse::<Threshold>(),
            Ok(Threshold {
                denials: 100,
                window: Duration::from_secs(10)
            })
        );
        assert!(
            "100"
                .parse::<Threshold>()
                .unwrap_err()
                .contains("DENIALS/WINDOW")
        );
        assert!(
            "x/10s"
                .parse::<Threshold>()
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            "5/soon"
                .parse::<Threshold>()
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            "0/10s"
                .parse::<Threshold>()
                .unwrap_err()
                .contains("above zero")
        );
    }

    #[test]
    fn denials_within_the_window_trigger_and_slower_ones_do_not() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let none = BTreeSet::new();
        let mut q = AutoQuarantine::new("10/5s".parse().unwrap());
        // One denial a second: never 10 within 5 s.
        let mut slow = Vec::new();
        for i in 0..20 {
            slow.extend(q.observe(s(i), [(w("slow"), i), (w("fast"), 0)], &none));
        }
        assert!(slow.is_empty(), "{slow:?}");
        // 10 more within 3 s.
        assert!(q.observe(s(21), [(w("fast"), 4)], &none).is_empty());
        assert_eq!(
            q.observe(s(23), [(w("fast"), 10)], &none),
            [(w("fast"), 10)]
        );
        // Counting starts again after a trigger.
        assert!(q.observe(s(24), [(w("fast"), 12)], &none).is_empty());
        // A quarantined workload is not watched; released, its denials during the
        // quarantine do not count.
        let quarantined = BTreeSet::from([w("fast")]);
        assert!(
            q.observe(s(25), [(w("fast"), 500)], &quarantined)
                .is_empty()
        );
        assert!(q.observe(s(26), [(w("fast"), 900)], &none).is_empty());
        assert_eq!(
            q.observe(s(27), [(w("fast"), 910)], &none),
            [(w("fast"), 10)]
        );
    }

    #[test]
    fn a_total_that_goes_down_starts_the_count_again() {
        let t0 = Instant::now();
        let none = BTreeSet::new();
        let mut q = AutoQuarantine::new("10/5s".parse().unwrap());
        assert!(q.observe(t0, [(w("a"), 100)], &none).is_empty());
        assert!(
            q.observe(t0 + Duration::from_secs(1), [(w("a"), 3)], &none)
                .is_empty()
        );
        assert!(
            q.observe(t0 + Duration::from_secs(2), [(w("a"), 12)], &none)
                .is_empty()
        );
        assert_eq!(
            q.observe(t0 + Duration::from_secs(3), [(w("a"), 13)], &none),
            [(w("a"), 10)]
        );
    }
}
