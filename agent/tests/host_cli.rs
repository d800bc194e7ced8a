//! The command line as a bare-metal host uses it (no root needed): shell completions and
//! man pages generated from the clap definition, and `run`'s settings from the
//! configuration file and STAGEWALL_* variables, with their precedence and errors.

use std::process::{Command, Output};

fn stagewall(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagewall"));
    cmd.args(args);
    // Only the variables the test gives (a STAGEWALL_* of the caller's would change the
    // outcome).
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAGEWALL_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied())
        .output()
        .expect("running stagewall")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The subcommands the binary really has, from its own help.
fn subcommands() -> Vec<String> {
    let help = text(&stagewall(&["--help"], &[]));
    let commands = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .expect("help lists commands");
    let names: Vec<String> = commands
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[test]
fn completions_name_every_subcommand_and_the_run_flags() {
    let commands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let out = stagewall(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for command in &commands {
            assert!(
                script.contains(command.as_str()),
                "{shell} completion lacks {command}"
            );
        }
        for flag in ["policies", "guard-cgroup", "log-format", "config"] {
            assert!(script.contains(flag), "{shell} completion lacks --{flag}");
        }
    }
    let out = stagewall(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("[possible values: bash, zsh, fish]"),
        "{}",
        text(&out)
    );
}

#[test]
fn man_pages_cover_every_subcommand() {
    let out = stagewall(&["man"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH stagewall 1"), "{page}");
    for command in subcommands() {
        assert!(page.contains(&command), "the man page lacks {command}");
    }
    let dir = std::env::temp_dir().join(format!("stagewall-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = stagewall(&["man", "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    for command in subcommands() {
        let page = std::fs::read_to_string(dir.join(format!("stagewall-{command}.1")))
            .unwrap_or_else(|e| panic!("stagewall-{command}.1: {e}"));
        assert!(
            page.contains(&format!(".TH stagewall-{command} 1")),
            "{page}"
        );
    }
    let run = std::fs::read_to_string(dir.join("stagewall-run.1")).unwrap();
    for flag in ["metrics\\-addr", "STAGEWALL_METRICS_ADDR", "config"] {
        assert!(run.contains(flag), "stagewall-run.1 lacks {flag}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `stagewall run` refuses a policy directory that does not exist, naming it, before it
/// touches the kernel: which of the three places' value won shows in the error.
#[test]
fn run_takes_the_command_line_then_the_environment_then_the_file() {
    let dir = std::env::temp_dir().join(format!("stagewall-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "# a host's settings\npolicies: /nonexistent/from-file\nmetrics-addr: 127.0.0.1:0\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let env = [("STAGEWALL_POLICIES", "/nonexistent/from-env")];
    /// Command-line arguments, environment, and whose value wins.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (&[], &[], "/nonexistent/from-file"),
        (&[], &env, "/nonexistent/from-env"),
        (
            &["--policies", "/nonexistent/from-cli"],
            &env,
            "/nonexistent/from-cli",
        ),
    ];
    for (args, env, winner) in cases {
        let mut argv = vec!["run", "--config", config];
        argv.extend(args);
        let out = stagewall(&argv, env);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("error: {winner}")),
            "{winner}: {}",
            text(&out)
        );
    }
    // The file can also be named by STAGEWALL_CONFIG.
    let out = stagewall(&["run"], &[("STAGEWALL_CONFIG", config)]);
    assert!(
        text(&out).contains("error: /nonexistent/from-file"),
        "{}",
        text(&out)
    );

    std::fs::write(
        dir.join("bad.yaml"),
        "mode: audit\nmetrics-adr: 127.0.0.1:0\n",
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    let out = stagewall(&["run", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.starts_with(&format!(
            "error: {}:2: metrics-adr: unknown key; expected a flag of `stagewall run`",
            bad.display()
        )),
        "{said}"
    );
    let out = stagewall(&["run", "--config", "/nonexistent/config.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/config.yaml: cannot be read"),
        "{}",
        text(&out)
    );
    // A bad variable is clap's error, naming the flag it sets.
    let out = stagewall(
        &["run", "--policies", "/x"],
        &[("STAGEWALL_MODE", "enforcing")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("invalid value 'enforcing' for '--mode <MODE>'"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The unit's seccomp filter on socket families must let through every family the agent
/// opens: AF_PACKET is one, the packet-socket guard's check that the kernel runs it
/// (datapath/packet_sockets.rs) opens one, and a refused socket(2) never reaches the
/// guard, so the agent would take the guard for unsupported and remove it.
#[test]
fn the_unit_lets_the_agent_open_every_socket_family_it_uses() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/stagewall.service"
    ))
    .expect("reading the unit");
    let allowed: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!allowed.is_empty(), "the unit restricts socket families");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"] {
        assert!(
            allowed.contains(&family),
            "RestrictAddressFamilies lacks {family}: {allowed:?}"
        );
    }
}
