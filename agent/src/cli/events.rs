//! `stagewall events [--follow]`: reads the agent's `GET /v1/events` stream and prints
//! it as a table (default) or as JSON lines.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::events::{Verdict, VerdictEvent, filter::Filter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

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
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
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
    if args.output == Output::Table {
        writeln!(out, "{TABLE_HEADER}")?;
    }
    for line in reader.lines() {
        let line = line?;
        match args.output {
            Output::Json => writeln!(out, "{line}")?,
            Output::Table => match serde_json::from_str::<VerdictEvent>(&line) {
                Ok(e) => writeln!(out, "{}", table_row(&e))?,
                // Stream notices (a follower that fell behind) are printed as they are.
                Err(_) => writeln!(out, "{line}")?,
            },
        }
        out.flush()?;
    }
    Ok(())
}
