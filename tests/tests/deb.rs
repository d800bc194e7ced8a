//! The bare-metal install: the .deb (`cargo xtask deb`) installed with dpkg into an empty
//! root; its files where the unit, the shell and man look for them; the unit checked by
//! `systemd-analyze verify`; and the unit's ExecStart command line run as systemd would
//! (the installed binary and config, the EnvironmentFile's STAGEWALL_* variables,
//! NOTIFY_SOCKET): READY=1 comes once the first policy is in force, the agent's log is
//! JSON lines with workload and policy fields (log-format: json), STOPPING=1 on SIGTERM.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use stagewall_tests::{Testbed, privileged};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let program = program.as_ref().to_owned();
    let out = Command::new(&program)
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| panic!("{program:?}: {e}"));
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program:?} {args:?}: {said}");
    said
}

/// Whether `program --version` answers: a tool the test needs. Missing with CI=true is a
/// failure (`cargo xtask setup` installs it); elsewhere the test says so and skips.
fn have(program: &str, args: &[&str], installed_by: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!ci(), "{program} is missing ({installed_by})");
        eprintln!("SKIPPED: {program} is missing ({installed_by})");
    }
    found
}

/// The package, built from the binary the tests use (dev profile).
fn build_deb() -> PathBuf {
    // Cargo as from a shell: without the variables `cargo test` sets for this test
    // (ring's build script reruns when CARGO_MANIFEST_DIR changes, and the whole TLS
    // stack with it), so that `cargo build --bins` finds the tests' own build fresh
    // (xtask's own commands do the same: xtask::as_from_a_shell).
    let mut cargo = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("CARGO") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
            || name == "LD_LIBRARY_PATH"
        {
            cargo.env_remove(&*name);
        }
    }
    let out = cargo
        .args(["xtask", "deb", "--profile", "dev"])
        .current_dir(workspace())
        .output()
        .expect("running cargo xtask deb");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo xtask deb: {said}");
    let deb = said
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb path in: {said}"));
    workspace().join(deb)
}

/// An empty root with a dpkg database, the package installed into it by dpkg itself.
fn install(deb: &Path, root: &Path) {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    let root_arg = format!("--root={}", root.display());
    // The root holds no libc package: the dependencies are the host's.
    run(
        "dpkg",
        &[
            &root_arg,
            "--force-depends",
            "--force-script-chrootless",
            "-i",
            deb.to_str().unwrap(),
        ],
    );
    let status = run(
        "dpkg-query",
        &[
            &format!("--admindir={}", admin.display()),
            "-s",
            "stagewall",
        ],
    );
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("/etc/stagewall/config.yaml"),
        "config.yaml is a conffile: {status}"
    );
}

fn check_files(root: &Path) {
    let read =
        |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p} not installed: {e}"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.join("usr/bin/stagewall"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "usr/bin/stagewall is executable");
    let config = String::from_utf8(read("etc/stagewall/config.yaml")).unwrap();
    assert_eq!(
        config,
        std::fs::read_to_string(workspace().join("deploy/systemd/config.yaml")).unwrap()
    );
    let unit = String::from_utf8(read("lib/systemd/system/stagewall.service")).unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    for (file, mentions) in [
        (
            "usr/share/bash-completion/completions/stagewall",
            "quarantine",
        ),
        ("usr/share/zsh/vendor-completions/_stagewall", "--policies"),
        (
            "usr/share/fish/vendor_completions.d/stagewall.fish",
            "uninstall",
        ),
    ] {
        let text = String::from_utf8(read(file)).unwrap();
        assert!(text.contains(mentions), "{file}");
    }
    for page in ["stagewall", "stagewall-run", "stagewall-quarantine"] {
        let gz = read(&format!("usr/share/man/man1/{page}.1.gz"));
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "{page}.1.gz is gzip");
    }
    assert!(root.join("usr/share/doc/stagewall/examples").is_dir());
}

/// `systemd-analyze verify` on the installed unit with its packaged drop-in, and again
/// with the Kubernetes-mode drop-in in its place (as /etc would override it), with its
/// executables looked up in the test's root (the unit names /usr/bin/stagewall, which this
/// host does not have) and the man page of Documentation= in the root's man directory.
/// verify cannot see ordering cycles here (no unit of the host's own is installed), so
/// the orderings each configuration ends up with are read from the files themselves.
fn verify_unit(root: &Path) {
    if !have(
        "systemd-analyze",
        &["--version"],
        "the systemd package; cargo xtask setup",
    ) {
        return;
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/stagewall.service"))
        .unwrap()
        .replace(
            "/usr/bin/stagewall",
            &root.join("usr/bin/stagewall").to_string_lossy(),
        );
    // The unit with `drop_in` beside it, as systemd-analyze verify saw it: what it said.
    let verify = |drop_in_text: &str| {
        let dir = root.join("verify");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("stagewall.service.d")).unwrap();
        let path = dir.join("stagewall.service");
        std::fs::write(&path, &unit).unwrap();
        std::fs::write(dir.join("stagewall.service.d/network.conf"), drop_in_text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=yes"])
            .arg(&path)
            .env("MANPATH", root.join("usr/share/man"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // verify reads the drop-ins beside the unit: a bad one is said (else the checks
    // below would pass for a drop-in it never looked at).
    let said = verify("[Unit]\nNoSuchDirective=1\n");
    assert!(
        said.contains("NoSuchDirective"),
        "systemd-analyze verify ignored the drop-in: {said}"
    );
    let packaged = "lib/systemd/system/stagewall.service.d/network.conf";
    let kubernetes = "usr/share/stagewall/systemd/kubernetes-network.conf";
    for (drop_in, before_network, after_online) in
        [(packaged, true, false), (kubernetes, false, true)]
    {
        let drop_in_text = std::fs::read_to_string(root.join(drop_in))
            .unwrap_or_else(|e| panic!("{drop_in} not installed: {e}"));
        let said = verify(&drop_in_text);
        // Without systemd as PID 1 (a container), verify cannot load the targets the unit
        // is ordered against; it still parses every directive and checks the executables.
        let real_problems: Vec<_> = said
            .lines()
            .filter(|l| !l.contains("Unit sysinit.target not found") && !l.trim().is_empty())
            .collect();
        assert!(
            real_problems.is_empty(),
            "systemd-analyze verify with {drop_in}: {said}"
        );
        let directives: Vec<&str> = unit
            .lines()
            .chain(drop_in_text.lines())
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let has = |line: &str| directives.contains(&line);
        assert_eq!(has("Before=network.target"), before_network, "{drop_in}");
        assert_eq!(
            has("After=network-online.target"),
            after_online,
            "{drop_in}"
        );
        // Both would be an ordering cycle (network-online.target is after network.target).
        assert!(!(has("Before=network.target") && has("After=network-online.target")));
    }
}

/// The unit's ExecStart= as argv, and its EnvironmentFile= path.
fn unit_command(root: &Path) -> (Vec<String>, String) {
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/stagewall.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .to_string()
    };
    let argv = value("ExecStart=")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let env_file = value("EnvironmentFile=")
        .trim_start_matches('-')
        .to_string();
    (argv, env_file)
}

#[test]
fn the_deb_installs_and_its_unit_command_line_enforces_then_says_ready() {
    if !privileged() {
        return;
    }
    if !have(
        "cargo",
        &["deb", "--version"],
        "cargo install cargo-deb; cargo xtask setup",
    ) {
        return;
    }
    let started = Instant::now();
    let deb = build_deb();
    let built = started.elapsed();
    let root = std::env::temp_dir().join(format!("stagewall-deb-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    install(&deb, &root);
    check_files(&root);
    verify_unit(&root);
    eprintln!(
        "deb built in {built:?}, installed and checked in {:?}",
        started.elapsed() - built
    );

    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut policy = bed.workload_yaml("client", "app", "{app: client}", false);
    policy += &bed.workload_yaml("server", "app", "{app: server}", false);
    // The client may reach nothing: its connects fail with EPERM once this is in force.
    policy += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-egress, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n";
    bed.write_policy("policy.yaml", &policy).unwrap();
    bed.serve("server", &[80], &[80]).unwrap();
    let server = bed.node("server").v4;
    assert!(bed.tcp("client", server, 80).is("ok"), "before the agent");

    // What the operator puts in /etc/default/stagewall (the unit's EnvironmentFile): this
    // test bed's places instead of the host's, and JSON logs.
    let (argv, env_file) = unit_command(&root);
    assert_eq!(
        argv[..2],
        ["/usr/bin/stagewall".to_string(), "run".to_string()]
    );
    let env_path = root.join(env_file.trim_start_matches('/'));
    std::fs::create_dir_all(env_path.parent().unwrap()).unwrap();
    std::fs::write(
        &env_path,
        format!(
            "STAGEWALL_POLICIES={}\nSTAGEWALL_CONTROL_SOCKET={}\nSTAGEWALL_BPFFS_DIR={}\nSTAGEWALL_FLOW_RECORDS={}\nSTAGEWALL_LOG_FORMAT=json\n",
            bed.dir.display(),
            bed.control_socket.display(),
            bed.bpffs.display(),
            bed.flow_records.display(),
        ),
    )
    .unwrap();
    let env: BTreeMap<String, String> = std::fs::read_to_string(&env_path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Paths of the unit's command line are the installed ones, below the test's root.
    let in_root = |arg: &String| {
        if arg.starts_with('/') {
            root.join(arg.trim_start_matches('/'))
                .to_string_lossy()
                .into_owned()
        } else {
            arg.clone()
        }
    };
    let notify_path = root.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut cmd = bed.hub_command(in_root(&argv[0])).unwrap();
    cmd.args(argv[1..].iter().map(in_root))
        .envs(&env)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = cmd.spawn().expect("starting the installed stagewall");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let log = log.clone();
        let stderr = agent.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        })
    };
    let log_text = || log.lock().unwrap().join("\n");

    // The first messages are STATUS= lines; READY=1 only once the first policy is in
    // force: the very next connect of the client is refused.
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while !messages
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "READY=1"))
    {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}); got {messages:?}; log:\n{}", log_text()));
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        bed.tcp("client", server, 80).is("eperm"),
        "in force at READY=1"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("STATUS=policy 1 in force")),
        "{messages:?}"
    );

    // A quarantine, and a refused policy change, for their log lines.
    let control = |verb: &str| {
        run(
            root.join("usr/bin/stagewall"),
            &[
                verb,
                "app/server",
                "--socket",
                bed.control_socket.to_str().unwrap(),
            ],
        )
    };
    assert!(control("quarantine").contains("quarantined"));
    bed.write_policy("bad.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: app}\nspec:\n  podSelector: {}\n  ingress:\n    - ports: [{port: 80, endPort: 70}]\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_text().contains("policy change rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM, as `systemctl stop` sends: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let stopping = loop {
        let n = notify.recv(&mut buf).expect("no STOPPING=1");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.lines().any(|l| l == "STOPPING=1") {
            break m;
        }
    };
    assert!(stopping.contains("STATUS=shutting down"), "{stopping}");
    let status = agent.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{status}:\n{}", log_text());

    // Every line of the log is a JSON object with a time, a level and a message; those
    // about a policy or a workload carry it as fields.
    let lines: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(l[field].is_string(), "{field} in {l}");
        }
    }
    let find = |what: &str, check: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| l["message"].as_str().unwrap().contains(what) && check(l))
            .unwrap_or_else(|| panic!("no line {what:?} with its fields in:\n{}", log_text()))
    };
    let applied = find("policy 1 applied", &|l| l["policy_generation"] == 1);
    assert_eq!(applied["level"], "INFO");
    assert_eq!(applied["mode"], "Enforce");
    for w in ["client", "server"] {
        find(&format!("workload app/{w} added"), &|l| {
            l["workload"] == w && l["namespace"] == "app"
        });
    }
    let quarantined = find("app/server quarantined", &|l| {
        l["workload"] == "server" && l["namespace"] == "app" && l["quarantined"] == true
    });
    assert_eq!(quarantined["level"], "WARN");
    let refused = find("rejected: ", &|l| {
        l["line"].is_u64() && l["file"].is_string()
    });
    assert!(
        refused["file"].as_str().unwrap().ends_with("bad.yaml"),
        "{refused}"
    );
    assert_eq!(refused["level"], "ERROR");
    // A message of the `log` crate, bridged (the loader logs through it).
    find("kernel programs loaded", &|l| l["level"] == "INFO");

    let uninstalled = run(
        root.join("usr/bin/stagewall"),
        &[
            "uninstall",
            "--bpffs-dir",
            bed.bpffs.to_str().unwrap(),
            "--socket",
            bed.control_socket.to_str().unwrap(),
        ],
    );
    eprintln!("{uninstalled}");
    drop(bed);
    std::fs::remove_dir_all(&root).unwrap();
    eprintln!("whole test: {:?}", started.elapsed());
}
