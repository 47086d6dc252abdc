//! The client side of the control protocol (`emogate ctl`): one request
//! to a running `emogate run`, over its Unix socket or `POST /control` on
//! its `http:` output.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::Command;

/// Where the run listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `--control unix:PATH`.
    Unix(PathBuf),
    /// `--control http` on an `http:` output: `http://HOST:PORT`.
    Http { host: String, port: u16 },
}

/// Errors of one request, naming the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The I/O error is the source (printed after this in an error chain).
    #[error("{endpoint}")]
    Io {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("{endpoint}: {message}")]
    Protocol { endpoint: String, message: String },
    #[error("--url {url}: expected http://HOST:PORT")]
    Url { url: String },
}

impl Endpoint {
    /// Parses `--url http://HOST:PORT[/]`.
    ///
    /// # Errors
    /// [`ClientError::Url`] for anything else (https is not served).
    pub fn http(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url { url: url.into() };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint::Http {
            host: host.to_string(),
            port,
        })
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix:{}", path.display()),
            Endpoint::Http { host, port } => format!("http://{host}:{port}/control"),
        }
    }

    /// Sends `command` and returns the reply. `timeout` bounds each read
    /// and write (a switch on a large model takes seconds).
    ///
    /// # Errors
    /// [`ClientError`] when the run cannot be reached or its answer is not
    /// a JSON reply.
    pub fn send(&self, command: &Command, timeout: Duration) -> Result<Value, ClientError> {
        let endpoint = self.describe();
        let io_err = |source| ClientError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let body = command.to_json().to_string();
        let answer = match self {
            Endpoint::Unix(path) => {
                let mut stream = UnixStream::connect(path).map_err(io_err)?;
                stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
                stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
                stream
                    .write_all(format!("{body}\n").as_bytes())
                    .map_err(io_err)?;
                let mut line = String::new();
                BufReader::new(stream)
                    .take(16 * 1024 * 1024)
                    .read_line(&mut line)
                    .map_err(io_err)?;
                line
            }
            Endpoint::Http { host, port } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(io_err)?
                    .next()
                    .ok_or_else(|| ClientError::Protocol {
                        endpoint: endpoint.clone(),
                        message: "the host has no address".into(),
                    })?;
                let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_err)?;
                stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
                stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
                let request = format!(
                    "POST /control HTTP/1.1\r\nHost: {host}:{port}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).map_err(io_err)?;
                let mut response = Vec::new();
                stream
                    .take(16 * 1024 * 1024)
                    .read_to_end(&mut response)
                    .map_err(io_err)?;
                let text = String::from_utf8_lossy(&response);
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                if body.trim().is_empty() {
                    return Err(ClientError::Protocol {
                        endpoint,
                        message: format!(
                            "no reply body (status: {})",
                            head.lines().next().unwrap_or("none")
                        ),
                    });
                }
                body.to_string()
            }
        };
        serde_json::from_str(answer.trim()).map_err(|e| ClientError::Protocol {
            endpoint,
            message: format!("the reply is not JSON ({e}): {}", answer.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_and_refuses_others() {
        assert_eq!(
            Endpoint::http("http://127.0.0.1:8080").unwrap(),
            Endpoint::Http {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            Endpoint::http("http://[::1]:9/").unwrap(),
            Endpoint::Http {
                host: "::1".into(),
                port: 9
            }
        );
        for bad in ["https://a:1", "http://a", "http://:80", "http://a:x", "a:1"] {
            assert!(Endpoint::http(bad).is_err(), "{bad}");
        }
    }
}
