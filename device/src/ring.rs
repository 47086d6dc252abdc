//! A lock-free single-producer / single-consumer ring of `f32` samples.
//!
//! Audio drivers call their callback on a real-time thread: an allocation
//! or a contended lock there causes glitches (ALSA xruns). So the ring is
//! allocated once, samples are stored as `AtomicU32` bit patterns (no
//! `unsafe`), and [`AudioProducer::push`] only does atomic loads and stores.
//! When the consumer falls behind, the newest samples are dropped and
//! counted in [`AudioConsumer::overruns`]; the consumer keeps its position,
//! so what it reads is always a contiguous stretch of the input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use emogate_media::Nanos;

struct Shared {
    slots: Box<[AtomicU32]>,
    /// Total samples ever written (producer-owned).
    head: AtomicU64,
    /// Total samples ever read (consumer-owned).
    tail: AtomicU64,
    overruns: AtomicU64,
    /// Capture time of the newest written sample.
    newest_at: AtomicU64,
}

/// The callback side of the ring.
pub struct AudioProducer {
    shared: Arc<Shared>,
}

/// The engine side of the ring.
pub struct AudioConsumer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AudioConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioConsumer")
            .field("capacity", &self.shared.slots.len())
            .field("available", &self.available())
            .field("overruns", &self.overruns())
            .finish()
    }
}

/// Makes a ring holding up to `capacity` samples.
///
/// # Panics
/// If `capacity` is 0.
pub fn audio_ring(capacity: usize) -> (AudioProducer, AudioConsumer) {
    assert!(
        capacity > 0,
        "an audio ring needs room for at least one sample"
    );
    let shared = Arc::new(Shared {
        slots: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
        head: AtomicU64::new(0),
        tail: AtomicU64::new(0),
        overruns: AtomicU64::new(0),
        newest_at: AtomicU64::new(0),
    });
    (
        AudioProducer {
            shared: Arc::clone(&shared),
        },
        AudioConsumer { shared },
    )
}

impl AudioProducer {
    /// Appends as many of `samples` as fit and returns how many; the rest
    /// are *not* counted as overruns. For producers that can wait and try
    /// again (file replay on a virtual clock), never for a device callback.
    pub fn push_available(&mut self, samples: &[f32], captured_at: Nanos) -> usize {
        self.store(samples, captured_at)
    }

    /// Appends samples captured ending at `captured_at`. Never allocates,
    /// locks or blocks. Returns how many were stored; the rest were dropped
    /// and counted as overruns.
    pub fn push(&mut self, samples: &[f32], captured_at: Nanos) -> usize {
        let n = self.store(samples, captured_at);
        let dropped = samples.len() - n;
        if dropped > 0 {
            self.shared
                .overruns
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        n
    }

    fn store(&mut self, samples: &[f32], captured_at: Nanos) -> usize {
        let s = &*self.shared;
        let cap = s.slots.len() as u64;
        let head = s.head.load(Ordering::Relaxed);
        let tail = s.tail.load(Ordering::Acquire);
        let free = cap - (head - tail);
        let n = (samples.len() as u64).min(free) as usize;
        for (i, v) in samples[..n].iter().enumerate() {
            s.slots[((head + i as u64) % cap) as usize].store(v.to_bits(), Ordering::Relaxed);
        }
        s.newest_at.store(captured_at, Ordering::Relaxed);
        // Release publishes the slot stores above to the consumer.
        s.head.store(head + n as u64, Ordering::Release);
        n
    }
}

impl AudioConsumer {
    /// Moves up to `out.len()` samples into `out`; returns how many.
    pub fn pop_into(&mut self, out: &mut [f32]) -> usize {
        let s = &*self.shared;
        let cap = s.slots.len() as u64;
        let tail = s.tail.load(Ordering::Relaxed);
        let head = s.head.load(Ordering::Acquire);
        let n = ((head - tail) as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o =
                f32::from_bits(s.slots[((tail + i as u64) % cap) as usize].load(Ordering::Relaxed));
        }
        s.tail.store(tail + n as u64, Ordering::Release);
        n
    }

    /// Samples waiting to be read.
    pub fn available(&self) -> usize {
        let s = &*self.shared;
        (s.head.load(Ordering::Acquire) - s.tail.load(Ordering::Relaxed)) as usize
    }

    /// Samples dropped because the ring was full.
    pub fn overruns(&self) -> u64 {
        self.shared.overruns.load(Ordering::Relaxed)
    }

    /// Total samples ever accepted by the ring, and the capture time of the
    /// newest. The two are read separately, so during a concurrent push the
    /// time may belong to a chunk one callback newer than the count.
    pub fn progress(&self) -> (u64, Nanos) {
        let s = &*self.shared;
        (
            s.head.load(Ordering::Acquire),
            s.newest_at.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_wraparound() {
        let (mut tx, mut rx) = audio_ring(5);
        let mut out = [0f32; 5];
        let mut next = 0f32;
        let mut expect = 0f32;
        for _ in 0..20 {
            let chunk = [next, next + 1.0, next + 2.0];
            assert_eq!(tx.push(&chunk, 0), 3);
            next += 3.0;
            let n = rx.pop_into(&mut out);
            for v in &out[..n] {
                assert_eq!(*v, expect);
                expect += 1.0;
            }
        }
        assert_eq!(rx.overruns(), 0);
    }

    #[test]
    fn drops_newest_and_counts_when_full() {
        let (mut tx, mut rx) = audio_ring(4);
        assert_eq!(tx.push(&[1.0, 2.0, 3.0], 10), 3);
        assert_eq!(tx.push(&[4.0, 5.0, 6.0], 20), 1);
        assert_eq!(rx.overruns(), 2);
        assert_eq!(rx.progress(), (4, 20));
        let mut out = [0f32; 8];
        assert_eq!(rx.pop_into(&mut out), 4);
        assert_eq!(&out[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(rx.available(), 0);
    }

    #[test]
    fn concurrent_producer_and_consumer_see_a_contiguous_stream() {
        let (mut tx, mut rx) = audio_ring(1024);
        let total = 200_000u32;
        let producer = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < total {
                let chunk: Vec<f32> = (i..(i + 64).min(total)).map(|v| v as f32).collect();
                let stored = tx.push(&chunk, i as u64);
                i += stored as u32;
                if stored < chunk.len() {
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0u32;
        let mut buf = [0f32; 256];
        while expect < total {
            let n = rx.pop_into(&mut buf);
            for v in &buf[..n] {
                assert_eq!(*v as u32, expect);
                expect += 1;
            }
        }
        producer.join().unwrap();
    }
}
