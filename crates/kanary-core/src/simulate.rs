//! Scenario generators: deterministic, labelled streams of metric events.
//!
//! - `seed`: the thesis producer, exactly: latency ~ N(100, 8), cpu ~ N(35, 4),
//!   memory ~ N(500, 15); with probability 0.01 an event is anomalous and one of the three
//!   features, chosen uniformly, gets + N(120, 20), + N(40, 10) or + N(200, 40) respectively;
//!   values clipped at 0. `anomaly` names the perturbed feature.
//! - `microservices`: four services whose request rate follows a daily cycle, with cpu and
//!   latency that follow load, memory with a GC sawtooth, and labelled incidents of five
//!   shapes (see [`Incident`]). Every event inside an incident is labelled and names it.

use std::fmt;
use std::str::FromStr;

use crate::event::{DEFAULT_SERVICE, Event};
use crate::rng::Rng;

/// 2024-11-25T00:00:00Z: the default start of simulated time.
pub const DEFAULT_START_TS: f64 = 1_732_492_800.0;

/// Which stream to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    Seed,
    Microservices,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Seed => "seed",
            Scenario::Microservices => "microservices",
        }
    }

    /// Simulated seconds between consecutive events (seed) or ticks (microservices).
    pub fn default_interval(self) -> f64 {
        match self {
            Scenario::Seed => 0.1,
            Scenario::Microservices => 90.0,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown scenario `{0}`: expected seed or microservices")]
pub struct UnknownScenario(pub String);

impl FromStr for Scenario {
    type Err = UnknownScenario;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Scenario::Seed),
            "microservices" => Ok(Scenario::Microservices),
            _ => Err(UnknownScenario(s.to_string())),
        }
    }
}

/// A deterministic event generator.
#[derive(Debug, Clone)]
pub struct Simulator {
    rng: Rng,
    ts: f64,
    interval: f64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Seed,
    Micro(Box<Micro>),
}

impl Simulator {
    /// A generator for `scenario` seeded with `seed`, starting at `start_ts`.
    pub fn new(scenario: Scenario, seed: u64, start_ts: f64) -> Self {
        let mut rng = Rng::new(seed);
        let kind = match scenario {
            Scenario::Seed => Kind::Seed,
            Scenario::Microservices => Kind::Micro(Box::new(Micro::new(&mut rng))),
        };
        Simulator {
            rng,
            ts: start_ts,
            interval: scenario.default_interval(),
            kind,
        }
    }

    /// Changes the simulated time between events (seed) or ticks (microservices).
    pub fn with_interval(mut self, seconds: f64) -> Self {
        self.interval = seconds;
        self
    }

    /// The next event.
    pub fn next_event(&mut self) -> Event {
        match &mut self.kind {
            Kind::Seed => {
                let ev = seed_event(&mut self.rng, self.ts);
                self.ts += self.interval;
                ev
            }
            Kind::Micro(m) => {
                let ev = m.event(&mut self.rng, self.ts, self.interval);
                if m.next_service == 0 {
                    self.ts += self.interval;
                }
                ev
            }
        }
    }
}

impl Iterator for Simulator {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// One event of the thesis producer.
fn seed_event(rng: &mut Rng, ts: f64) -> Event {
    let mut latency = rng.normal(100.0, 8.0);
    let mut cpu = rng.normal(35.0, 4.0);
    let mut memory = rng.normal(500.0, 15.0);
    let mut anomaly = None;
    if rng.chance(0.01) {
        match rng.below(3) {
            0 => {
                latency += rng.normal(120.0, 20.0);
                anomaly = Some("latency");
            }
            1 => {
                cpu += rng.normal(40.0, 10.0);
                anomaly = Some("cpu");
            }
            _ => {
                memory += rng.normal(200.0, 40.0);
                anomaly = Some("memory");
            }
        }
    }
    let mut ev = Event::new(round3(ts), DEFAULT_SERVICE)
        .with_field("latency", round3(latency.max(0.0)))
        .with_field("cpu", round3(cpu.max(0.0)))
        .with_field("memory", round3(memory.max(0.0)));
    ev.label = Some(anomaly.is_some());
    if let Some(a) = anomaly {
        ev.meta.push(("anomaly".into(), a.into()));
    }
    ev
}

/// Incident shapes of the microservices scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incident {
    /// Latency several times its usual level for a few minutes.
    LatencySpike,
    /// CPU pinned near 100% with latency following.
    CpuSaturation,
    /// Memory climbing steadily over tens of minutes, not reclaimed by GC, until a restart.
    MemoryLeak,
    /// Error rate jumps to several percent.
    ErrorBurst,
    /// Every metric in its normal range, but CPU at its peak-load level while traffic is at its
    /// night-time low: only the combination is wrong.
    CpuRpsMismatch,
}

impl Incident {
    pub const ALL: [Incident; 5] = [
        Incident::LatencySpike,
        Incident::CpuSaturation,
        Incident::MemoryLeak,
        Incident::ErrorBurst,
        Incident::CpuRpsMismatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Incident::LatencySpike => "latency_spike",
            Incident::CpuSaturation => "cpu_saturation",
            Incident::MemoryLeak => "memory_leak",
            Incident::ErrorBurst => "error_burst",
            Incident::CpuRpsMismatch => "cpu_rps_mismatch",
        }
    }

    /// Duration range in seconds.
    fn duration(self) -> (f64, f64) {
        match self {
            Incident::LatencySpike => (180.0, 540.0),
            Incident::CpuSaturation => (300.0, 900.0),
            Incident::MemoryLeak => (1800.0, 5400.0),
            Incident::ErrorBurst => (180.0, 720.0),
            Incident::CpuRpsMismatch => (900.0, 2700.0),
        }
    }
}

#[derive(Debug, Clone)]
struct ServiceProfile {
    name: &'static str,
    base_rps: f64,
    cpu_idle: f64,
    cpu_per_rps: f64,
    latency_ms: f64,
    memory_mb: f64,
    /// Height of the GC sawtooth in MB.
    gc_amplitude: f64,
    /// Seconds between collections at average load.
    gc_period: f64,
}

const PROFILES: [ServiceProfile; 4] = [
    ServiceProfile {
        name: "gateway",
        base_rps: 400.0,
        cpu_idle: 10.0,
        cpu_per_rps: 0.12,
        latency_ms: 40.0,
        memory_mb: 800.0,
        gc_amplitude: 120.0,
        gc_period: 900.0,
    },
    ServiceProfile {
        name: "checkout",
        base_rps: 120.0,
        cpu_idle: 8.0,
        cpu_per_rps: 0.35,
        latency_ms: 120.0,
        memory_mb: 1200.0,
        gc_amplitude: 200.0,
        gc_period: 1500.0,
    },
    ServiceProfile {
        name: "payments",
        base_rps: 80.0,
        cpu_idle: 6.0,
        cpu_per_rps: 0.5,
        latency_ms: 200.0,
        memory_mb: 600.0,
        gc_amplitude: 90.0,
        gc_period: 1200.0,
    },
    ServiceProfile {
        name: "inventory",
        base_rps: 200.0,
        cpu_idle: 5.0,
        cpu_per_rps: 0.2,
        latency_ms: 60.0,
        memory_mb: 1500.0,
        gc_amplitude: 250.0,
        gc_period: 1800.0,
    },
];

/// Mean simulated seconds between incidents, per service.
const MEAN_INCIDENT_GAP: f64 = 6.0 * 3600.0;

#[derive(Debug, Clone)]
struct ActiveIncident {
    kind: Incident,
    start: f64,
    end: f64,
    /// Shape parameter drawn at the start (multiplier or target level).
    magnitude: f64,
}

#[derive(Debug, Clone)]
struct ServiceState {
    /// Fraction of the GC cycle elapsed, 0..1.
    gc_phase: f64,
    /// Memory held by a leak, MB.
    leaked: f64,
    next_incident: f64,
    incident: Option<ActiveIncident>,
}

#[derive(Debug, Clone)]
struct Micro {
    services: Vec<ServiceState>,
    next_service: usize,
    started: Option<f64>,
}

impl Micro {
    fn new(rng: &mut Rng) -> Self {
        let services = PROFILES
            .iter()
            .map(|_| ServiceState {
                gc_phase: rng.uniform(),
                leaked: 0.0,
                next_incident: f64::NAN,
                incident: None,
            })
            .collect();
        Micro {
            services,
            next_service: 0,
            started: None,
        }
    }

    /// Load factor in [0.15, 0.95] over the day: trough around 03:00, peak around 15:00 UTC.
    fn load(ts: f64) -> f64 {
        let hour = (ts.rem_euclid(86_400.0)) / 3600.0;
        0.55 + 0.4 * (2.0 * std::f64::consts::PI * (hour - 9.0) / 24.0).sin()
    }

    fn event(&mut self, rng: &mut Rng, tick_ts: f64, interval: f64) -> Event {
        let i = self.next_service;
        self.next_service = (i + 1) % PROFILES.len();
        let p = &PROFILES[i];
        let start = *self.started.get_or_insert(tick_ts);
        let s = &mut self.services[i];
        let ts = tick_ts + 0.01 * i as f64;
        if s.next_incident.is_nan() {
            // The first incidents come after a quiet first day and a bit (1000 events per
            // service at the default 90 s interval), so that models fitted on a stream's
            // beginning see a whole daily cycle of normal behaviour.
            s.next_incident = start + 26.0 * 3600.0 + rng.exponential(MEAN_INCIDENT_GAP);
        }
        let load = Self::load(ts);

        // Start and end incidents.
        if let Some(inc) = &s.incident
            && ts >= inc.end
        {
            if inc.kind == Incident::MemoryLeak {
                s.leaked = 0.0; // the service is restarted
                s.gc_phase = 0.0;
            }
            s.incident = None;
        }
        if s.incident.is_none() && ts >= s.next_incident {
            let mut kind = Incident::ALL[rng.below(Incident::ALL.len())];
            if kind == Incident::CpuRpsMismatch && load > 0.45 {
                // The mismatch is only visible when traffic is low: pick another shape.
                kind = Incident::ALL[rng.below(Incident::ALL.len() - 1)];
            }
            let (lo, hi) = kind.duration();
            let dur = rng.uniform_range(lo, hi).max(interval);
            let magnitude = match kind {
                Incident::LatencySpike => rng.uniform_range(3.0, 6.0),
                Incident::CpuSaturation => rng.uniform_range(1.5, 2.5),
                Incident::MemoryLeak => rng.uniform_range(1.0, 1.8) * p.gc_amplitude / dur,
                Incident::ErrorBurst => rng.uniform_range(5.0, 25.0),
                Incident::CpuRpsMismatch => rng.uniform_range(0.8, 0.95),
            };
            s.incident = Some(ActiveIncident {
                kind,
                start: ts,
                end: ts + dur,
                magnitude,
            });
            s.next_incident = ts + dur + rng.exponential(MEAN_INCIDENT_GAP);
        }

        // Normal behaviour.
        let rps = (p.base_rps * load * (1.0 + rng.normal(0.0, 0.04))).max(0.0);
        let mut cpu = p.cpu_idle + p.cpu_per_rps * rps + rng.normal(0.0, 1.5);
        let rel = rps / p.base_rps;
        let mut latency = p.latency_ms * (1.0 + 0.6 * rel * rel) * rng.normal(0.0, 0.05).exp();
        s.gc_phase += interval / p.gc_period * (rel / 0.55);
        if s.gc_phase >= 1.0 {
            s.gc_phase = rng.uniform_range(0.0, 0.1);
        }
        let mut memory = p.memory_mb + p.gc_amplitude * s.gc_phase + rng.normal(0.0, 4.0);
        let mut error_rate = 0.1 + 0.2 * load + rng.normal(0.0, 0.05).abs();

        // Incident effects.
        let mut label = None;
        if let Some(inc) = &s.incident {
            label = Some(inc.kind.name());
            match inc.kind {
                Incident::LatencySpike => latency *= inc.magnitude,
                Incident::CpuSaturation => {
                    cpu = rng.uniform_range(93.0, 100.0);
                    latency *= inc.magnitude;
                }
                Incident::MemoryLeak => {
                    s.leaked = inc.magnitude * (ts - inc.start);
                }
                Incident::ErrorBurst => error_rate = inc.magnitude + rng.normal(0.0, 1.0),
                Incident::CpuRpsMismatch => {
                    cpu = p.cpu_idle
                        + p.cpu_per_rps * p.base_rps * inc.magnitude
                        + rng.normal(0.0, 1.5);
                }
            }
        }
        memory += s.leaked;

        let mut ev = Event::new(round3(ts), p.name)
            .with_field("latency", round3(latency.max(0.0)))
            .with_field("cpu", round3(cpu.clamp(0.0, 100.0)))
            .with_field("memory", round3(memory.max(0.0)))
            .with_field("rps", round3(rps))
            .with_field("error_rate", round3(error_rate.clamp(0.0, 100.0)));
        ev.label = Some(label.is_some());
        if let Some(name) = label {
            ev.meta.push(("anomaly".into(), name.into()));
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn seed_scenario_has_the_thesis_distributions() {
        let evs: Vec<Event> = Simulator::new(Scenario::Seed, 7, DEFAULT_START_TS)
            .take(100_000)
            .collect();
        let normal: Vec<&Event> = evs.iter().filter(|e| e.label == Some(false)).collect();
        let mean =
            |f: &str| normal.iter().map(|e| e.field(f).unwrap()).sum::<f64>() / normal.len() as f64;
        let sd = |f: &str| {
            let m = mean(f);
            (normal
                .iter()
                .map(|e| (e.field(f).unwrap() - m).powi(2))
                .sum::<f64>()
                / normal.len() as f64)
                .sqrt()
        };
        assert!((mean("latency") - 100.0).abs() < 0.2 && (sd("latency") - 8.0).abs() < 0.1);
        assert!((mean("cpu") - 35.0).abs() < 0.1 && (sd("cpu") - 4.0).abs() < 0.1);
        assert!((mean("memory") - 500.0).abs() < 0.3 && (sd("memory") - 15.0).abs() < 0.2);
        let anomalies: Vec<&Event> = evs.iter().filter(|e| e.label == Some(true)).collect();
        let rate = anomalies.len() as f64 / evs.len() as f64;
        assert!((rate - 0.01).abs() < 0.001, "rate {rate}");
        let mut by_kind: HashMap<&str, usize> = HashMap::new();
        for a in &anomalies {
            *by_kind.entry(a.meta("anomaly").unwrap()).or_default() += 1;
        }
        assert_eq!(by_kind.len(), 3);
        for (_, &c) in by_kind.iter() {
            assert!((c as f64 / anomalies.len() as f64 - 1.0 / 3.0).abs() < 0.05);
        }
        // A perturbed latency is shifted by ~N(120, 20).
        let lat: Vec<f64> = anomalies
            .iter()
            .filter(|e| e.meta("anomaly") == Some("latency"))
            .map(|e| e.field("latency").unwrap())
            .collect();
        let m = lat.iter().sum::<f64>() / lat.len() as f64;
        assert!((m - 220.0).abs() < 5.0, "{m}");
        assert!(normal.iter().all(|e| e.meta("anomaly").is_none()));
    }

    #[test]
    fn deterministic_under_seed() {
        let a: Vec<Event> = Simulator::new(Scenario::Microservices, 3, DEFAULT_START_TS)
            .take(2000)
            .collect();
        let b: Vec<Event> = Simulator::new(Scenario::Microservices, 3, DEFAULT_START_TS)
            .take(2000)
            .collect();
        let c: Vec<Event> = Simulator::new(Scenario::Microservices, 4, DEFAULT_START_TS)
            .take(2000)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn microservices_has_every_incident_shape_labelled() {
        let evs: Vec<Event> = Simulator::new(Scenario::Microservices, 1, DEFAULT_START_TS)
            .take(60_000)
            .collect();
        let services: std::collections::HashSet<&str> =
            evs.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(services.len(), 4);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for e in &evs {
            assert_eq!(e.label == Some(true), e.meta("anomaly").is_some());
            if let Some(a) = e.meta("anomaly") {
                *seen.entry(a).or_default() += 1;
            }
        }
        for inc in Incident::ALL {
            assert!(seen.get(inc.name()).copied().unwrap_or(0) > 0, "{seen:?}");
        }
        let rate = seen.values().sum::<usize>() as f64 / evs.len() as f64;
        assert!(rate > 0.01 && rate < 0.15, "anomaly rate {rate}");
    }

    #[test]
    fn mismatch_keeps_each_metric_in_its_normal_range() {
        let evs: Vec<Event> = Simulator::new(Scenario::Microservices, 2, DEFAULT_START_TS)
            .take(80_000)
            .collect();
        for svc in ["gateway", "checkout", "payments", "inventory"] {
            let normal_cpu: Vec<f64> = evs
                .iter()
                .filter(|e| e.service == svc && e.label == Some(false))
                .map(|e| e.field("cpu").unwrap())
                .collect();
            let max = normal_cpu.iter().copied().fold(f64::MIN, f64::max);
            for e in evs
                .iter()
                .filter(|e| e.service == svc && e.meta("anomaly") == Some("cpu_rps_mismatch"))
            {
                assert!(e.field("cpu").unwrap() <= max + 3.0);
            }
        }
    }

    #[test]
    fn cpu_follows_load() {
        let evs: Vec<Event> = Simulator::new(Scenario::Microservices, 5, DEFAULT_START_TS)
            .take(20_000)
            .filter(|e| e.service == "checkout" && e.label == Some(false))
            .collect();
        let xs: Vec<f64> = evs.iter().map(|e| e.field("rps").unwrap()).collect();
        let ys: Vec<f64> = evs.iter().map(|e| e.field("cpu").unwrap()).collect();
        let n = xs.len() as f64;
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
        assert!(cov / (vx * vy).sqrt() > 0.9);
    }
}
