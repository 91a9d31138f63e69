//! The admin endpoint: `POST /admin/reload` re-reads the gateway and tenant files (as SIGHUP does) and
//! answers what changed. Off unless tetherd was given `--admin-key`; the key goes in `X-Admin-Key` or
//! `Authorization: Bearer KEY`.

use tether::{EngineHandle, HttpRequest, HttpResponse};

use super::tenants::TenantTable;

pub const RELOAD_PATH: &str = "/admin/reload";

/// Equal without telling by its timing where the first difference is.
fn same_key(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn given_key(request: &HttpRequest) -> Option<&str> {
    if let Some(k) = request.header("x-admin-key") {
        return Some(k);
    }
    let auth = request.header("authorization")?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Answers `/admin/reload`: 200 with the report when every file loaded, 422 with it when some did not (those
/// keep the config they had).
pub fn reload(table: &TenantTable, handle: &EngineHandle, request: &HttpRequest) -> HttpResponse {
    let Some(key) = &table.admin_key else {
        return HttpResponse::new(
            404,
            "Not Found",
            "text/plain",
            "the admin endpoint is off: start tetherd with --admin-key\n",
        );
    };
    if request.method != "POST" {
        return HttpResponse::new(405, "Method Not Allowed", "text/plain", "POST /admin/reload\n")
            .with_header("Allow", "POST");
    }
    if !given_key(request).is_some_and(|k| same_key(k, key)) {
        return HttpResponse::new(401, "Unauthorized", "text/plain", "Unauthorized\n");
    }
    let report = table.reload(handle);
    let body = report.to_json();
    if report.failed.is_empty() {
        HttpResponse::new(200, "OK", "application/json", body)
    } else {
        HttpResponse::new(422, "Unprocessable Entity", "application/json", body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(same_key("s3cret", "s3cret"));
        assert!(!same_key("s3cre", "s3cret"));
        assert!(!same_key("s3creT", "s3cret"));
        assert!(!same_key("", "s3cret"));
    }
}
