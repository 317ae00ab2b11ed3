//! Detection judged as an on-call engineer judges it: incidents caught, how soon, and how often
//! the detector pages for nothing (docs/evaluation.md).
//!
//! Per service, in event order:
//! - an *incident* is a maximal run of labelled events; it is *caught* if any of its events is
//!   flagged, and *early* if the first flag comes at most [`OperatorRules::early`] events after
//!   its start; that distance is its *delay*;
//! - flags outside incidents are false alarms: flags at most [`OperatorRules::alarm_gap`] events
//!   apart form one alarm, which pages once per started [`OperatorRules::page_every`] events of
//!   its length (an alarm left on keeps paging);
//! - false pages per service-day divide pages by the service's days (events × step / 86,400 s);
//! - *normal events flagged* is the flagged share of events outside incidents.

use serde::{Deserialize, Serialize};

const DAY: f64 = 86_400.0;

/// The rules that turn flags into incidents caught and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRules {
    /// An incident is caught early if its first flag is at most this many events after its
    /// start.
    pub early: usize,
    /// False flags at most this many events apart belong to one alarm.
    pub alarm_gap: usize,
    /// An alarm pages once per started this many events of its length.
    pub page_every: usize,
}

impl Default for OperatorRules {
    fn default() -> Self {
        OperatorRules {
            early: 3,
            alarm_gap: 6,
            page_every: 12,
        }
    }
}

/// Operator counts of one service, or summed over services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorCounts {
    /// Events judged.
    pub events: u64,
    /// Days the events span (events × step / 86,400 s), summed over services.
    pub service_days: f64,
    pub incidents: u64,
    pub caught: u64,
    pub early: u64,
    /// Delay of each caught incident, in events.
    pub delays: Vec<u64>,
    /// False alarms (flags outside incidents, grouped).
    pub false_alarms: u64,
    /// Pages those false alarms sent.
    pub false_pages: u64,
    /// Events outside incidents, and how many of them were flagged.
    pub normal_events: u64,
    pub normal_flagged: u64,
}

impl OperatorCounts {
    /// Judges one service's flags against its labels, both in event order, one event every
    /// `step_seconds`.
    pub fn of_service(
        labels: &[bool],
        flags: &[bool],
        step_seconds: f64,
        rules: &OperatorRules,
    ) -> Self {
        assert_eq!(labels.len(), flags.len(), "one flag per label");
        let n = labels.len();
        let mut c = OperatorCounts {
            events: n as u64,
            service_days: if step_seconds.is_finite() && step_seconds > 0.0 {
                n as f64 * step_seconds / DAY
            } else {
                0.0
            },
            ..OperatorCounts::default()
        };
        let mut i = 0;
        // The current false alarm: index of its first and last flag.
        let mut alarm: Option<(usize, usize)> = None;
        let page_every = rules.page_every.max(1);
        let close = |alarm: &mut Option<(usize, usize)>, c: &mut OperatorCounts| {
            if let Some((first, last)) = alarm.take() {
                c.false_alarms += 1;
                c.false_pages += (last - first + 1).div_ceil(page_every) as u64;
            }
        };
        while i < n {
            if labels[i] {
                let start = i;
                while i < n && labels[i] {
                    i += 1;
                }
                c.incidents += 1;
                if let Some(k) = (start..i).find(|&k| flags[k]) {
                    let delay = (k - start) as u64;
                    c.caught += 1;
                    c.delays.push(delay);
                    if delay <= rules.early as u64 {
                        c.early += 1;
                    }
                }
                continue;
            }
            c.normal_events += 1;
            if flags[i] {
                c.normal_flagged += 1;
                match &mut alarm {
                    Some((_, last)) if i - *last <= rules.alarm_gap => *last = i,
                    _ => {
                        close(&mut alarm, &mut c);
                        alarm = Some((i, i));
                    }
                }
            }
            i += 1;
        }
        close(&mut alarm, &mut c);
        c
    }

    /// Adds another service's counts.
    pub fn merge(&mut self, other: &OperatorCounts) {
        self.events += other.events;
        self.service_days += other.service_days;
        self.incidents += other.incidents;
        self.caught += other.caught;
        self.early += other.early;
        self.delays.extend_from_slice(&other.delays);
        self.false_alarms += other.false_alarms;
        self.false_pages += other.false_pages;
        self.normal_events += other.normal_events;
        self.normal_flagged += other.normal_flagged;
    }

    /// Share of incidents caught; `None` without incidents.
    pub fn caught_rate(&self) -> Option<f64> {
        ratio(self.caught, self.incidents)
    }

    /// Share of incidents caught early; `None` without incidents.
    pub fn early_rate(&self) -> Option<f64> {
        ratio(self.early, self.incidents)
    }

    /// Median delay of the caught incidents, in events.
    pub fn median_delay(&self) -> Option<f64> {
        if self.delays.is_empty() {
            return None;
        }
        let mut d = self.delays.clone();
        d.sort_unstable();
        let m = d.len() / 2;
        Some(if d.len() % 2 == 1 {
            d[m] as f64
        } else {
            (d[m - 1] + d[m]) as f64 / 2.0
        })
    }

    /// False pages per service-day; `None` when no time has passed.
    pub fn false_pages_per_day(&self) -> Option<f64> {
        (self.service_days > 0.0).then(|| self.false_pages as f64 / self.service_days)
    }

    /// Share of events outside incidents that were flagged.
    pub fn normal_flagged_rate(&self) -> Option<f64> {
        ratio(self.normal_flagged, self.normal_events)
    }

    /// The figures, for reports.
    pub fn summary(&self) -> OperatorSummary {
        OperatorSummary {
            incidents: self.incidents,
            caught: self.caught_rate(),
            early: self.early_rate(),
            median_delay: self.median_delay(),
            false_alarms: self.false_alarms,
            false_pages: self.false_pages,
            service_days: self.service_days,
            false_pages_per_day: self.false_pages_per_day(),
            normal_flagged: self.normal_flagged_rate(),
        }
    }
}

/// The operator figures of one service or of a whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorSummary {
    pub incidents: u64,
    /// Share of incidents caught.
    pub caught: Option<f64>,
    /// Share of incidents caught within `early` events of their start.
    pub early: Option<f64>,
    /// Median delay of caught incidents, in events.
    pub median_delay: Option<f64>,
    pub false_alarms: u64,
    pub false_pages: u64,
    pub service_days: f64,
    /// False pages per service-day.
    pub false_pages_per_day: Option<f64>,
    /// Share of events outside incidents that were flagged.
    pub normal_flagged: Option<f64>,
}

/// The typical step of a service's events: the median of the positive gaps between
/// consecutive timestamps (`None` with fewer than two distinct timestamps).
pub fn typical_step(ts: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| g.is_finite() && *g > 0.0)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    let m = gaps.len() / 2;
    let (_, v, _) = gaps.select_nth_unstable_by(m, f64::total_cmp);
    Some(*v)
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == '1').collect()
    }

    fn judge(labels: &str, flags: &str) -> OperatorCounts {
        OperatorCounts::of_service(
            &bits(labels),
            &bits(flags),
            300.0,
            &OperatorRules::default(),
        )
    }

    #[test]
    fn incidents_caught_early_and_late() {
        // Three incidents: caught at delay 1, caught at delay 5 (late), missed.
        let c = judge(
            "0011110000111111100000011100",
            "0001000000000001000000000000",
        );
        assert_eq!(c.incidents, 3);
        assert_eq!(c.caught, 2);
        assert_eq!(c.early, 1);
        assert_eq!(c.delays, vec![1, 5]);
        assert_eq!(c.median_delay(), Some(3.0));
        assert_eq!(c.false_pages, 0);
        assert_eq!(c.normal_flagged, 0);
    }

    #[test]
    fn delay_of_exactly_early_counts_as_early() {
        let c = judge("011111", "000010");
        assert_eq!(c.delays, vec![3]);
        assert_eq!(c.early, 1);
    }

    #[test]
    fn false_flags_close_together_are_one_alarm_that_keeps_paging() {
        // Flags at 0, 6 (gap 6: same alarm), 13 (gap 7: new alarm).
        let c = judge(&"0".repeat(20), "10000010000001000000");
        assert_eq!(c.false_alarms, 2);
        assert_eq!(c.false_pages, 2);
        assert_eq!(c.normal_flagged, 3);
        assert_eq!(c.normal_events, 20);
        // One alarm left on for 25 events pages ceil(25 / 12) = 3 times.
        let c = judge(
            &"0".repeat(30),
            &format!("{}{}", "1".repeat(25), "0".repeat(5)),
        );
        assert_eq!(c.false_alarms, 1);
        assert_eq!(c.false_pages, 3);
        // 12 events: one page; 13: two.
        assert_eq!(judge(&"0".repeat(12), &"1".repeat(12)).false_pages, 1);
        assert_eq!(judge(&"0".repeat(13), &"1".repeat(13)).false_pages, 2);
    }

    #[test]
    fn pages_per_service_day_and_merge() {
        // 288 events at 300 s = one day; one page.
        let mut flags = vec![false; 288];
        flags[10] = true;
        let a = OperatorCounts::of_service(&[false; 288], &flags, 300.0, &OperatorRules::default());
        assert!((a.service_days - 1.0).abs() < 1e-12);
        assert_eq!(a.false_pages_per_day(), Some(1.0));
        let mut total = a.clone();
        total.merge(&OperatorCounts::of_service(
            &[false; 288],
            &[false; 288],
            300.0,
            &OperatorRules::default(),
        ));
        assert_eq!(total.false_pages_per_day(), Some(0.5));
        assert_eq!(total.caught_rate(), None);
        assert!((total.normal_flagged_rate().unwrap() - 1.0 / 576.0).abs() < 1e-12);
    }

    #[test]
    fn typical_step_is_the_median_gap() {
        assert_eq!(
            typical_step(&[0.0, 300.0, 600.0, 1500.0, 1800.0]),
            Some(300.0)
        );
        assert_eq!(typical_step(&[5.0]), None);
        assert_eq!(typical_step(&[5.0, 5.0]), None);
    }
}
