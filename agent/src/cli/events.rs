//! `stagewall events [--follow]`: reads the agent's `GET /v1/events` stream and prints
//! it as a table (`-o text`, the default; `-o wide` adds the node and the rule), as JSON
//! lines (`-o json`, one event a line, as the endpoint streams them) or as YAML
//! documents (`-o yaml`, one per event). `-o table` is a deprecated alias of text.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{
        exit::Exit,
        output::{Output, OutputArgs},
    },
    events::{Verdict, VerdictEvent, filter::Filter},
};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// The agent's HTTP endpoint.
    #[arg(long, default_value = crate::observe::http::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Keep printing new events as they come (else: the recent ones, then exit).
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of workloads in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events of this workload (namespace/name, or a name).
    #[arg(long)]
    pub workload: Option<String>,
    /// Only events with this verdict: dropped, would-drop or allowed.
    #[arg(long)]
    pub verdict: Option<Verdict>,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub const TABLE_HEADER: &str = "TIME                     VERDICT     DIR      WORKLOAD                         PEER                             PROTO   PORT  REASON";

pub fn table_row(e: &VerdictEvent) -> String {
    let port = e.dst_port.map_or("-".to_string(), |p| p.to_string());
    let suppressed = if e.suppressed > 0 {
        format!(" (+{} suppressed)", e.suppressed)
    } else {
        String::new()
    };
    format!(
        "{:<24} {:<11} {:<8} {:<32} {:<32} {:<7} {:>5}  {}{suppressed}",
        e.time, e.verdict, e.direction, e.workload, e.peer, e.protocol, port, e.reason
    )
}

pub fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let filter = Filter {
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        verdict: args.verdict,
    };
    let mut query = filter.to_query();
    if args.follow {
        query = if query.is_empty() {
            "follow=true".into()
        } else {
            format!("{query}&follow=true")
        };
    }
    let mut stream =
        TcpStream::connect_timeout(&args.addr, Duration::from_secs(5)).with_context(|| {
            format!(
                "connecting to the agent at {} (is `stagewall run` running?)",
                args.addr
            )
        })?;
    // HTTP/1.0: the answer is the body as it is, ended by the agent closing the
    // connection (an HTTP/1.1 stream would come in chunks).
    write!(
        stream,
        "GET /v1/events?{query} HTTP/1.0\r\nHost: {}\r\n\r\n",
        args.addr
    )?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if status.split(' ').nth(1) != Some("200") {
        // The body says why (a 403 says where the stream can be read).
        let mut why = String::new();
        let _ = std::io::Read::take(&mut reader, 4096).read_to_string(&mut why);
        let why = why
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body.trim());
        bail!("the agent answered {}: {why}", status.trim());
    }
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let output = args.output.output;
    match output {
        Output::Text => writeln!(out, "{TABLE_HEADER}")?,
        Output::Wide => writeln!(out, "{TABLE_HEADER}  NODE  RULE")?,
        Output::Json | Output::Yaml => {}
    }
    for line in reader.lines() {
        let line = line?;
        let event = serde_json::from_str::<VerdictEvent>(&line);
        match (output, event) {
            (Output::Json, _) => writeln!(out, "{line}")?,
            (Output::Yaml, Ok(e)) => write!(
                out,
                "---\n{}",
                serde_saphyr::to_string(&e).expect("plain data serialises")
            )?,
            (Output::Text, Ok(e)) => writeln!(out, "{}", table_row(&e))?,
            (Output::Wide, Ok(e)) => {
                let rule = e.rule.as_ref().map_or("-".to_string(), |r| {
                    format!("{} {} {} ({})", r.tier, r.policy, r.name, r.action)
                });
                writeln!(out, "{}  {}  {rule}", table_row(&e), e.node)?
            }
            // Stream notices (a follower that fell behind) are printed as they are.
            (_, Err(_)) => writeln!(out, "{line}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The exit code for how `run` went: the agent not answering is told apart.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            {
                Exit::AgentUnreachable.into()
            } else {
                Exit::Failed.into()
            }
        }
    }
}
