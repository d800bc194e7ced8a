//! systemd's readiness protocol (sd_notify(3)), spoken directly: one datagram of
//! `KEY=VALUE` lines to the socket $NOTIFY_SOCKET names (a path, or an abstract name
//! written with a leading '@'). The unit is `Type=notify`: systemd reports the agent
//! started only after READY=1, which is sent once the first policy is in force. Without
//! $NOTIFY_SOCKET (not started by systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr};

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the service manager, if
/// there is one. A failure is logged, never fatal: enforcement does not depend on it.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send(&socket.to_string_lossy(), state) {
        log::warn!("telling systemd {state:?} through {socket:?}: {e}");
    }
}

/// The service's status line in `systemctl status`.
pub fn status(line: &str) {
    notify(&format!("STATUS={line}"));
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(std::io::Error::other(format!(
            "sent {sent} of {} bytes",
            state.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(server: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let path = std::env::temp_dir().join(format!("stagewall-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1\nSTATUS=policy 1 in force").unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=policy 1 in force");
        std::fs::remove_file(&path).unwrap();

        let name = format!("stagewall-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(receive(&server), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        assert!(send("/nonexistent/stagewall-notify", "READY=1").is_err());
    }
}
