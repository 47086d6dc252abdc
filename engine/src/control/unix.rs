//! `--control unix:PATH`: the control protocol on a Unix stream socket,
//! one JSON request per line, one JSON reply per line.
//!
//! Access control is the file system's: the socket is made `0660`, so the
//! owner and the group may connect (systemd's `RuntimeDirectory=` gives it
//! a folder only the service user can enter). One thread per connection
//! (at most [`MAX_CONNECTIONS`]), so a client that connects and sends
//! nothing holds only its own thread, and is closed after
//! [`IDLE_TIMEOUT`]. A line over [`MAX_REQUEST_BYTES`] gets an error reply
//! and the connection is closed (the rest of the line is not read).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Controller, MAX_REQUEST_BYTES};

/// Connections served at once; more get an error line and are closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often blocked threads look at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);

/// Errors opening the control socket, naming its path.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// The I/O error is the source (printed after this in an error chain).
    #[error("--control unix:{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--control unix:{}: {message}", path.display())]
    InUse { path: PathBuf, message: String },
}

struct Shared {
    controller: Arc<Controller>,
    shutdown: AtomicBool,
    connections: AtomicUsize,
}

/// A listening control socket. Dropping it stops listening, closes idle
/// connections and removes the socket file.
pub struct ControlSocket {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens at `path`. A socket file left by a run that is gone is
    /// replaced; a live one, or any other file, is an error.
    ///
    /// # Errors
    /// [`ControlSocketError::InUse`] when another process listens at `path`
    /// or it is not a socket; [`ControlSocketError::Io`] when it cannot be
    /// bound or its permissions set.
    pub fn bind(path: &Path, controller: Arc<Controller>) -> Result<Self, ControlSocketError> {
        let io_err = |source| ControlSocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlSocketError::InUse {
                    path: path.to_path_buf(),
                    message: "the path exists and is not a socket; expected a free path".into(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ControlSocketError::InUse {
                    path: path.to_path_buf(),
                    message: "another process is listening there".into(),
                });
            }
            // Nobody listens: left by a run that ended without cleaning up.
            std::fs::remove_file(path).map_err(io_err)?;
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let shared = Arc::new(Shared {
            controller,
            shutdown: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("control-accept".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(io_err)?
        };
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlSocket {
            path: path.to_path_buf(),
            shared,
            accept: Some(accept),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Releases a connection slot however the connection thread ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = reply(
                        &mut stream,
                        &serde_json::json!({"ok": false, "error": "too many control connections"}),
                    );
                    continue;
                }
                let slot = Slot(Arc::clone(shared));
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &slot.0) {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "control: cannot start a connection thread");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(POLL * 4);
            }
        }
    }
}

fn reply(stream: &mut UnixStream, value: &serde_json::Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

/// What reading one request line gave.
enum Line {
    Request(Vec<u8>),
    TooLong,
    /// The peer closed, went idle too long, or the run is ending.
    Done,
}

/// Serves requests on one connection until the peer closes, idles past
/// [`IDLE_TIMEOUT`], sends an oversized line, or the socket shuts down.
fn serve(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    // The limit bounds what one `fill_buf` can hold, and a line longer
    // than it is refused, so memory per connection stays bounded.
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    loop {
        match read_line(&mut reader, shared)? {
            Line::Request(bytes) => {
                let answer = shared.controller.handle(&bytes);
                reply(&mut writer, &answer)?;
            }
            Line::TooLong => {
                return reply(
                    &mut writer,
                    &serde_json::json!({
                        "ok": false,
                        "error": format!("request line over {MAX_REQUEST_BYTES} bytes; closing"),
                    }),
                );
            }
            Line::Done => return Ok(()),
        }
    }
}

/// Reads up to a newline, at most [`MAX_REQUEST_BYTES`]; blank lines are
/// skipped.
fn read_line<R: Read>(reader: &mut BufReader<R>, shared: &Shared) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut idle_since = Instant::now();
    loop {
        if shared.shutdown.load(Ordering::SeqCst) || idle_since.elapsed() > IDLE_TIMEOUT {
            return Ok(Line::Done);
        }
        let available = match reader.fill_buf() {
            Ok([]) => return Ok(Line::Done),
            Ok(buf) => buf,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        idle_since = Instant::now();
        let (used, complete) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..used]);
        reader.consume(used);
        if line.len() > MAX_REQUEST_BYTES + 1 {
            return Ok(Line::TooLong);
        }
        if complete {
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                continue;
            }
            return Ok(Line::Request(line));
        }
    }
}
