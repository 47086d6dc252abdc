//! The sink thread: delivers every published message to each sink and
//! flushes them. It sits behind a bounded queue (filled with `try_send`),
//! so a slow disk or network costs messages, counted, and never
//! scheduler or inference time.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use emogate_media::StopFlag;

use super::PipelineStatus;
use crate::event::Message;
use crate::sink::Sink;

/// Hands `message` to the sink thread without waiting: the sink thread may
/// lag (a slow disk), and a lost message is counted in `sink_dropped`
/// rather than stalling the scheduler or the next forward pass.
pub(super) fn offer(tx: &SyncSender<Message>, status: &PipelineStatus, message: Message) {
    if let Err(TrySendError::Full(_)) = tx.try_send(message) {
        status.counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Delivers messages to every sink; flushes every second and at the end.
/// Ends when every sender is gone, or when `finish` is raised (then what is
/// queued is still delivered): a stalled inference thread never drops its
/// sender.
pub(super) fn run_sinks(
    mut sinks: Vec<Box<dyn Sink>>,
    rx: Receiver<Message>,
    finish: &StopFlag,
    status: &PipelineStatus,
) {
    let mut last_flush = Instant::now();
    let deliver = |sinks: &mut Vec<Box<dyn Sink>>, message: &Message| {
        let started = Instant::now();
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.publish(message) {
                tracing::warn!(sink = sink.name(), error = %e, "sink failed");
            }
        }
        if matches!(message, Message::Emotion(_)) {
            status.record_sink_write(started.elapsed().as_secs_f64() * 1e3);
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(message) => deliver(&mut sinks, &message),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if finish.is_raised() {
            while let Ok(message) = rx.try_recv() {
                deliver(&mut sinks, &message);
            }
            break;
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
