//! Peer echo server: tokio + tokio-tungstenite, written the way its README and examples do it.
//!
//! `echo-tungstenite --listen 127.0.0.1:9002 --threads 1`. Echoes text and binary messages; the library
//! answers pings itself (the Pong is queued on the next read and flushed with the next write or flush).

use futures_util::{SinkExt, StreamExt};
use tether_benches::args::ServerArgs;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn serve(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(message) = ws.next().await {
        match message? {
            message @ (Message::Text(_) | Message::Binary(_)) => ws.send(message).await?,
            // Let the queued Pong out even when no data message follows.
            Message::Ping(_) => ws.flush().await?,
            // tungstenite queued the Close reply; the next read sends it and then ends the stream.
            Message::Close(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = ServerArgs::from_env();
    args.runtime()?.block_on(async {
        let listener = TcpListener::bind(args.listen).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(error) = serve(stream).await {
                    if !matches!(
                        error,
                        tokio_tungstenite::tungstenite::Error::ConnectionClosed
                            | tokio_tungstenite::tungstenite::Error::Protocol(_)
                    ) {
                        eprintln!("connection error: {error}");
                    }
                }
            });
        }
    })
}
