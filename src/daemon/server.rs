//! The daemon's control socket: accepts connections, checks the version handshake, and hands
//! each request to the supervisor, answering with whatever it replies.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, Request, Response, PROTOCOL_VERSION};
use super::supervisor::Event;

pub async fn serve(listener: UnixListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(stream, events).await {
                        tracing::debug!(%err, "control connection ended");
                    }
                });
            }
            Err(err) => tracing::warn!(%err, "accepting a control connection"),
        }
    }
}

async fn handle(mut stream: UnixStream, events: mpsc::UnboundedSender<Event>) -> io::Result<()> {
    let hello: Request = read_frame(&mut stream).await?;
    let Request::Hello { protocol: client_protocol, .. } = hello else {
        return write_frame(&mut stream, &Response::Error { message: "expected a hello first".into() }).await;
    };
    let ours = Response::Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").into() };
    write_frame(&mut stream, &ours).await?;
    if client_protocol != PROTOCOL_VERSION {
        return Ok(()); // the client reports the mismatch with "restart the daemon"
    }
    loop {
        let request: Request = match read_frame(&mut stream).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if events.send(Event::Request(request, reply_tx)).is_err() {
            return Ok(());
        }
        let response =
            reply_rx.await.unwrap_or(Response::Error { message: "the daemon dropped the request".into() });
        write_frame(&mut stream, &response).await?;
    }
}

async fn read_frame<T: for<'de> serde::Deserialize<'de>>(stream: &mut UnixStream) -> io::Result<T> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let mut body = vec![0u8; protocol::frame_len(header)?];
    stream.read_exact(&mut body).await?;
    protocol::decode(&body)
}

async fn write_frame<T: serde::Serialize>(stream: &mut UnixStream, message: &T) -> io::Result<()> {
    stream.write_all(&protocol::encode(message)?).await?;
    stream.flush().await
}
