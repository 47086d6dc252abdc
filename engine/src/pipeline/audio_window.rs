//! The rolling audio window: drains the capture ring, converts to the
//! model's rate, and keeps the last `window` samples with the capture
//! time of the newest.
//!
//! All buffers are sized at construction (and when a source reopens at a
//! new rate), so draining allocates nothing per hop.

use std::collections::VecDeque;

use emogate_device::ring::AudioConsumer;
use emogate_media::Nanos;

use emogate_infer::pre::PreError;
use emogate_infer::pre::resample::Resampler;

pub(crate) struct AudioWindow {
    model_rate: u32,
    window: usize,
    consumer: Option<AudioConsumer>,
    resampler: Option<Resampler>,
    samples: VecDeque<f32>,
    scratch: Vec<f32>,
    resampled: Vec<f32>,
    newest_at: Option<Nanos>,
    /// Overruns of rings already replaced (a reopened source gets a new ring).
    past_overruns: u64,
}

impl AudioWindow {
    pub(crate) fn new(model_rate: u32, window: usize) -> Self {
        AudioWindow {
            model_rate,
            window,
            consumer: None,
            resampler: None,
            samples: VecDeque::with_capacity(window),
            scratch: Vec::new(),
            resampled: Vec::new(),
            newest_at: None,
            past_overruns: 0,
        }
    }

    /// A (re)opened source: samples before it are not contiguous with its
    /// own, so the window starts over.
    ///
    /// # Errors
    /// [`PreError`] when no resampler exists for `sample_rate`.
    pub(crate) fn attach(
        &mut self,
        consumer: AudioConsumer,
        sample_rate: u32,
    ) -> Result<(), PreError> {
        if let Some(old) = self.consumer.take() {
            self.past_overruns += old.overruns();
        }
        self.resampler = if sample_rate == self.model_rate {
            None
        } else {
            Some(Resampler::new(sample_rate, self.model_rate)?)
        };
        // A tenth of a second of input per read; more is read in pieces.
        let piece = (sample_rate as usize / 10).max(256);
        self.scratch = vec![0.0; piece];
        let ratio = f64::from(self.model_rate) / f64::from(sample_rate);
        self.resampled = Vec::with_capacity((piece as f64 * ratio).ceil() as usize + 64);
        self.samples.clear();
        self.newest_at = None;
        self.consumer = Some(consumer);
        Ok(())
    }

    /// Moves everything captured so far into the window.
    pub(crate) fn drain(&mut self) {
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        loop {
            // Read the time first: the samples popped below are at least
            // as new as it says.
            let (_, newest) = consumer.progress();
            let n = consumer.pop_into(&mut self.scratch);
            if n == 0 {
                break;
            }
            let input = &self.scratch[..n];
            let fresh: &[f32] = match self.resampler.as_mut() {
                Some(r) => {
                    self.resampled.clear();
                    r.process(input, &mut self.resampled);
                    &self.resampled
                }
                None => input,
            };
            for &v in fresh {
                if self.samples.len() == self.window {
                    self.samples.pop_front();
                }
                self.samples.push_back(v);
            }
            self.newest_at = Some(newest);
        }
    }

    /// Capture time of the newest sample, if any arrived since attach.
    pub(crate) fn newest_at(&self) -> Option<Nanos> {
        self.newest_at
    }

    /// Whether a whole window is available.
    pub(crate) fn is_full(&self) -> bool {
        self.samples.len() == self.window
    }

    /// Copies the window into `out` (cleared first).
    pub(crate) fn copy_into(&self, out: &mut Vec<f32>) {
        out.clear();
        let (a, b) = self.samples.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }

    /// Samples lost to full rings since start.
    pub(crate) fn overruns(&self) -> u64 {
        self.past_overruns + self.consumer.as_ref().map_or(0, |c| c.overruns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emogate_device::ring::audio_ring;

    #[test]
    fn keeps_the_newest_window_with_its_time() {
        let (mut tx, rx) = audio_ring(1000);
        let mut w = AudioWindow::new(100, 50);
        w.attach(rx, 100).unwrap();
        for k in 0..8 {
            let chunk: Vec<f32> = (0..10).map(|i| (k * 10 + i) as f32).collect();
            tx.push(&chunk, (k as u64 + 1) * 100);
        }
        w.drain();
        assert!(w.is_full());
        assert_eq!(w.newest_at(), Some(800));
        let mut out = Vec::new();
        w.copy_into(&mut out);
        assert_eq!(out, (30..80).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn resamples_to_the_model_rate_and_restarts_on_reattach() {
        let (mut tx, rx) = audio_ring(48_000);
        let mut w = AudioWindow::new(16_000, 1600);
        w.attach(rx, 48_000).unwrap();
        tx.push(&vec![0.25; 14_400], 300_000_000);
        w.drain();
        assert!(w.is_full(), "0.3 s at 48 kHz fills 0.1 s at 16 kHz");
        let mut out = Vec::new();
        w.copy_into(&mut out);
        // Past the filter's warm-up a constant stays constant.
        assert!(out[800..].iter().all(|v| (v - 0.25).abs() < 1e-3));
        let (_tx2, rx2) = audio_ring(100);
        w.attach(rx2, 16_000).unwrap();
        assert!(!w.is_full());
        assert_eq!(w.newest_at(), None);
    }
}
