//! The control socket's wire format: each message is a 4-byte big-endian length followed by
//! that many bytes of JSON (a serde `Request` or `Response`). A connection starts with a
//! `Hello` each way carrying [`PROTOCOL_VERSION`]; a mismatch is refused with a message telling
//! the operator to restart the daemon (an upgraded binary talking to an old daemon).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape: 2 added Scale/Restart/Stop, Deploy.restart,
/// Deployed.url and Status.domain/router_port; 3 added RunStart/RunAttach/OneOff.
pub const PROTOCOL_VERSION: u32 = 3;
/// Messages are small; anything bigger is a bug or garbage on the socket.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Hello {
        protocol: u32,
        version: String,
    },
    Status,
    /// Start release `version` of `app`, wait for its web dynos to boot, then stop the old ones.
    Deploy {
        app: String,
        version: i64,
        /// False for `config:set --no-restart`: the running dynos take the new release's
        /// label now and its environment at their next restart.
        restart: bool,
    },
    /// Make the app's dynos match its formation and current release.
    Converge {
        app: String,
    },
    /// The formation of these types changed: their stopped dynos may run again and their
    /// crash backoff starts over; then converge.
    Scale {
        app: String,
        types: Vec<String>,
    },
    /// Replace the targeted dynos (a type, a dyno name, or all of the app's): new ones start,
    /// web ones must boot, then the old ones stop. Answers when done.
    Restart {
        app: String,
        target: Option<String>,
    },
    /// Stop the targeted dynos (of one app, or of every app when `app` is None) and keep them
    /// down until restarted or scaled. Answers when they are all down.
    Stop {
        app: Option<String>,
        target: Option<String>,
    },
    /// A one-off dyno (`slipway run`) is about to start: record it (`run.N`, listed by `ps`,
    /// stoppable by `ps:stop`) and give it a name and a `PORT`.
    RunStart {
        app: String,
        command: String,
    },
    /// The one-off dyno `dyno` runs: `pid` (its process group) under the `run` command
    /// `shim_pid`, which the daemon watches as it watches a shim.
    RunAttach {
        dyno: i64,
        pid: i32,
        pid_start: u64,
        shim_pid: i32,
        shim_start: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        protocol: u32,
        version: String,
    },
    Status {
        pid: u32,
        version: String,
        dynos: usize,
        domain: String,
        router_port: u16,
    },
    /// `url` is where the router serves the app (what the push prints).
    Deployed {
        version: i64,
        web: Vec<WebDyno>,
        url: String,
    },
    /// The one-off dyno a `RunStart` recorded.
    OneOff {
        dyno: i64,
        name: String,
        port: u16,
    },
    Done,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebDyno {
    pub name: String,
    pub port: u16,
}

pub fn hello() -> Request {
    Request::Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").to_string() }
}

pub fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message too large"));
    }
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame exceeds the size limit"));
    }
    Ok(len)
}

/// Blocking write of one frame (CLI side).
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> io::Result<()> {
    w.write_all(&encode(message)?)?;
    w.flush()
}

/// Blocking read of one frame (CLI side).
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<T> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    r.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Deploy { app: "hello".into(), version: 3, restart: true }).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert!(matches!(back, Request::Deploy { version: 3, .. }));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(frame_len(header).is_err());
    }
}
