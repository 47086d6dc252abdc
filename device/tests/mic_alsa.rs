//! The real cpal microphone path against ALSA's `null` PCM, which exists
//! without a sound card and captures zeros as fast as it can.
//!
//! These tests need ALSA (libasound2 with its `null` plugin, present on
//! every Debian/Ubuntu/JetPack install). On a machine without it, set
//! `EMOGATE_NO_ALSA=1` to skip them explicitly; otherwise they fail and
//! say why, so CI can never pass them silently.
#![cfg(feature = "mic")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emogate_device::clock::{RealClock, VirtualClock};
use emogate_device::mic::MicSource;
use emogate_device::ring::audio_ring;
use emogate_device::source::{AudioSource, CaptureError, ClockHandle};
use emogate_device::supervise::{Backoff, SourceReport, spawn_audio};
use emogate_media::StopFlag;

/// One test at a time on the device: ALSA plugins are not all reentrant.
static DEVICE: Mutex<()> = Mutex::new(());

fn skip() -> bool {
    if std::env::var_os("EMOGATE_NO_ALSA").is_some_and(|v| v == "1") {
        eprintln!("EMOGATE_NO_ALSA=1: skipping the ALSA microphone test");
        return true;
    }
    false
}

fn hint() -> &'static str {
    "ALSA's `null` PCM must be available (libasound2); on a machine without ALSA set EMOGATE_NO_ALSA=1 to skip"
}

#[test]
fn null_pcm_delivers_zeros_and_counts_overruns_when_not_drained() {
    if skip() {
        return;
    }
    let _one = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let clock: ClockHandle = Arc::new(RealClock);
    let (tx, mut rx) = audio_ring(48_000);
    let mut source = MicSource::new("null");
    let mut stream = match source.open(Arc::clone(&clock), tx) {
        Ok(s) => s,
        Err(e) => panic!("opening mic:null failed: {e}. {}", hint()),
    };
    let rate = stream.sample_rate();
    assert_eq!(
        source.sample_rate_hint(),
        Some(rate),
        "the hint remembers the opened rate"
    );
    assert!((8_000..=192_000).contains(&rate), "rate {rate}");

    // Drain for 0.5 s: zeros arrive, with non-decreasing stamps no later
    // than now.
    let start = Instant::now();
    let mut buf = vec![1f32; 4096];
    let mut received = 0usize;
    let mut last_stamp = 0;
    while start.elapsed() < Duration::from_millis(500) {
        let n = rx.pop_into(&mut buf);
        assert!(buf[..n].iter().all(|v| *v == 0.0), "null captures silence");
        received += n;
        let (_, stamp) = rx.progress();
        assert!(
            stamp >= last_stamp,
            "stamps went back: {last_stamp} → {stamp}"
        );
        assert!(stamp <= clock.now());
        last_stamp = stamp;
        std::thread::sleep(Duration::from_millis(2));
    }
    // `null` runs at least at real-time pace (in fact flat out); a quarter
    // of real time leaves room for a loaded CI machine.
    assert!(
        received as f64 >= 0.25 * 0.5 * f64::from(rate),
        "only {received} samples in 0.5 s at {rate} Hz"
    );

    // Stop draining: the ring fills and the callback counts what it drops.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        rx.overruns() > 0,
        "an undrained 48000-sample ring must overrun (received {received})"
    );

    // `wait` returns promptly once stop is raised from another thread.
    let stop = StopFlag::new();
    let raiser = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.raise();
            Instant::now()
        })
    };
    let result = stream.wait(&stop);
    let returned = Instant::now();
    let raised = raiser.join().expect("raiser thread");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        returned.duration_since(raised) < Duration::from_millis(200),
        "wait took {:?} to see stop",
        returned.duration_since(raised)
    );
}

#[test]
fn unknown_name_lists_the_available_inputs() {
    if skip() {
        return;
    }
    let _one = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, _rx) = audio_ring(1024);
    let err = MicSource::new("no-such-microphone-xyz")
        .open(Arc::new(RealClock), tx)
        .err()
        .expect("no device has that name");
    let msg = err.to_string();
    assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
    assert!(msg.contains("mic:no-such-microphone-xyz"), "{msg}");
    assert!(
        msg.contains("null"),
        "the list names the null PCM: {msg}. {}",
        hint()
    );
}

#[test]
fn default_either_opens_or_says_what_is_available() {
    if skip() {
        return;
    }
    let _one = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, _rx) = audio_ring(1024);
    // A machine with a sound card opens it; one without (CI) must get an
    // error that tells the user which names would work.
    if let Err(err) = MicSource::new("default").open(Arc::new(RealClock), tx) {
        let msg = err.to_string();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            msg.contains("available inputs") && msg.contains("null"),
            "{msg}"
        );
    }
}

#[test]
fn listing_shows_the_null_microphone_with_a_working_spec() {
    if skip() {
        return;
    }
    let _one = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let list = emogate_device::list::list_devices();
    let null = list
        .microphones
        .iter()
        .find(|m| m.spec == "mic:null")
        .unwrap_or_else(|| panic!("mic:null is not listed: {list:?}. {}", hint()));
    assert!(null.details.iter().any(|d| d.contains("Hz")), "{null:?}");
    assert!(emogate_device::spec::parse_audio(&null.spec).is_ok());
}

#[test]
fn a_virtual_clock_is_refused() {
    let (tx, _rx) = audio_ring(1024);
    let err = MicSource::new("null")
        .open(Arc::new(VirtualClock::new()), tx)
        .err()
        .expect("a live device cannot run on virtual time");
    assert!(matches!(err, CaptureError::Config { .. }), "{err:?}");
}

#[test]
fn the_supervisor_opens_the_null_microphone_and_stops() {
    if skip() {
        return;
    }
    let _one = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let (reports_tx, reports) = std::sync::mpsc::channel();
    let stop = StopFlag::new();
    let sup = spawn_audio(
        Box::new(MicSource::new("null")),
        0.5,
        Arc::new(RealClock),
        reports_tx,
        stop.clone(),
        Backoff::default(),
    )
    .expect("spawn");
    match reports.recv_timeout(Duration::from_secs(5)) {
        Ok(SourceReport::AudioOpened {
            name,
            consumer,
            sample_rate,
        }) => {
            assert_eq!(name, "mic:null");
            assert!(sample_rate > 0);
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                consumer.progress().0 > 0,
                "no samples through the supervisor"
            );
        }
        other => panic!("expected AudioOpened, got {other:?}. {}", hint()),
    }
    stop.raise();
    sup.join();
}
