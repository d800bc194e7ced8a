//! Soak: live traffic between several workloads while policies change, workloads come
//! and go from the inventory, and the agent is killed (-9) and restarted, with a checker
//! that every probe got the verdict that a policy in force while it ran demands.
//!
//! Bounded: `STAGEWALL_SOAK_SECONDS` (60 by default, what CI runs). The random steps come
//! from a fixed seed (`STAGEWALL_SOAK_SEED` to vary it), printed with the counts.
//!
//! Timing: state k may be in force from the moment its files are written until the next
//! state is seen applied (the agent's generation metric, or a restarted agent ready). A
//! probe must match one of the states whose window it overlaps; a probe inside one
//! window must match that state exactly. The one more thing a probe across a change may
//! see is a workload that joins the inventory denied for a moment: its fail mode is
//! closed, so from the attach of its programs until the switch it gets nothing.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use stagewall_tests::{Agent, Testbed, metric_sum, privileged};

/// Every workload serves these TCP ports.
const PORTS: [u16; 2] = [80, 81];
/// The workloads; `d` is enforced by TC on its interface, the others by cgroup.
const NODES: [&str; 4] = ["a", "b", "c", "d"];
const BY_INTERFACE: &str = "d";

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What the policy says: which workloads are in the inventory, and for each isolated
/// one, the peers and ports its ingress allows.
#[derive(Clone, Debug)]
struct State {
    present: BTreeSet<&'static str>,
    /// (workload, allowed peers, allowed ports) for the isolated ones.
    isolated: Vec<(&'static str, BTreeSet<&'static str>, BTreeSet<u16>)>,
}

impl State {
    fn random(rng: &mut Rng) -> State {
        let mut present: BTreeSet<&str> = NODES.into_iter().collect();
        // Now and then a workload leaves the inventory (and comes back later).
        if rng.chance(30) {
            present.remove(NODES[(rng.next() % NODES.len() as u64) as usize]);
        }
        let mut isolated = Vec::new();
        for &w in &NODES {
            if !present.contains(w) || rng.chance(30) {
                continue;
            }
            let peers = NODES
                .into_iter()
                .filter(|p| *p != w && rng.chance(50))
                .collect();
            let mut ports: BTreeSet<u16> = PORTS.into_iter().filter(|_| rng.chance(60)).collect();
            if ports.is_empty() {
                ports.insert(PORTS[0]);
            }
            isolated.push((w, peers, ports));
        }
        State { present, isolated }
    }

    /// Whether `from` reaches `to` on `port` under this state.
    fn allows(&self, from: &str, to: &str, port: u16) -> bool {
        match self.isolated.iter().find(|(w, _, _)| *w == to) {
            None => true,
            Some((_, peers, ports)) => {
                self.present.contains(from) && peers.contains(from) && ports.contains(&port)
            }
        }
    }

    fn yaml(&self, bed: &Testbed, step: usize) -> String {
        let mut p = format!("# step {step}\n");
        for &w in &self.present {
            p += &bed.workload_yaml(w, "soak", &format!("{{app: {w}}}"), w == BY_INTERFACE);
        }
        for (w, peers, ports) in &self.isolated {
            let from: Vec<String> = peers
                .iter()
                .map(|p| format!("{{podSelector: {{matchLabels: {{app: {p}}}}}}}"))
                .collect();
            let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
            let rules = if peers.is_empty() {
                "[]".to_string()
            } else {
                format!(
                    "[{{from: [{}], ports: [{}]}}]",
                    from.join(", "),
                    ports.join(", ")
                )
            };
            p += &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {w}, namespace: soak}}\nspec:\n  podSelector: {{matchLabels: {{app: {w}}}}}\n  ingress: {rules}\n---\n"
            );
        }
        p
    }
}

/// One probe batch: from one workload to every other's ports, with its time span.
struct Batch {
    from: &'static str,
    start: Instant,
    end: Instant,
    /// (to, port, the probe's outcome: ok, timeout, eperm, refused)
    results: Vec<(&'static str, u16, String)>,
}

fn generation(agent: &Agent) -> f64 {
    metric_sum(&agent.metrics(), "stagewall_policy_generation", &[])
}

#[test]
fn soak_policy_changes_workload_churn_and_agent_restarts_under_live_traffic() {
    if !privileged() {
        return;
    }
    let seconds: u64 = std::env::var("STAGEWALL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("STAGEWALL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5747_2026);
    let mut rng = Rng(seed);
    let mut bed = Testbed::new(&NODES).expect("creating the test bed");
    for n in NODES {
        bed.serve(n, &PORTS, &[]).unwrap();
    }
    let addr: Vec<(&str, String)> = NODES
        .iter()
        .map(|n| (*n, bed.node(n).v4.to_string()))
        .collect();
    let first = State::random(&mut rng);
    bed.write_policy("soak.yaml", &first.yaml(&bed, 0)).unwrap();
    // (state, when its files were written, when it was seen in force)
    let mut timeline: Vec<(State, Instant, Instant)> = Vec::new();
    let written = Instant::now();
    let mut agent = bed.start_agent(&[]).expect("starting the agent");
    let started = Instant::now();
    timeline.push((first, written, started));

    let done = AtomicBool::new(false);
    let (batches, steps, restarts) = std::thread::scope(|scope| {
        // Live traffic: probe batches from each workload in turn, all along.
        let prober = scope.spawn(|| {
            let mut batches = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let from = NODES[i % NODES.len()];
                i += 1;
                let targets: Vec<(&str, u16)> = NODES
                    .iter()
                    .filter(|n| **n != from)
                    .flat_map(|n| PORTS.map(|p| (*n, p)))
                    .collect();
                let mut args = vec!["matrix".to_string(), "300".to_string()];
                for (to, port) in &targets {
                    let a = &addr.iter().find(|(n, _)| n == to).unwrap().1;
                    args.push(format!("tcp/{a}/{port}"));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let start = Instant::now();
                let out = bed.probe_output(from, &args);
                let end = Instant::now();
                let results = targets
                    .iter()
                    .zip(out.lines())
                    .map(|((to, port), line)| {
                        let outcome = line.split_whitespace().nth(1).unwrap_or("none");
                        (*to, *port, outcome.to_string())
                    })
                    .collect::<Vec<_>>();
                assert_eq!(results.len(), targets.len(), "probe output: {out}");
                batches.push(Batch {
                    from,
                    start,
                    end,
                    results,
                });
            }
            batches
        });

        let deadline = Instant::now() + Duration::from_secs(seconds);
        let (mut steps, mut restarts) = (0, 0);
        while Instant::now() < deadline {
            steps += 1;
            let state = State::random(&mut rng);
            let yaml = state.yaml(&bed, steps);
            if rng.chance(15) {
                // The agent dies mid-flight; the policy changes while it is down; a new
                // agent takes over.
                restarts += 1;
                agent.kill();
                std::thread::sleep(Duration::from_millis(300));
                let written = Instant::now();
                bed.write_policy("soak.yaml", &yaml).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                agent = bed.start_agent(&[]).expect("restarting the agent");
                timeline.push((state, written, Instant::now()));
                eprintln!(
                    "step {steps}: restart, in force at {:?}",
                    Instant::now() - started
                );
            } else {
                let before = generation(&agent);
                let written = Instant::now();
                bed.write_policy("soak.yaml", &yaml).unwrap();
                while generation(&agent) <= before {
                    assert!(
                        written.elapsed() < Duration::from_secs(5),
                        "step {steps} not applied within 5 s:\n{}",
                        agent.log()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                timeline.push((state, written, Instant::now()));
                eprintln!(
                    "step {steps}: change, in force at {:?}",
                    Instant::now() - started
                );
            }
            std::thread::sleep(Duration::from_millis(800));
        }
        done.store(true, Ordering::Relaxed);
        (prober.join().unwrap(), steps, restarts)
    });

    let (mut probes, mut exact, mut closed_windows, mut wrong) = (0, 0, 0, Vec::new());
    for b in &batches {
        // The states that may have been in force during the batch.
        let candidates: Vec<&State> = timeline
            .iter()
            .enumerate()
            .filter(|(k, (_, written, _))| {
                let until = timeline.get(k + 1).map(|(_, _, seen)| *seen);
                *written <= b.end && until.is_none_or(|u| u >= b.start)
            })
            .map(|(_, (s, _, _))| s)
            .collect();
        assert!(!candidates.is_empty());
        if candidates.len() == 1 {
            exact += b.results.len();
        }
        // A workload that joins the inventory during the batch has fail mode closed: from
        // the attach of its programs until its policy is switched in, it is denied.
        let joining = |w: &str| {
            candidates
                .windows(2)
                .any(|p| !p[0].present.contains(w) && p[1].present.contains(w))
        };
        for (to, port, outcome) in &b.results {
            probes += 1;
            let reached = outcome == "ok";
            let closed_window = !reached && (joining(to) || joining(b.from));
            if closed_window && candidates.iter().all(|s| s.allows(b.from, to, *port)) {
                closed_windows += 1;
            }
            if !closed_window
                && !candidates
                    .iter()
                    .any(|s| s.allows(b.from, to, *port) == reached)
            {
                wrong.push(format!(
                    "{} -> {to}:{port}: {outcome} ({:?} to {:?} after the start) under every policy in force then: {:?}",
                    b.from,
                    b.start - started,
                    b.end - started,
                    candidates
                ));
            }
        }
    }
    eprintln!(
        "soak ({seconds} s, seed {seed}): {steps} policy steps, {restarts} agent restarts (kill -9), {probes} probes ({exact} inside a single policy's window, {closed_windows} denied in a joining workload's closed window), {} wrong verdicts",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "wrong verdicts:\n{}",
        wrong[..wrong.len().min(20)].join("\n")
    );
    assert!(steps >= 10 && restarts >= 1, "too little happened");
    // A batch takes up to the probes' 300 ms timeout.
    assert!(probes as u64 >= 10 * seconds, "too few probes: {probes}");
    agent.stop().unwrap();
}
