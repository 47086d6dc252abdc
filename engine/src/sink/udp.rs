//! `udp:HOST:PORT`: one JSON datagram per message, fire and forget.
//!
//! UDP suits a robot's local bus: a consumer that is down costs nothing,
//! and each datagram is a whole message (no framing). Sends that fail
//! (nobody listening yields ECONNREFUSED on Linux) are counted, not fatal.

use std::net::UdpSocket;

use super::{Sink, SinkError};
use crate::event::Message;

pub struct UdpSink {
    spec: String,
    socket: UdpSocket,
    failed: u64,
}

impl UdpSink {
    /// # Errors
    /// [`SinkError::Io`] when no socket can be bound or `target` resolved.
    pub fn connect(spec: &str, target: &str) -> Result<Self, SinkError> {
        let bind = if target.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(bind).map_err(|e| SinkError::io(spec, e))?;
        socket.connect(target).map_err(|e| SinkError::io(spec, e))?;
        Ok(UdpSink {
            spec: spec.to_string(),
            socket,
            failed: 0,
        })
    }

    /// Datagrams that could not be sent.
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

impl Sink for UdpSink {
    fn name(&self) -> String {
        self.spec.clone()
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        if self.socket.send(message.to_json().as_bytes()).is_err() {
            self.failed += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
