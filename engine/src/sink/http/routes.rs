//! Routing: which answer a parsed request gets (see the routes in the
//! [module docs](super)).

use std::io;
use std::net::TcpStream;
use std::sync::Arc;

use super::server::{Request, respond};
use super::{DASHBOARD_HTML, Shared, sse, status};

/// Nothing but this page's own inline code and its own origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers `request`: `GET`/`HEAD` of `/`, `/index.html`, `/status` and
/// `/events`; `405` for other methods, `404` for other paths.
pub(super) fn route(
    stream: &mut TcpStream,
    request: &Request,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let text = "text/plain; charset=utf-8";
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
