//! The CLI and build hook's side of the control socket: blocking, one request per connection.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{self, Request, Response, PROTOCOL_VERSION};
use crate::home::Home;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the slipway daemon is not running; start it with: {0}")]
    NotRunning(String),
    /// The socket exists (or its directory does) but this user may not open it: the daemon may
    /// well be running, as someone else.
    #[error("permission denied opening the daemon's control socket {socket}, which belongs to user '{owner}'; run the command as that user: {command}")]
    Permission { socket: String, owner: String, command: String },
    #[error("connecting to the daemon's control socket {socket}: {source}")]
    Connect { socket: String, source: std::io::Error },
    #[error("the daemon speaks protocol {daemon} ({daemon_version}) but this slipway speaks {PROTOCOL_VERSION} ({}); restart the daemon: slipway daemon --stop && slipway daemon", env!("CARGO_PKG_VERSION"))]
    Version { daemon: u32, daemon_version: String },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Daemon(String),
    #[error("unexpected answer from the daemon: {0:?}")]
    Unexpected(Response),
}

/// The command an operator types to start the daemon for this home.
pub fn start_command(home: &Home) -> String {
    format!("slipway --home {} daemon", home.root().display())
}

pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects and shakes hands. `timeout` bounds each read (a deploy waits for boot checks).
    pub fn connect(home: &Home, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(home.socket()).map_err(|err| connect_error(home, err))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut client = Client { stream };
        match client.exchange(&protocol::hello())? {
            Response::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(client),
            Response::Hello { protocol, version } => {
                Err(ClientError::Version { daemon: protocol, daemon_version: version })
            }
            Response::Error { message } => Err(ClientError::Daemon(message)),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    fn exchange(&mut self, request: &Request) -> Result<Response, ClientError> {
        protocol::write_frame(&mut self.stream, request)?;
        Ok(protocol::read_frame(&mut self.stream)?)
    }

    /// Sends a request; a daemon-side `Error` becomes `ClientError::Daemon`.
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        match self.exchange(request)? {
            Response::Error { message } => Err(ClientError::Daemon(message)),
            other => Ok(other),
        }
    }
}

/// No socket or nobody listening is "not running"; a socket this user may not open is a
/// permission problem (the daemon may run as another user), never reported as absent.
fn connect_error(home: &Home, err: std::io::Error) -> ClientError {
    use nix::errno::Errno;
    let socket = home.socket();
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ECONNREFUSED) => ClientError::NotRunning(start_command(home)),
        Some(Errno::EACCES | Errno::EPERM) => {
            let owner = owner_of(&socket);
            let command = crate::home::runuser_command(&owner);
            ClientError::Permission { socket: socket.display().to_string(), owner, command }
        }
        _ => ClientError::Connect { socket: socket.display().to_string(), source: err },
    }
}

/// The user owning `path`, or its nearest ancestor this user can see (the socket itself cannot
/// be examined when its directory is closed to us).
fn owner_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Some(uid) = path.ancestors().find_map(|p| std::fs::metadata(p).ok()).map(|m| m.uid()) else {
        return "unknown".into();
    };
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// One request on a fresh connection.
pub fn call(home: &Home, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    Client::connect(home, timeout)?.request(request)
}

/// Tells the daemon an app's desired state changed. A daemon that is not running is not an
/// error here: the change is in SQLite and applies when it starts; the caller warns.
pub fn notify_converge(home: &Home, app: &str) -> Result<(), ClientError> {
    call(home, &Request::Converge { app: app.to_string() }, Duration::from_secs(30)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::protocol::{read_frame, write_frame};

    #[test]
    fn an_old_daemon_is_refused_with_restart_advice() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::create_dir_all(home.run_dir()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(home.socket()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _hello: Request = read_frame(&mut stream).unwrap();
            write_frame(&mut stream, &Response::Hello { protocol: 0, version: "0.0.1".into() }).unwrap();
        });
        let err = Client::connect(&home, Duration::from_secs(5)).err().unwrap();
        assert!(err.to_string().contains("restart the daemon"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_stale_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::create_dir_all(home.run_dir()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(home.socket()).unwrap()); // file left, no listener
        let err = Client::connect(&home, Duration::from_secs(1)).err().unwrap();
        assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
    }

    #[test]
    fn a_socket_we_may_not_open_is_a_permission_problem_naming_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let err = connect_error(&home, std::io::Error::from_raw_os_error(nix::libc::EACCES));
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        let text = err.to_string();
        assert!(matches!(err, ClientError::Permission { .. }), "{text}");
        assert!(text.contains(&home.socket().display().to_string()), "{text}");
        assert!(text.contains(&format!("user '{me}'")) && !text.contains("not running"), "{text}");
    }

    #[test]
    fn no_daemon_names_the_start_command() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let err = Client::connect(&home, Duration::from_secs(1)).err().unwrap();
        assert!(
            err.to_string().contains(&format!("slipway --home {} daemon", dir.path().display())),
            "{err}"
        );
    }
}
