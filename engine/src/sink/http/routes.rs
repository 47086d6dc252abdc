//! Routing: which answer a parsed request gets (see the routes in the
//! [module docs](super)).

use std::io;
use std::net::TcpStream;
use std::sync::Arc;

use super::server::{BodyError, Request, respond};
use super::{DASHBOARD_HTML, Shared, sse, status};

/// Nothing but this page's own inline code and its own origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers `request`: `GET`/`HEAD` of `/`, `/index.html`, `/status` and
/// `/events`, `POST /control`; `405` for other methods, `404` for other
/// paths.
pub(super) fn route(
    stream: &mut TcpStream,
    request: &Request,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let text = "text/plain; charset=utf-8";
    if request.path == "/control" {
        return control(stream, request, shared);
    }
    let head_only = match request.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return respond(
                stream,
                false,
                "405 Method Not Allowed",
                text,
                &[("Allow", "GET, HEAD")],
                b"method not allowed\n",
            );
        }
    };
    match request.path.as_str() {
        "/" | "/index.html" => respond(
            stream,
            head_only,
            "200 OK",
            "text/html; charset=utf-8",
            &[
                ("Content-Security-Policy", DASHBOARD_CSP),
                ("Referrer-Policy", "no-referrer"),
            ],
            DASHBOARD_HTML.as_bytes(),
        ),
        "/status" => match status::status_json(shared) {
            Ok(body) => respond(
                stream,
                head_only,
                "200 OK",
                "application/json",
                &[],
                body.as_bytes(),
            ),
            Err(body) => respond(
                stream,
                head_only,
                "500 Internal Server Error",
                "application/json",
                &[],
                body.as_bytes(),
            ),
        },
        "/events" => sse::serve(stream, shared, head_only, request.last_event_id.as_deref()),
        _ => respond(
            stream,
            head_only,
            "404 Not Found",
            text,
            &[],
            b"not found\n",
        ),
    }
}

/// `POST /control`: one control request as the body (see
/// [`crate::control`]), its reply as JSON. Every answer, errors included,
/// is a JSON object with `ok`, so `emogate ctl` reads them all alike.
///
/// A browser page from another origin could otherwise drive this route
/// (a "simple" cross-site `POST` needs no preflight): the body must be
/// `application/json`, which a cross-site request can only send after a
/// CORS preflight this server never approves, and a request whose
/// `Origin` is not this server's own is refused.
fn control(stream: &mut TcpStream, request: &Request, shared: &Arc<Shared>) -> io::Result<()> {
    let json = "application/json";
    let error = |stream: &mut TcpStream, status: &str, message: &str, extra: &[(&str, &str)]| {
        let body = serde_json::json!({"ok": false, "error": message}).to_string();
        respond(stream, false, status, json, extra, body.as_bytes())
    };
    let Some(handle) = shared.control.get() else {
        return error(
            stream,
            "404 Not Found",
            "control is off: start `emogate run` with --control http",
            &[],
        );
    };
    if request.method != "POST" {
        return error(
            stream,
            "405 Method Not Allowed",
            "use POST with a JSON request body",
            &[("Allow", "POST")],
        );
    }
    let is_json = request
        .content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return error(
            stream,
            "415 Unsupported Media Type",
            "Content-Type must be application/json",
            &[],
        );
    }
    if let Some(origin) = &request.origin {
        let own = request.host.as_deref().map(|h| format!("http://{h}"));
        if own.as_deref() != Some(origin.as_str()) {
            return error(
                stream,
                "403 Forbidden",
                &format!("requests from origin {origin} are refused"),
                &[],
            );
        }
    }
    let body = match &request.body {
        Some(Ok(body)) => body,
        Some(Err(BodyError::TooLarge)) => {
            let message = format!(
                "request body over {} bytes",
                crate::control::MAX_REQUEST_BYTES
            );
            return error(stream, "413 Content Too Large", &message, &[]);
        }
        Some(Err(BodyError::NoLength)) | None => {
            return error(
                stream,
                "411 Length Required",
                "give the body with a Content-Length",
                &[],
            );
        }
        Some(Err(BodyError::Incomplete)) => {
            return error(
                stream,
                "400 Bad Request",
                "the body ended before its Content-Length",
                &[],
            );
        }
    };
    let reply = handle(body).to_string();
    respond(stream, false, "200 OK", json, &[], reply.as_bytes())
}
