//! The sink thread: delivers every published message to each sink and
//! flushes them. It sits behind a bounded queue (filled with `try_send`),
//! so a slow disk or network costs messages, counted, and never
//! scheduler or inference time.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::event::Message;
use crate::sink::Sink;

/// Delivers messages to every sink; flushes every second and at the end.
pub(super) fn run_sinks(mut sinks: Vec<Box<dyn Sink>>, rx: Receiver<Message>) {
    let mut last_flush = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(message) => {
                for sink in &mut sinks {
                    if let Err(e) = sink.publish(&message) {
                        tracing::warn!(sink = sink.name(), error = %e, "sink failed");
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            flush_all(&mut sinks);
            last_flush = Instant::now();
        }
    }
    flush_all(&mut sinks);
}

fn flush_all(sinks: &mut [Box<dyn Sink>]) {
    for sink in sinks {
        if let Err(e) = sink.flush() {
            tracing::warn!(sink = sink.name(), error = %e, "flushing failed");
        }
    }
}
