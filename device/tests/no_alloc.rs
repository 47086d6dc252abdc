//! The producer side runs inside audio driver callbacks: prove it never
//! touches the allocator, with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use emogate_device::ring::audio_ring;

struct Counting;

thread_local! {
    // Per thread, because the test harness runs tests (and allocates) on
    // several threads at once. Const-initialised without a destructor, so
    // touching it from the allocator never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made by the calling thread so far.
fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn push_never_allocates_even_when_overrunning() {
    let (mut tx, rx) = audio_ring(480);
    let chunk = [0.25f32; 256];
    let before = allocations();
    for i in 0..100 {
        tx.push(&chunk, i);
    }
    let after = allocations();
    assert_eq!(after, before, "the producer allocated");
    assert!(
        rx.overruns() > 0,
        "the test must exercise the full-ring path"
    );
}

/// The exact function cpal's data callback calls, for two formats
/// microphones commonly deliver, including callbacks larger than the
/// scratch buffer (processed in pieces) and a full ring.
#[test]
#[cfg(feature = "mic")]
fn microphone_callback_never_allocates() {
    use std::sync::Arc;
    use std::time::Duration;

    use cpal::{InputCallbackInfo, InputStreamTimestamp, SampleFormat, SizedSample, StreamInstant};
    use emogate_device::clock::RealClock;
    use emogate_device::mic::MicCallback;
    use emogate_device::source::ClockHandle;

    fn data<T: SizedSample>(samples: &mut [T]) -> cpal::Data {
        // SAFETY: pointer and length describe `samples`, of the format's
        // element type, which outlives the `Data` at every use below.
        unsafe { cpal::Data::from_parts(samples.as_mut_ptr().cast(), samples.len(), T::FORMAT) }
    }

    let clock: ClockHandle = Arc::new(RealClock);
    clock.now(); // initialise the process-wide clock outside the measurement
    let callback_at = StreamInstant::new(10, 0);
    let info = InputCallbackInfo::new(InputStreamTimestamp {
        callback: callback_at,
        capture: callback_at
            .checked_sub(Duration::from_millis(5))
            .expect("10 s minus 5 ms"),
    });

    let (tx, rx) = audio_ring(4800);
    let mut mic_i16 = MicCallback::new(SampleFormat::I16, 2, 48_000, 256, tx, Arc::clone(&clock));
    let mut stereo_i16: Vec<i16> = (0..2 * 1000).map(|i| (i * 13) as i16).collect();
    let buf_i16 = data(&mut stereo_i16);

    let (tx, rx_f32) = audio_ring(4800);
    let mut mic_f32 = MicCallback::new(SampleFormat::F32, 2, 48_000, 256, tx, Arc::clone(&clock));
    let mut stereo_f32: Vec<f32> = (0..2 * 1000).map(|i| (i as f32 * 0.001).sin()).collect();
    let buf_f32 = data(&mut stereo_f32);

    let before = allocations();
    for _ in 0..20 {
        mic_i16.on_data(&buf_i16, &info);
        mic_f32.on_data(&buf_f32, &info);
    }
    let after = allocations();
    assert_eq!(after, before, "the microphone callback allocated");
    assert_eq!(mic_i16.health().frames(), 20 * 1000);
    assert!(
        rx.overruns() > 0 && rx_f32.overruns() > 0,
        "the test must exercise the full-ring path"
    );
}
