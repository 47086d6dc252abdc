//! `http:ADDR` — being written (SSE `/events`, `/status`, dashboard `/`).

use std::net::SocketAddr;

use super::{Sink, SinkError, StatusHandle};
use crate::event::Message;

/// Serves events over HTTP.
pub struct HttpSink {
    addr: SocketAddr,
    _status: StatusHandle,
}

impl HttpSink {
    /// # Errors
    /// [`SinkError::Io`] when `addr` cannot be bound.
    pub fn bind(addr: SocketAddr, status: StatusHandle) -> Result<Self, SinkError> {
        Ok(HttpSink {
            addr,
            _status: status,
        })
    }
}

impl Sink for HttpSink {
    fn name(&self) -> String {
        format!("http:{}", self.addr)
    }
    fn publish(&mut self, _message: &Message) -> Result<(), SinkError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
