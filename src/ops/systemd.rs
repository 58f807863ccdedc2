//! Readiness for systemd (`Type=notify`): the gateway tells the service
//! manager it is ready once every listener serves, and that it is stopping
//! when shutdown begins. Written here rather than taken from a crate: the
//! protocol is one datagram to the socket `$NOTIFY_SOCKET` names.

use std::io;

/// Sends `state` (e.g. `READY=1`) to systemd; `Ok(false)` when not run by
/// a service manager that asked for it.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's default for services).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// [`notify`], logging a failure with its runbook code.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(code = "CG-OPS-009", %state, error = %e,
            "cannot notify systemd (check the unit's Type=notify and NotifyAccess)");
    }
}
