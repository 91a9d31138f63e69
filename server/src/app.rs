//! The default application: echo every message back, answer `GET /healthz` and `GET /metrics`.

use tether::{ConnId, Ctx, Handler, HttpRequest, HttpResponse, Message};

use tetherd::http::route;
use tetherd::metrics;

/// One per shard; the engine reaches it through the `Ctx` of each callback (the handle for `/metrics`).
pub struct App;

impl Handler for App {
    type Conn = ();
    type Notice = ();

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        // A refusal (the send-queue policy) is counted and acted on by the engine.
        let _ = ctx.send(conn, message);
    }

    fn on_http(&mut self, ctx: &mut Ctx<'_, Self>, request: &HttpRequest) -> HttpResponse {
        let handle = ctx.handle();
        let response =
            route(&request.method, &request.path, || Some(metrics::render(&handle.stats(), &handle.shard_stats())));
        tracing::debug!(shard = ctx.shard(), method = %request.method, path = %request.path, status = response.status, "http");
        response
    }
}
