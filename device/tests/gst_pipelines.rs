//! GStreamer sources against real pipelines built from the base plugins'
//! test sources (`videotestsrc`, `audiotestsrc`; no hardware). Needs
//! `gstreamer1.0-plugins-base` at run time.
#![cfg(feature = "gstreamer")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use emogate_device::clock::{RealClock, VirtualClock};
use emogate_device::gst::{GstAudioSource, GstVideoSource};
use emogate_device::ring::audio_ring;
use emogate_device::source::{AudioSource, CaptureError, ClockHandle, VideoSource};
use emogate_media::Frame;
use emogate_media::PixelLayout;
use emogate_media::StopFlag;

fn clock() -> ClockHandle {
    Arc::new(RealClock)
}

/// Every frame of a finite pipeline, and how it ended.
fn frames(pipeline: &str) -> (Vec<Frame>, Result<(), CaptureError>) {
    let mut stream = GstVideoSource::new(pipeline)
        .open(clock())
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = StopFlag::new();
    let mut out = Vec::new();
    loop {
        match stream.next_frame(&stop) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
        assert!(out.len() < 1000, "a finite pipeline never ended");
    }
}

#[test]
fn solid_color_rgb_frames_arrive_counted_sized_repacked_and_in_order() {
    // Width 5: GStreamer pads RGB rows of 15 bytes to 16.
    let (fs, end) = frames(
        "videotestsrc num-buffers=5 pattern=solid-color foreground-color=0xff204080 \
         ! video/x-raw,format=RGB,width=5,height=3,framerate=100/1 ! appsink",
    );
    end.unwrap();
    assert_eq!(fs.len(), 5);
    for f in &fs {
        assert_eq!((f.width, f.height, f.layout), (5, 3, PixelLayout::Rgb8));
        assert_eq!(f.data.len(), 5 * 3 * 3);
        for px in f.data.chunks_exact(3) {
            assert_eq!(px, [0x20, 0x40, 0x80]);
        }
    }
    for w in fs.windows(2) {
        assert!(w[1].captured_at >= w[0].captured_at, "stamps went back");
    }
}

fn one_frame(caps: &str) -> Frame {
    let pipeline = format!(
        "videotestsrc num-buffers=1 pattern=solid-color foreground-color=0xffffffff ! {caps} ! appsink"
    );
    let (mut fs, end) = frames(&pipeline);
    end.unwrap();
    assert_eq!(fs.len(), 1, "{pipeline}");
    fs.remove(0)
}

#[test]
fn every_accepted_format_arrives_tightly_packed() {
    // Jetson CSI ends in BGRx (nvvidconv): alpha stripped, BGR order kept.
    let f = one_frame("video/x-raw,format=BGRx,width=5,height=3");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Bgr8, 45));
    assert!(f.data.iter().all(|&v| v == 255));
    let f = one_frame("video/x-raw,format=RGBA,width=5,height=3");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Rgb8, 45));
    let f = one_frame("video/x-raw,format=BGR,width=5,height=3");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Bgr8, 45));
    // Gray rows of 5 bytes are padded to 8 by GStreamer.
    let f = one_frame("video/x-raw,format=GRAY8,width=5,height=3");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Gray8, 15));
    // videotestsrc renders white as video-range luma (235).
    assert!(
        f.data.iter().all(|&v| v == f.data[0] && v >= 235),
        "{:?}",
        f.data
    );
    // Odd sizes: chroma planes of ceil(w/2)×ceil(h/2).
    let f = one_frame("video/x-raw,format=I420,width=5,height=3");
    assert_eq!(
        (f.layout, f.data.len()),
        (PixelLayout::Yuv420p, 15 + 2 * 3 * 2)
    );
    assert!(f.data[..15].iter().all(|&v| v == f.data[0]), "uniform luma");
    assert!(f.data[0] > 200, "white luma {}", f.data[0]);
    let f = one_frame("video/x-raw,format=NV12,width=6,height=4");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Nv12, 24 + 12));
    let f = one_frame("video/x-raw,format=YUY2,width=6,height=4");
    assert_eq!((f.layout, f.data.len()), (PixelLayout::Yuyv, 6 * 4 * 2));
    assert_eq!(f.data[0], f.data[2], "both lumas of a pair");
}

#[test]
fn a_pipeline_without_appsink_gets_rgb_appended() {
    let (fs, end) = frames("videotestsrc num-buffers=2 ! video/x-raw,width=8,height=6");
    end.unwrap();
    assert_eq!(fs.len(), 2);
    assert_eq!(
        (fs[0].layout, fs[0].width, fs[0].height),
        (PixelLayout::Rgb8, 8, 6)
    );
    // A lone element is not a pipeline until the tail is appended.
    let (fs, end) = frames("videotestsrc num-buffers=1");
    end.unwrap();
    assert_eq!(fs[0].layout, PixelLayout::Rgb8);
}

#[test]
fn a_bad_pipeline_string_is_a_config_error_naming_it() {
    let err = GstVideoSource::new("videotestsrc ! nosuchelement_xyz ! appsink")
        .open(clock())
        .err()
        .expect("no such element");
    let msg = err.to_string();
    assert!(matches!(err, CaptureError::Config { .. }), "{err:?}");
    assert!(
        msg.starts_with("gst:videotestsrc ! nosuchelement_xyz"),
        "{msg}"
    );
    assert!(msg.contains("nosuchelement_xyz"), "{msg}");
    // The error quotes the pipeline as written, not with a tail appended.
    assert!(!msg.contains("videoconvert"), "{msg}");
}

#[test]
fn a_missing_file_fails_to_open_naming_the_element() {
    let err = GstVideoSource::new("filesrc location=/nonexistent/clip.raw ! appsink")
        .open(clock())
        .err()
        .expect("the file does not exist");
    let msg = err.to_string();
    assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
    assert!(msg.contains("filesrc"), "{msg}");
    assert!(err.is_retryable());
}

#[test]
fn an_error_mid_stream_is_a_stream_error_naming_the_element() {
    let (fs, end) = frames(
        "videotestsrc num-buffers=100 ! video/x-raw,width=4,height=4,framerate=1000/1 \
         ! identity name=breaker error-after=3 ! appsink",
    );
    assert!(fs.len() <= 3, "{} frames", fs.len());
    let err = end.expect_err("identity errors after 3 buffers");
    assert!(matches!(err, CaptureError::Stream { .. }), "{err:?}");
    assert!(err.to_string().contains("breaker"), "{err}");
}

#[test]
fn next_frame_sees_stop_while_a_live_pipeline_is_slow() {
    let mut stream = GstVideoSource::new(
        "videotestsrc is-live=true ! video/x-raw,width=4,height=4,framerate=1/1 ! appsink",
    )
    .open(clock())
    .unwrap();
    let stop = StopFlag::new();
    // The first frame comes at once; the next one would take 1 s.
    stream.next_frame(&stop).unwrap().expect("first frame");
    let raiser = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            stop.raise();
            Instant::now()
        })
    };
    assert!(stream.next_frame(&stop).unwrap().is_none());
    let late = Instant::now().duration_since(raiser.join().unwrap());
    assert!(late < Duration::from_millis(300), "saw stop after {late:?}");
}

#[test]
fn a_virtual_clock_is_refused() {
    let err = GstVideoSource::new("videotestsrc ! appsink")
        .open(Arc::new(VirtualClock::new()))
        .err()
        .unwrap();
    assert!(matches!(err, CaptureError::Config { .. }), "{err:?}");
}

/// Runs an audio pipeline to its end; returns (rate, mono samples).
fn audio(pipeline: &str) -> (u32, Vec<f32>) {
    let (tx, mut rx) = audio_ring(1 << 16);
    let mut source = GstAudioSource::new(pipeline);
    let mut stream = source.open(clock(), tx).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.sample_rate_hint(), Some(stream.sample_rate()));
    stream.wait(&StopFlag::new()).unwrap();
    let mut out = vec![0f32; rx.available()];
    let n = rx.pop_into(&mut out);
    out.truncate(n);
    assert_eq!(rx.overruns(), 0);
    (stream.sample_rate(), out)
}

fn peak(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn audio_s16_stereo_and_f32_mono_become_the_same_mono_signal() {
    let (rate, s16) = audio(
        "audiotestsrc num-buffers=10 samplesperbuffer=160 freq=500 volume=0.5 \
         ! audio/x-raw,format=S16LE,rate=16000,channels=2 ! appsink",
    );
    assert_eq!(rate, 16_000);
    assert_eq!(s16.len(), 1600);
    let (_, f32m) = audio(
        "audiotestsrc num-buffers=10 samplesperbuffer=160 freq=500 volume=0.5 \
         ! audio/x-raw,format=F32LE,rate=16000,channels=1 ! appsink",
    );
    assert_eq!(f32m.len(), 1600);
    assert!((peak(&f32m) - 0.5).abs() < 0.01, "peak {}", peak(&f32m));
    for (a, b) in s16.iter().zip(&f32m) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn an_audio_pipeline_without_appsink_gets_f32_appended() {
    let (rate, v) = audio(
        "audiotestsrc num-buffers=4 samplesperbuffer=441 ! audio/x-raw,rate=44100,channels=3",
    );
    assert_eq!(rate, 44_100);
    assert_eq!(v.len(), 4 * 441);
}

#[test]
fn an_audio_pipeline_error_is_a_stream_error() {
    let (tx, _rx) = audio_ring(1 << 16);
    let mut stream = GstAudioSource::new(
        "audiotestsrc num-buffers=50 samplesperbuffer=16 ! audio/x-raw,rate=16000 \
         ! identity name=breaker error-after=5 ! appsink",
    )
    .open(clock(), tx)
    .unwrap();
    let err = stream.wait(&StopFlag::new()).expect_err("identity errors");
    assert!(matches!(err, CaptureError::Stream { .. }), "{err:?}");
    assert!(err.to_string().contains("breaker"), "{err}");
}
