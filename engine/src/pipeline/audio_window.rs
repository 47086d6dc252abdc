//! The rolling audio window: drains the capture ring, converts to the
//! model's rate, and keeps the last `window` samples with the capture
//! time of the newest.
//!
//! The window ends on a multiple of `align` samples counted from the
//! source's start (the log-mel's hop length; 1 for waveform models), as
//! streaming feature extractors keep their frames on one grid: then every
//! window's STFT frames are frames of the window before, shifted, and the
//! featurizer transforms only the new ones (`emogate_infer::pre::mel_stream`).
//! The price is that the newest `< align` samples wait for the next
//! window: under 10 ms at a 160-sample hop and 16 kHz, and the window's
//! capture time is that of its newest sample, so latency figures include
//! it.
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
    align: usize,
    /// Samples pushed since the source was attached.
    pushed: u64,
    /// Where this attachment's sample 0 sits in the run's sample count
    /// ([`AudioWindow::end_sample`]): past the previous attachment's end by
    /// more than a window, so a reopened source never looks contiguous.
    base: u64,
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
    pub(crate) fn new(model_rate: u32, window: usize, align: usize) -> Self {
        let align = align.max(1);
        AudioWindow {
            model_rate,
            window,
            align,
            pushed: 0,
            base: 0,
            consumer: None,
            resampler: None,
            samples: VecDeque::with_capacity(window + align - 1),
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
        if self.pushed > 0 {
            self.base += self.pushed + (self.window + self.align) as u64;
        }
        self.pushed = 0;
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
            let kept = self.window + self.align - 1;
            for &v in fresh {
                if self.samples.len() == kept {
                    self.samples.pop_front();
                }
                self.samples.push_back(v);
            }
            self.pushed += fresh.len() as u64;
            self.newest_at = Some(newest);
        }
    }

    /// The newest samples after the last multiple of `align`: they wait
    /// for the next window.
    fn waiting(&self) -> usize {
        (self.pushed % self.align as u64) as usize
    }

    /// Capture time of the window's newest sample, if any arrived since
    /// attach.
    pub(crate) fn newest_at(&self) -> Option<Nanos> {
        let wait = self.waiting() as u64 * 1_000_000_000 / u64::from(self.model_rate.max(1));
        self.newest_at.map(|at| at.saturating_sub(wait))
    }

    /// One past the window's last sample, counted over the run at the
    /// model's rate: consecutive windows of one source continue each other;
    /// a reopened source jumps ahead (a gap), so stream state (the voice
    /// activity detector's) starts over.
    pub(crate) fn end_sample(&self) -> u64 {
        self.base + self.pushed - self.waiting() as u64
    }

    /// Whether a whole window is available.
    pub(crate) fn is_full(&self) -> bool {
        self.samples.len() >= self.window + self.waiting()
    }

    /// Copies the window into `out` (cleared first): the `window` samples
    /// that end on the last multiple of `align`.
    pub(crate) fn copy_into(&self, out: &mut Vec<f32>) {
        out.clear();
        let end = self.samples.len() - self.waiting().min(self.samples.len());
        let start = end.saturating_sub(self.window);
        out.extend(self.samples.range(start..end));
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
        let mut w = AudioWindow::new(100, 50, 1);
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
        let mut w = AudioWindow::new(16_000, 1600, 1);
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

    #[test]
    fn aligned_windows_end_on_the_grid_and_say_when() {
        // Rate 100 Hz, window 50, grid of 10: chunks of 7 samples, so the
        // newest sample is rarely on the grid.
        let (mut tx, rx) = audio_ring(1000);
        let mut w = AudioWindow::new(100, 50, 10);
        w.attach(rx, 100).unwrap();
        let mut next = 0;
        let mut seen = 0;
        for k in 0..20u64 {
            let chunk: Vec<f32> = (next..next + 7).map(|v| v as f32).collect();
            next += 7;
            // Each chunk's newest sample is captured at its index × 10 ms.
            tx.push(&chunk, (next as u64 - 1) * 10_000_000);
            w.drain();
            if !w.is_full() {
                assert!(
                    next < 60,
                    "full once 50 samples end on the grid (chunk {k})"
                );
                continue;
            }
            let mut out = Vec::new();
            w.copy_into(&mut out);
            let end = next - next % 10;
            assert_eq!(out, (end - 50..end).map(|v| v as f32).collect::<Vec<_>>());
            // The window's newest sample is end − 1, captured then.
            assert_eq!(w.newest_at(), Some((end as u64 - 1) * 10_000_000));
            seen += 1;
        }
        assert!(seen > 10);
    }
}
