//! Traffic from the test bed's nodes: the probe binary (`stagewall-probe`, in
//! src/bin/stagewall-probe.rs) as echo server and client, hand-made frames counted where
//! they arrive, and ping.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::{
    Testbed,
    exec::{in_netns_and_cgroup, sibling_bin},
    raw::{Mac, parse_mac},
};

pub fn probe_bin() -> PathBuf {
    std::env::var_os("STAGEWALL_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_bin("stagewall-probe"))
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// ok, eperm, timeout, refused or error:<kind>.
    pub word: String,
    pub millis: u64,
    pub body: String,
}

impl Outcome {
    pub(crate) fn parse(out: &str) -> Outcome {
        let (first, body) = out.split_once('\n').unwrap_or((out, ""));
        let mut parts = first.split_whitespace();
        Outcome {
            word: parts.next().unwrap_or("no-output").to_string(),
            millis: parts
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(u64::MAX),
            body: body.to_string(),
        }
    }

    pub fn is(&self, word: &str) -> bool {
        self.word == word
    }
}

impl Testbed {
    /// Starts the probe's echo servers in `node` and waits until they listen.
    pub fn serve(&mut self, node: &str, tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
        self.serve_with_sctp(node, tcp, udp, &[])
    }

    /// `serve`, and SCTP on `sctp` (an INIT answered with an INIT ACK: see
    /// [`crate::sctp`]).
    pub fn serve_with_sctp(
        &mut self,
        node: &str,
        tcp: &[u16],
        udp: &[u16],
        sctp: &[u16],
    ) -> anyhow::Result<()> {
        let join = |p: &[u16]| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = self.command(node, probe_bin())?;
        cmd.args(["serve", "--tcp", &join(tcp), "--udp", &join(udp)]);
        if !sctp.is_empty() {
            cmd.args(["--sctp", &join(sctp)]);
        }
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting probe server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        self.children.push(child);
        if line.trim() != "ready" {
            bail!("probe server in {node} did not start: {line:?}");
        }
        Ok(())
    }

    /// Runs a probe from `node` and returns what it printed.
    pub fn probe_output(&self, node: &str, args: &[&str]) -> String {
        let mut cmd = self.command(node, probe_bin()).expect("probe command");
        let out = cmd.args(args).output().expect("running probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a probe from `node` and returns its outcome.
    pub fn probe(&self, node: &str, args: &[&str]) -> Outcome {
        Outcome::parse(&self.probe_output(node, args))
    }

    pub fn tcp(&self, from: &str, to: IpAddr, port: u16) -> Outcome {
        self.probe(from, &["tcp", &to.to_string(), &port.to_string(), "1000"])
    }

    pub fn udp(&self, from: &str, to: IpAddr, port: u16, count: u32) -> Outcome {
        self.probe(
            from,
            &[
                "udp",
                &to.to_string(),
                &port.to_string(),
                "1000",
                &count.to_string(),
            ],
        )
    }

    /// The MAC address of a node's interface.
    pub fn mac(&self, node: &str) -> Mac {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.node(node).netns, "-br", "link", "show", "eth0"])
            .output()
            .expect("running ip");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(parse_mac)
            .unwrap_or_else(|| panic!("no MAC address in {text:?}"))
    }

    /// How many frames carrying each of `markers` reach `receiver`'s interface while
    /// `send` runs (and `ms` in all): counted by a raw socket there, before any firewall
    /// or address check of the receiver's.
    pub fn frames_delivered(
        &self,
        receiver: &str,
        markers: &[u32],
        ms: u32,
        send: impl FnOnce(),
    ) -> Vec<usize> {
        let mut cmd = self.command(receiver, probe_bin()).expect("probe command");
        cmd.args(["raw-count", "eth0", &ms.to_string()])
            .args(markers.iter().map(u32::to_string))
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the raw counter");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("reading the raw counter");
        assert_eq!(line.trim(), "ready", "raw counter in {receiver}");
        send();
        line.clear();
        out.read_line(&mut line).expect("reading the raw counter");
        let _ = child.wait();
        let counts: Vec<usize> = line
            .trim()
            .strip_prefix("counts")
            .unwrap_or_else(|| panic!("raw counter in {receiver}: {line:?}"))
            .split_whitespace()
            .map(|c| c.parse().expect("a count"))
            .collect();
        assert_eq!(counts.len(), markers.len(), "raw counter in {receiver}");
        counts
    }

    /// ping from a node (one echo request, 1 s to answer).
    pub fn ping(&self, from: &str, to: IpAddr) -> bool {
        let mut cmd = self.command(from, "ping").expect("ping command");
        cmd.args(["-c", "1", "-W", "1", &to.to_string()]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().expect("running ping (iputils-ping)").success()
    }
}

/// An HTTP GET from inside a namespace; the whole response (status line, headers, body).
pub(crate) fn http_get_in(netns: &str, addr: &str, path: &str) -> Option<String> {
    let mut cmd = in_netns_and_cgroup(netns, None, probe_bin()).ok()?;
    let out = cmd.args(["get", addr, path, "5000"]).output().ok()?;
    let o = Outcome::parse(&String::from_utf8_lossy(&out.stdout));
    o.is("ok").then_some(o.body)
}
