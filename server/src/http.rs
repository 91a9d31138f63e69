//! The plain HTTP endpoints every tetherd application serves: `GET /healthz` and `GET /metrics` (HEAD too: the
//! engine sends a HEAD's answer without its body).

use tether::HttpResponse;

use crate::metrics;

/// Answers a plain HTTP request. `metrics` renders the exposition, or `None` while the engine is not up yet.
pub fn route(method: &str, target: &str, metrics: impl FnOnce() -> Option<String>) -> HttpResponse {
    // The request target may carry a query (`/metrics?x=1`); routing looks at the path alone.
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let method = if method == "HEAD" { "GET" } else { method };
    match (method, path) {
        ("GET", "/healthz") => HttpResponse::new(200, "OK", "text/plain; charset=utf-8", "ok\n"),
        ("GET", "/metrics") => match metrics() {
            Some(body) => HttpResponse::new(200, "OK", metrics::CONTENT_TYPE, body),
            None => HttpResponse::new(503, "Service Unavailable", "text/plain; charset=utf-8", "starting\n"),
        },
        _ => HttpResponse::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz() {
        let r = route("GET", "/healthz", || None);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        assert!(r.content_type.starts_with("text/plain"));
        assert_eq!(route("HEAD", "/healthz", || None).status, 200, "HEAD as GET");
    }

    #[test]
    fn metrics_path_and_query() {
        let r = route("GET", "/metrics?name=x", || Some("tether_accepted_total 1\n# EOF\n".into()));
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, metrics::CONTENT_TYPE);
        assert_eq!(r.body, b"tether_accepted_total 1\n# EOF\n");
        assert_eq!(route("GET", "/metrics", || None).status, 503);
    }

    #[test]
    fn everything_else_is_not_found() {
        for (method, path) in [("GET", "/"), ("GET", "/healthz/x"), ("POST", "/healthz"), ("GET", "/Metrics")] {
            assert_eq!(route(method, path, || Some(String::new())), HttpResponse::not_found(), "{method} {path}");
        }
    }
}
