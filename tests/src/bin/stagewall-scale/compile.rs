//! Compiling the workload and identity scales with `stagewall check`, one process each:
//! its wall time and peak memory (wait4's ru_maxrss), and what it says when the result
//! would not fit the kernel maps (the compile runs whole before that check).

use std::{path::Path, process::Stdio, time::Instant};

use crate::{policies, table::Line};

/// What one `stagewall check` run took.
struct Checked {
    millis: f64,
    peak_kib: u64,
    /// Its verdict: "ok", or the error it printed (the maps' capacity, say).
    verdict: String,
}

fn check(files: &[(String, String)]) -> Checked {
    let dir = std::env::temp_dir().join(format!("stagewall-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, yaml) in files {
        std::fs::write(dir.join(name), yaml).unwrap();
    }
    let checked = run_check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

fn run_check(dir: &Path) -> Checked {
    let started = Instant::now();
    let stderr = dir.join("check.stderr");
    // Waited for below with wait4 (for its resource usage), not Child::wait.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(stagewall_tests::agent_bin())
        .arg("check")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("stagewall check");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(waited, pid, "wait4");
    let verdict = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        "ok".to_string()
    } else {
        let said = std::fs::read_to_string(&stderr).unwrap_or_default();
        said.lines()
            .find(|l| l.contains("capacity"))
            .or_else(|| said.lines().next())
            .unwrap_or("refused, nothing said")
            .trim()
            .to_string()
    };
    Checked {
        millis,
        peak_kib: usage.ru_maxrss as u64,
        verdict,
    }
}

/// The lines of one run; the compile time held to 1 s where `timed` (the issue sets it
/// for workloads).
fn lines(what: &str, checked: &Checked, timed: bool) -> Vec<Line> {
    let what_compile = format!("{what}: parse + compile (`stagewall check`, whole process)");
    let took = format!("{:.0} ms", checked.millis);
    vec![
        if timed {
            Line::held_to(what_compile, took, "under 1 s", checked.millis < 1000.0)
        } else {
            Line::figure(what_compile, took)
        },
        Line::held_to(
            format!("{what}: peak memory of that process"),
            format!("{:.1} MiB", checked.peak_kib as f64 / 1024.0),
            "under 256 MiB",
            checked.peak_kib < 256 * 1024,
        ),
        Line::figure(
            format!("{what}: `stagewall check` says"),
            checked.verdict.clone(),
        ),
    ]
}

pub fn workloads(count: usize) -> Vec<Line> {
    let files = policies::workloads(count, |i| format!("/scale/w{i}"));
    lines(&format!("{count} local workloads"), &check(&files), true)
}

pub fn identities(count: usize) -> Vec<Line> {
    let files = policies::identities(count, "/scale/server");
    lines(&format!("{count} CIDR identities"), &check(&files), false)
}
