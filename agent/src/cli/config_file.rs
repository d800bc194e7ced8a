//! `stagewall run`'s settings from a YAML file (/etc/stagewall/config.yaml on a host) and
//! from `STAGEWALL_*` environment variables, beside the command line.
//!
//! Both are derived from the clap definition, so a new flag of `run` is a key of the file
//! and an environment variable without more code: the file's key is the flag's long name
//! (`metrics-addr: 127.0.0.1:9090`), the variable is `STAGEWALL_` and the long name in
//! upper case with `_` for `-` (`STAGEWALL_METRICS_ADDR`), unless the flag already names
//! one (`NODE_NAME`, `POD_UID`). Precedence: the command line, then the environment, then
//! the file, then the default. A file value becomes the flag on the command line (only
//! where neither the command line nor the environment set it), so clap's own checks
//! (conflicts, requirements) see one command line; each value is checked against the
//! flag's own parser first, so that a bad one is reported with the file's line.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, ArgMatches, Command, parser::ValueSource};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::cli::exit::Exit;

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/stagewall/config.yaml";
/// The subcommand whose flags the file sets.
pub const RUN: &str = "run";
/// The flag that names the file (not a key of the file itself).
pub const CONFIG_FLAG: &str = "config";
/// What every derived environment variable starts with.
pub const ENV_PREFIX: &str = "STAGEWALL_";

/// A configuration file that cannot be used: the file, the line (0 when the file itself
/// cannot be read), the key and what was expected.
#[derive(Debug)]
pub struct ConfigFileError {
    pub file: PathBuf,
    pub line: u64,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigFileError {}

/// One value of the file: a scalar, or a list for a repeatable flag.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RawValue {
    List(Vec<Scalar>),
    Scalar(Scalar),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// The command line, with every flag of `run` given an environment variable; for `run`,
/// the configuration file's values where the command line and the environment gave none.
/// Exits as clap does on a bad command line, and with code 2 on a bad file.
pub fn parse<P: clap::Parser>() -> P {
    let command = command::<P>();
    let args: Vec<OsString> = std::env::args_os().collect();
    let matches = match with_file(&command, args) {
        Ok(matches) => matches,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(Exit::BadInput as i32);
        }
    };
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command.clone()).exit())
}

/// The command line's definition as the user gets it: with the environment variables
/// (for help, completions and man pages too).
pub fn command<P: clap::CommandFactory>() -> Command {
    with_env(P::command())
}

/// `command` with an environment variable for each flag of the root (the global flags) and
/// of `run` that has none yet.
pub fn with_env(command: Command) -> Command {
    let command = command.mut_args(add_env);
    if command.find_subcommand(RUN).is_some() {
        command.mut_subcommand(RUN, |run| run.mut_args(add_env))
    } else {
        command
    }
}

/// The variable a flag is read from unless it names its own.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

fn add_env(arg: Arg) -> Arg {
    match arg.get_long() {
        Some(long) if arg.get_env().is_none() && !is_builtin(&arg) => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    }
}

fn is_builtin(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
        || matches!(arg.get_id().as_str(), "help" | "version")
}

/// Parses `args` (the process's, program name first); for `run`, adds the file's values.
pub fn with_file(
    command: &Command,
    mut args: Vec<OsString>,
) -> Result<ArgMatches, Box<dyn std::error::Error>> {
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit());
    let Some(run_matches) = matches.subcommand_matches(RUN) else {
        return Ok(matches);
    };
    let path = match run_matches.get_one::<PathBuf>(CONFIG_FLAG) {
        Some(path) => path.clone(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(matches),
    };
    let mut built = command.clone();
    built.build();
    let run = built
        .find_subcommand(RUN)
        .expect("run is a subcommand of the command it was parsed with");
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigFileError {
        file: path.clone(),
        line: 0,
        key: None,
        message: format!("cannot be read: {e}"),
    })?;
    let extra = file_args(run, run_matches, &path, &text)?;
    if extra.is_empty() {
        return Ok(matches);
    }
    // `run` is the last subcommand and takes no positional argument: flags added at the
    // end are its own.
    args.extend(extra);
    Ok(command
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit()))
}

/// The long names of the flags the file sets: every flag of `run` (and the global ones),
/// except help, version and --config itself.
pub fn keys(run: &Command) -> Vec<&Arg> {
    run.get_arguments()
        .filter(|a| a.get_long().is_some() && !is_builtin(a) && a.get_id() != CONFIG_FLAG)
        .collect()
}

/// The command-line flags the file's text adds to `run`: for each key, its value(s)
/// checked by the flag's parser, skipped where the command line or the environment set
/// the flag already.
pub fn file_args(
    run: &Command,
    run_matches: &ArgMatches,
    file: &Path,
    text: &str,
) -> Result<Vec<OsString>, ConfigFileError> {
    let error = |line: u64, key: Option<&str>, message: String| ConfigFileError {
        file: file.to_path_buf(),
        line,
        key: key.map(str::to_string),
        message,
    };
    let entries: Option<BTreeMap<String, Spanned<RawValue>>> = serde_saphyr::from_str(text)
        .map_err(|e| {
            let line = e.location().map_or(0, |l| l.line());
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first).to_string();
            error(
                line,
                None,
                format!("expected a mapping of `stagewall run` flags to values: {first}"),
            )
        })?;
    let keys = keys(run);
    let mut from_file: Vec<(&Arg, Vec<OsString>)> = Vec::new();
    for (key, value) in entries.unwrap_or_default() {
        let line = value.referenced.line();
        let Some(arg) = keys.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<_> = keys.iter().filter_map(|a| a.get_long()).collect();
            return Err(error(
                line,
                Some(&key),
                format!(
                    "unknown key; expected a flag of `stagewall run`: {}",
                    known.join(", ")
                ),
            ));
        };
        let values: Vec<String> = match &value.value {
            RawValue::Scalar(s) => vec![s.text()],
            RawValue::List(list) if matches!(arg.get_action(), ArgAction::Append) => {
                list.iter().map(Scalar::text).collect()
            }
            RawValue::List(_) => {
                return Err(error(
                    line,
                    Some(&key),
                    "expected a single value, not a list".into(),
                ));
            }
        };
        let is_flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let mut flags = Vec::new();
        for v in &values {
            if is_flag {
                match v.as_str() {
                    "true" => flags.push(OsString::from(format!("--{key}"))),
                    "false" => {}
                    _ => {
                        return Err(error(
                            line,
                            Some(&key),
                            format!("invalid value '{v}': expected true or false"),
                        ));
                    }
                }
                continue;
            }
            check_value(arg, &key, v).map_err(|e| error(line, Some(&key), clap_message(&e)))?;
            flags.push(OsString::from(format!("--{key}={v}")));
        }
        from_file.push((*arg, flags));
    }
    // What the command line (or the environment) chose wins: a file value is dropped when
    // that flag was given, or a flag it conflicts with (either side may declare the
    // conflict); then a file value that requires a flag dropped for a conflict (the file's
    // `kubeconfig` goes with its `kubernetes` when the command line gives `--policies`).
    // A requirement the file simply lacks stays for clap to report.
    let given = |arg: &Arg| {
        matches!(
            run_matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let conflicting = |a: &Arg, b: &Arg| {
        let names = |x: &Arg, y: &Arg| {
            run.get_arg_conflicts_with(x)
                .iter()
                .any(|c| c.get_id() == y.get_id())
        };
        names(a, b) || names(b, a)
    };
    let chosen_away = |arg: &Arg| {
        run.get_arguments()
            .any(|other| given(other) && conflicting(arg, other))
    };
    let dropped: Vec<&str> = from_file
        .iter()
        .filter(|(arg, _)| !given(arg) && chosen_away(arg))
        .filter_map(|(arg, _)| arg.get_long())
        .collect();
    let mut extra = Vec::new();
    for (arg, flags) in &from_file {
        let requires_dropped = || {
            requirements(run, flags)
                .iter()
                .any(|long| dropped.contains(&long.as_str()))
        };
        if !given(arg) && !chosen_away(arg) && !requires_dropped() {
            extra.extend(flags.iter().cloned());
        }
    }
    Ok(extra)
}

/// The long names of the flags `flags` (one flag's values from the file) require: clap
/// has no getter for them, so `run` is asked to parse them alone and names what is
/// missing, less what it misses with no flag at all (a flag required unless another is
/// given is no requirement of this one). The parse sees the STAGEWALL_* variables too; a
/// requirement they meet is met.
fn requirements(run: &Command, flags: &[OsString]) -> Vec<String> {
    let Some(first) = flags.first() else {
        return Vec::new();
    };
    let always = missing(run, &[]);
    missing(run, std::slice::from_ref(first))
        .into_iter()
        .filter(|m| !always.contains(m))
        .collect()
}

/// The long names of the flags clap says are missing when `run` is given `args` alone.
fn missing(run: &Command, args: &[OsString]) -> Vec<String> {
    let error = match run.clone().no_binary_name(true).try_get_matches_from(args) {
        Ok(_) => return Vec::new(),
        Err(e) => e,
    };
    if error.kind() != clap::error::ErrorKind::MissingRequiredArgument {
        return Vec::new();
    }
    match error.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::Strings(missing)) => missing
            .iter()
            .filter_map(|m| m.split_whitespace().next())
            .filter_map(|m| m.strip_prefix("--"))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks `value` with the flag's own parser (and its possible values), alone: the
/// flag's conflicts and requirements are checked on the whole command line later.
fn check_value(arg: &Arg, key: &str, value: &str) -> Result<(), clap::Error> {
    let alone = Arg::new("value")
        .long(key.to_string())
        .value_name(key.to_uppercase().replace('-', "_"))
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    Command::new("stagewall run")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--{key}={value}")])
        .map(drop)
}

/// A clap error as one line, without "error: " and the hint to --help.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use clap::Args as _;

    use super::*;
    use crate::cli::{logging::LogArgs, run::RunArgs};

    /// The shipped example: every key, with a value that works.
    const EXAMPLE: &str = include_str!("../../../deploy/systemd/config.yaml");

    /// `stagewall` with the global log flags and `run`, as main.rs defines them.
    fn command() -> Command {
        let run = RunArgs::augment_args(Command::new(RUN));
        with_env(LogArgs::augment_args(Command::new("stagewall")).subcommand(run))
    }

    fn built_run() -> Command {
        let mut command = command();
        command.build();
        command.find_subcommand(RUN).unwrap().clone()
    }

    /// `stagewall run ARGS` with the file `text` (named x.yaml): the flags the file adds,
    /// or its error.
    fn from_file(text: &str, args: &[&str]) -> Result<Vec<OsString>, ConfigFileError> {
        let argv = ["stagewall", RUN].iter().chain(args);
        let matches = command().ignore_errors(true).get_matches_from(argv);
        file_args(
            &built_run(),
            matches.subcommand_matches(RUN).unwrap(),
            Path::new("x.yaml"),
            text,
        )
    }

    #[test]
    fn every_flag_of_run_is_a_key_of_the_file_and_of_the_shipped_example() {
        let run = built_run();
        let keys = keys(&run);
        assert!(keys.len() > 30, "{}", keys.len());
        for arg in keys {
            let key = arg.get_long().unwrap();
            // The example's line for the key, commented out or not.
            let line = EXAMPLE
                .lines()
                .map(|l| l.trim_start_matches("# "))
                .find(|l| l.starts_with(&format!("{key}: ")))
                .unwrap_or_else(|| panic!("deploy/systemd/config.yaml has no line for {key}"));
            let flags = from_file(line, &[]).unwrap_or_else(|e| panic!("{line}: {e}"));
            // A switch set to false adds nothing; every other value becomes the flag.
            if !line.ends_with(": false") {
                assert!(!flags.is_empty(), "{line}");
            }
            let argv = ["stagewall", RUN]
                .map(OsString::from)
                .into_iter()
                .chain(flags);
            let matches = command().ignore_errors(true).get_matches_from(argv);
            let run_matches = matches.subcommand_matches(RUN).unwrap();
            if !line.ends_with(": false") {
                assert_eq!(
                    run_matches.value_source(arg.get_id().as_str()),
                    Some(ValueSource::CommandLine),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        for arg in keys(&built_run()) {
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("{:?}", arg.get_long()));
            let env = env.to_string_lossy();
            assert!(
                env.starts_with(ENV_PREFIX) || env == "NODE_NAME" || env == "POD_UID",
                "{env}"
            );
        }
        assert_eq!(env_name("metrics-addr"), "STAGEWALL_METRICS_ADDR");
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let text = "mode: audit\nmetrics-addr: 127.0.0.1:1\nguard-cgroup: [/a, /b]\n";
        let flags = from_file(text, &["--mode", "enforce"]).unwrap();
        assert_eq!(
            flags,
            [
                "--guard-cgroup=/a",
                "--guard-cgroup=/b",
                "--metrics-addr=127.0.0.1:1"
            ]
            .map(OsString::from)
        );
        let flags = from_file("log-allowed: true\nnode-ingress: false\n", &[]).unwrap();
        assert_eq!(flags, [OsString::from("--log-allowed")]);
        assert!(from_file("# nothing\n", &[]).unwrap().is_empty());
        assert!(from_file("", &[]).unwrap().is_empty());
    }

    /// A file value that conflicts with a different flag given on the command line (or in
    /// the environment) is dropped as if that flag were its own: the command line chose
    /// the other side of the conflict.
    #[test]
    fn the_command_line_wins_over_a_conflicting_file_value() {
        // A file value that requires the dropped flag goes with it.
        let kube = "kubernetes: true\nkubeconfig: /k\npods-cgroup-base: /kubepods\nmode: audit\n";
        let flags = from_file(kube, &["--policies", "/p"]).unwrap();
        assert_eq!(flags, [OsString::from("--mode=audit")]);
        let flags = from_file(kube, &[]).unwrap();
        assert_eq!(
            flags,
            [
                "--kubeconfig=/k",
                "--kubernetes",
                "--mode=audit",
                "--pods-cgroup-base=/kubepods"
            ]
            .map(OsString::from)
        );
        let text = "policies: /etc/stagewall/policies\nnode-ingress: true\nmode: audit\n";
        let flags = from_file(text, &["--kubernetes"]).unwrap();
        assert_eq!(flags, [OsString::from("--mode=audit")]);
        // The conflict is declared on the file's side (`policies` conflicts with
        // `kubernetes`); the other way round is dropped too.
        let flags = from_file("kubernetes: true\nmode: audit\n", &["--policies", "/p"]).unwrap();
        assert_eq!(flags, [OsString::from("--mode=audit")]);
        // Without a conflicting flag given, the file's values stand.
        let flags = from_file(text, &[]).unwrap();
        assert_eq!(
            flags,
            [
                "--mode=audit",
                "--node-ingress",
                "--policies=/etc/stagewall/policies"
            ]
            .map(OsString::from)
        );
    }

    /// A flag required unless another is given (as `check`'s policy directory is, unless
    /// --kubernetes) is no requirement of every other flag: a file value is not dropped
    /// for it.
    #[test]
    fn a_flag_required_unless_another_is_no_requirement_of_the_rest() {
        let mut run = Command::new(RUN)
            .arg(
                Arg::new("policies")
                    .long("policies")
                    .required_unless_present("kubernetes")
                    .conflicts_with("kubernetes"),
            )
            .arg(
                Arg::new("kubernetes")
                    .long("kubernetes")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("kubeconfig")
                    .long("kubeconfig")
                    .requires("kubernetes"),
            )
            .arg(Arg::new("mode").long("mode"));
        run.build();
        assert!(requirements(&run, &[OsString::from("--mode=audit")]).is_empty());
        assert_eq!(
            requirements(&run, &[OsString::from("--kubeconfig=/k")]),
            ["kubernetes"]
        );
    }

    #[test]
    fn bad_files_name_the_file_the_line_the_key_and_what_was_expected() {
        let error = |text: &str| from_file(text, &[]).unwrap_err().to_string();
        let e = error("mode: audit\nmetrix-addr: 1\n");
        assert!(
            e.starts_with(
                "x.yaml:2: metrix-addr: unknown key; expected a flag of `stagewall run`: "
            ),
            "{e}"
        );
        assert!(e.contains("metrics-addr"), "{e}");
        let e = error("\nmode: enforcing\n");
        assert!(
            e.starts_with("x.yaml:2: mode: invalid value 'enforcing'"),
            "{e}"
        );
        assert!(e.contains("[possible values: enforce, audit]"), "{e}");
        let e = error("metrics-addr: nope\n");
        assert!(
            e.starts_with("x.yaml:1: metrics-addr: invalid value 'nope'"),
            "{e}"
        );
        assert!(e.contains("invalid socket address"), "{e}");
        let e = error("mode: [audit]\n");
        assert_eq!(e, "x.yaml:1: mode: expected a single value, not a list");
        let e = error("log-allowed: 3\n");
        assert_eq!(
            e,
            "x.yaml:1: log-allowed: invalid value '3': expected true or false"
        );
        let e = error("config: /etc/other.yaml\n");
        assert!(e.starts_with("x.yaml:1: config: unknown key"), "{e}");
        let e = error("mode: audit\n- a\n");
        assert!(e.starts_with("x.yaml:"), "{e}");
        assert!(
            e.contains("expected a mapping of `stagewall run` flags to values"),
            "{e}"
        );
    }
}
