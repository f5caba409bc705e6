//! The CLI and build hook's side of the control socket: blocking, one request per connection.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{self, Request, Response, PROTOCOL_VERSION};
use crate::home::Home;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the slipway daemon is not running; start it with: {0}")]
    NotRunning(String),
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
        let stream =
            UnixStream::connect(home.socket()).map_err(|_| ClientError::NotRunning(start_command(home)))?;
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
