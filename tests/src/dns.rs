//! A real DNS server for the test bed, and workloads that resolve through it.
//!
//! [`DnsServer`]: dnsmasq (Debian's dnsmasq-base) in a node of the test bed, serving the
//! test's zone from a hosts directory it watches (so a test rotates a name's addresses by
//! rewriting a file, and dnsmasq answers the new ones at once), CNAMEs, and one TTL for
//! everything it answers (`--local-ttl`), over UDP and TCP.
//!
//! [`Testbed::resolving_command`]: a command in a node that resolves through the system
//! resolver (glibc's getaddrinfo reading /etc/resolv.conf) with the node's own
//! resolv.conf naming the test's server: the command runs in a mount namespace of its own
//! (`unshare --mount`, private propagation) where that file is bound over
//! /etc/resolv.conf, so nothing of the host's changes.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::Testbed;

/// dnsmasq serving a test zone in one node of the bed.
pub struct DnsServer {
    /// The server's address (the node's IPv4 address).
    pub addr: IpAddr,
    /// The hosts directory dnsmasq watches.
    hosts_dir: PathBuf,
}

impl DnsServer {
    /// Starts dnsmasq in `node` with `ttl` seconds for every answer, the names and
    /// addresses of `records`, and `cnames` (alias, target) pointing at them. dnsmasq is
    /// killed with the test bed.
    pub fn start(
        bed: &mut Testbed,
        node: &str,
        ttl: u32,
        records: &[(&str, IpAddr)],
        cnames: &[(&str, &str)],
    ) -> anyhow::Result<DnsServer> {
        DnsServer::start_with_hosts(bed, node, ttl, records, cnames, &[])
    }

    /// [`DnsServer::start`] with more hosts files (name, records), written before dnsmasq
    /// starts: it reads them at once at its start, whereas a file that appears later is read
    /// through inotify in time quadratic in its lines (100,000 lines: over 5 minutes, not
    /// answering meanwhile).
    pub fn start_with_hosts(
        bed: &mut Testbed,
        node: &str,
        ttl: u32,
        records: &[(&str, IpAddr)],
        cnames: &[(&str, &str)],
        files: &[(&str, &[(&str, IpAddr)])],
    ) -> anyhow::Result<DnsServer> {
        let addr = bed.node(node).v4;
        let hosts_dir = bed.dir.join(format!("dns-{node}"));
        fs::create_dir_all(&hosts_dir)?;
        let server = DnsServer { addr, hosts_dir };
        server.set_records("zone", records)?;
        for (file, records) in files {
            server.set_records(file, records)?;
        }
        let listen = format!("--listen-address={addr}");
        let hosts = format!("--hostsdir={}", server.hosts_dir.display());
        let ttl = format!("--local-ttl={ttl}");
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            listen,
            "--port=53".into(),
            "--user=root".into(),
            "--pid-file=".into(),
            hosts,
            ttl,
            // Answer from the hosts files only: a name they lack is NXDOMAIN, never
            // forwarded anywhere.
            "--local=/test/".into(),
        ];
        for (alias, target) in cnames {
            args.push(format!("--cname={alias},{target}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bed.spawn(node, "dnsmasq", &args)
            .context("starting dnsmasq (Debian's dnsmasq-base)")?;
        // Ready when it answers over UDP.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let server_arg = format!("@{addr}");
        let first_name = records.first().map_or("ready.test", |r| r.0);
        loop {
            let out = bed
                .command(node, "dig")?
                .args([&server_arg, "+short", "+time=1", "+tries=1", first_name])
                .output()?;
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "dnsmasq in {node} does not answer"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }

    /// A second server in the hub namespace (the node's own network) on `addr` (a
    /// loopback address such as 127.0.0.53, where systemd-resolved listens), answering from
    /// the same hosts directory: the local resolver of workloads in the node's network
    /// namespace.
    pub fn start_local(&self, bed: &mut Testbed, addr: IpAddr, ttl: u32) -> anyhow::Result<()> {
        let mut cmd = bed.hub_command("dnsmasq")?;
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={addr}"),
            "--port=53",
            "--user=root",
            "--pid-file=",
            &format!("--hostsdir={}", self.hosts_dir.display()),
            &format!("--local-ttl={ttl}"),
            "--local=/test/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        bed.children
            .push(cmd.spawn().context("starting dnsmasq in the hub")?);
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    }

    /// Replaces the records of the hosts file `file` (dnsmasq re-reads it at once): the
    /// names' new addresses.
    pub fn set_records(&self, file: &str, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        let text: String = records
            .iter()
            .map(|(name, addr)| format!("{addr} {name}\n"))
            .collect();
        // Written aside and renamed: dnsmasq never reads half a file.
        let tmp = self.hosts_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.hosts_dir.join(file))?;
        Ok(())
    }

    /// The hosts directory (for a test that rotates records itself).
    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }
}

impl Testbed {
    /// A command in `node` (its network namespace and cgroup) whose system resolver asks
    /// `resolver`: /etc/resolv.conf names it in the command's own mount namespace.
    pub fn resolving_command(
        &self,
        node: &str,
        resolver: IpAddr,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        let conf = self.dir.join(format!("resolv-{node}.conf"));
        // attempts:1 and a short timeout: a lost answer shows as a failure, not a retry.
        fs::write(
            &conf,
            format!("nameserver {resolver}\noptions timeout:2 attempts:1\n"),
        )?;
        let mut cmd = self.command(node, "unshare")?;
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
                conf.display()
            ))
            .arg(program);
        Ok(cmd)
    }

    /// `resolving_command` for a process in the hub namespace (the node's network) and in
    /// `cgroup`: a workload of the node's own network namespace, as a training job on a
    /// bare-metal host is.
    pub fn resolving_command_in_hub(
        &self,
        cgroup: &Path,
        resolver: IpAddr,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        let conf = self.dir.join("resolv-hub.conf");
        fs::write(
            &conf,
            format!("nameserver {resolver}\noptions timeout:2 attempts:1\n"),
        )?;
        let mut cmd = self.hub_command_in(cgroup, "unshare")?;
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
                conf.display()
            ))
            .arg(program);
        Ok(cmd)
    }

    /// Runs the probe in `node` with `resolver` as its system resolver; what it printed.
    pub fn resolving_probe(&self, node: &str, resolver: IpAddr, args: &[&str]) -> String {
        let out = self
            .resolving_command(node, resolver, crate::probe::probe_bin())
            .expect("resolving command")
            .args(args)
            .output()
            .expect("running the probe");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}
