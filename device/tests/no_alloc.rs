//! The producer side runs inside audio driver callbacks: prove it never
//! touches the allocator, with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use emogate_device::ring::audio_ring;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
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
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for i in 0..100 {
        tx.push(&chunk, i);
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(after, before, "the producer allocated");
    assert!(
        rx.overruns() > 0,
        "the test must exercise the full-ring path"
    );
}
