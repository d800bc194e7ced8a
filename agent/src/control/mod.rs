//! The control socket: changes that act on enforcement (quarantine, release), and what
//! the agent and the kernel hold (status, get: cgroup ids, addresses and rules an
//! unprivileged user has no business reading), go through a Unix socket only root can use
//! — never through the read-only HTTP endpoint. One request per connection, one line:
//! `quarantine namespace/name`, `release namespace/name`, `status`, `get endpoints`,
//! `get identities`, `get policy namespace/name` or `get flows namespace/name`; answered
//! by a line `ok ...` (JSON for status and get) or `error ...`.
//!
//! - `status`: the agent's status (`stagewall status`);
//! - `inventory`: the kernel's maps, decoded and named (`stagewall get`).

pub mod inventory;
pub mod status;

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use self::inventory::GetRequest;
use crate::policy::{model::ObjectName, names};

/// Where the socket lives unless `--control-socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/stagewall/control.sock";
const MAX_REQUEST_BYTES: u64 = 1024;
/// What the agent answers a caller that is not root (the socket's mode keeps others out;
/// this is the second check, on the peer's credentials).
const NOT_ROOT: &str = "only root may use the control socket";
/// How long the client waits for the agent's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Quarantine(ObjectName),
    Release(ObjectName),
    Status,
    Get(GetRequest),
}

const EXPECTED: &str = "expected: quarantine|release namespace/name, status, get endpoints|identities, or get policy|flows namespace/name";

impl Request {
    /// One request line, as the agent reads it from the socket (surrounding whitespace
    /// and the line break ignored); the error says what was expected. Pure, so it is
    /// fuzzed on its own (agent/fuzz, `control_request`).
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim();
        match line {
            "status" => return Ok(Request::Status),
            "get endpoints" => return Ok(Request::Get(GetRequest::Endpoints)),
            "get identities" => return Ok(Request::Get(GetRequest::Identities)),
            _ => {}
        }
        let (verb, target) = line.rsplit_once(' ').ok_or_else(|| EXPECTED.to_string())?;
        // A valid name holds no whitespace or line break: what is accepted is sent as
        // the one line it was read from.
        let workload = || names::object_name(target.trim());
        match verb.trim() {
            "quarantine" => Ok(Request::Quarantine(workload()?)),
            "release" => Ok(Request::Release(workload()?)),
            "get policy" => Ok(Request::Get(GetRequest::Policy(workload()?))),
            "get flows" => Ok(Request::Get(GetRequest::Flows(workload()?))),
            other => Err(format!("unknown request {other:?}; {EXPECTED}")),
        }
    }

    /// The request as the client sends it: one line.
    pub fn line(&self) -> String {
        match self {
            Request::Quarantine(w) => format!("quarantine {w}\n"),
            Request::Release(w) => format!("release {w}\n"),
            Request::Status => "status\n".to_string(),
            Request::Get(GetRequest::Endpoints) => "get endpoints\n".to_string(),
            Request::Get(GetRequest::Identities) => "get identities\n".to_string(),
            Request::Get(GetRequest::Policy(w)) => format!("get policy {w}\n"),
            Request::Get(GetRequest::Flows(w)) => format!("get flows {w}\n"),
        }
    }
}

/// Sends a request whose answer is JSON (status, get) and reads it as `T`.
pub fn query<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> Result<T, ControlError> {
    let answer = send(socket, request)?;
    serde_json::from_str(&answer)
        .map_err(|e| ControlError::UnexpectedAnswer(format!("{e}: {answer}")))
}

/// What went wrong serving or sending a request.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "connecting to {} (is `stagewall run` running, and are you root?)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent answered `error ...`: what it said.
    #[error("{0}")]
    Refused(String),
    /// The agent turned the caller away: only root may ask it.
    #[error("{NOT_ROOT} ({}); run it as root", socket.display())]
    NotRoot { socket: PathBuf },
    /// The agent took the connection but did not answer in time (it is hung or stopping).
    #[error(
        "the agent at {} did not answer within {} s (is `stagewall run` running?)",
        socket.display(),
        timeout.as_secs()
    )]
    NoAnswer { socket: PathBuf, timeout: Duration },
    #[error("unexpected answer {0:?}")]
    UnexpectedAnswer(String),
    /// The agent's loop no longer takes requests (it is stopping).
    #[error("the agent is stopping")]
    AgentGone,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A request and where its answer goes.
pub type Command = (Request, oneshot::Sender<Result<String, String>>);

/// Binds the socket (mode 0600, in a 0700 directory) and forwards requests from root.
pub fn listen(path: &Path) -> Result<(UnixListener, PathBuf), ControlError> {
    // A directory made here is root's alone; an existing one is left as it is (the
    // socket's own mode keeps others out).
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // A socket left by an agent that was killed.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path.to_path_buf()))
}

/// Serves until accepting a connection fails.
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let commands = commands.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, commands).await {
                log::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(
    stream: tokio::net::UnixStream,
    commands: mpsc::Sender<Command>,
) -> Result<(), ControlError> {
    // The file mode already keeps others out; the peer's credentials say so again.
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read first, also from a caller turned away: closing before it is
    // read could reset the connection under the caller's write, and it would never see
    // why.
    let mut line = String::new();
    tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(read), MAX_REQUEST_BYTES)
        .read_line(&mut line)
        .await?;
    let answer = if uid != 0 {
        Err(NOT_ROOT.to_string())
    } else {
        match Request::parse(&line) {
            Ok(request) => ask(&commands, request).await,
            Err(e) => Err(e),
        }
    };
    let reply = match answer {
        Ok(ok) => format!("ok {ok}\n"),
        Err(e) => format!("error {e}\n"),
    };
    write.write_all(reply.as_bytes()).await?;
    Ok(())
}

/// The agent's answer to `request`; a stopping agent's is said as one.
async fn ask(commands: &mpsc::Sender<Command>, request: Request) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    if commands.send((request, tx)).await.is_err() {
        return Err(ControlError::AgentGone.to_string());
    }
    rx.await
        .unwrap_or_else(|_| Err(ControlError::AgentGone.to_string()))
}

/// The client side, for `stagewall quarantine|release|status|get`: sends one request,
/// returns the agent's answer.
pub fn send(socket: &Path, request: &Request) -> Result<String, ControlError> {
    let mut stream = StdUnixStream::connect(socket).map_err(|source| ControlError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(request.line().as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::NoAnswer {
                socket: socket.to_path_buf(),
                timeout: ANSWER_TIMEOUT,
            },
            _ => ControlError::Io(e),
        })?;
    match answer.trim().split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        // (`error:` from agents before this one.)
        Some(("error" | "error:", NOT_ROOT)) => Err(ControlError::NotRoot {
            socket: socket.to_path_buf(),
        }),
        Some(("error", rest)) => Err(ControlError::Refused(rest.to_string())),
        _ => Err(ControlError::UnexpectedAnswer(answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let w = ObjectName {
            namespace: "ml".into(),
            name: "trainer-0".into(),
        };
        assert_eq!(
            Request::parse("quarantine ml/trainer-0\n"),
            Ok(Request::Quarantine(w.clone()))
        );
        assert_eq!(
            Request::parse("release ml/trainer-0"),
            Ok(Request::Release(w.clone()))
        );
        assert_eq!(
            Request::parse(&Request::Quarantine(w.clone()).line()),
            Ok(Request::Quarantine(w.clone()))
        );
        assert_eq!(Request::parse("status\n"), Ok(Request::Status));
        assert_eq!(
            Request::parse("get endpoints"),
            Ok(Request::Get(GetRequest::Endpoints))
        );
        for request in [
            Request::Status,
            Request::Get(GetRequest::Endpoints),
            Request::Get(GetRequest::Identities),
            Request::Get(GetRequest::Policy(w.clone())),
            Request::Get(GetRequest::Flows(w.clone())),
        ] {
            assert_eq!(Request::parse(&request.line()), Ok(request));
        }
        assert!(Request::parse("get policy").is_err());
        assert!(Request::parse("get secrets ml/x").is_err());
        assert!(Request::parse("quarantine trainer-0").is_err());
        assert!(Request::parse("delete ml/x").is_err());
        assert!(Request::parse("").is_err());
    }

    /// Only a Kubernetes namespace/name is a workload: anything else (empty, a line
    /// break that would make the request two lines, a second '/') is refused, naming
    /// what was expected, so that what is accepted is sent back as the one line it was.
    #[test]
    fn requests_name_a_valid_namespace_and_name() {
        for bad in [
            "quarantine /",
            "quarantine ml/",
            "quarantine /x",
            "quarantine ml/a\nrelease ml/b",
            "quarantine ml/a\rb",
            "quarantine ml/a/b",
            "quarantine ML/a",
            "quarantine ml/a b",
            "release ml/-a",
        ] {
            let e = Request::parse(bad).expect_err(bad);
            assert!(e.contains("expected"), "{bad:?}: {e}");
        }
        let long = format!("quarantine ml/{}", "a".repeat(253));
        assert!(Request::parse(&long).is_ok());
        assert!(Request::parse(&format!("{long}a")).is_err());
        assert_eq!(
            Request::parse("release ml/trainer-0.v2"),
            Ok(Request::Release(ObjectName {
                namespace: "ml".into(),
                name: "trainer-0.v2".into(),
            }))
        );
    }
}
