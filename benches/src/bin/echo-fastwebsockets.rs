//! Peer echo server: tokio + hyper 1 + fastwebsockets 0.10, following the crate's `echo_server` example:
//! hyper does the HTTP/1.1 upgrade, `fastwebsockets::upgrade` checks it, `FragmentCollector` reassembles
//! fragmented messages, auto-pong answers pings (on by default, set explicitly here).
//!
//! `echo-fastwebsockets --listen 127.0.0.1:9003 --threads 1`.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tether_benches::args::ServerArgs;
use tokio::net::TcpListener;

async fn echo(upgraded: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = upgraded.await?;
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn upgrade(mut request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgraded) = upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        if let Err(error) = tokio::task::unconstrained(echo(upgraded)).await {
            if !matches!(error, WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF) {
                eprintln!("connection error: {error}");
            }
        }
    });
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let args = ServerArgs::from_env();
    args.runtime()?.block_on(async {
        let listener = TcpListener::bind(args.listen).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = http1::Builder::new().serve_connection(io, service_fn(upgrade)).with_upgrades();
                if let Err(error) = connection.await {
                    eprintln!("http error: {error}");
                }
            });
        }
    })
}
