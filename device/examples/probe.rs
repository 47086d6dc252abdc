//! Checks capture on real hardware (what CI cannot):
//!
//! ```text
//! cargo run -p emogate-device --example probe                      # list devices
//! cargo run -p emogate-device --example probe -- video v4l:0       # 60 frames
//! cargo run -p emogate-device --example probe -- audio mic:default # 3 s of audio
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use emogate_device::clock::RealClock;
use emogate_device::ring::audio_ring;
use emogate_device::source::ClockHandle;
use emogate_device::spec::{AudioOptions, VideoOptions, open_audio, open_video};
use emogate_media::StopFlag;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clock: ClockHandle = Arc::new(RealClock);
    match args.as_slice() {
        [] => {
            let list = emogate_device::list::list_devices();
            for (kind, devices) in [
                ("cameras", &list.cameras),
                ("microphones", &list.microphones),
            ] {
                println!("{kind}:");
                for d in devices {
                    println!("  {}  ({})", d.spec, d.name);
                    for line in &d.details {
                        println!("      {line}");
                    }
                }
            }
            for n in &list.notes {
                println!("note: {n}");
            }
        }
        [kind, spec] if kind == "video" => {
            let mut source = open_video(spec, &VideoOptions::default())?;
            let mut stream = source.open(Arc::clone(&clock))?;
            let stop = StopFlag::new();
            let start = Instant::now();
            let mut n = 0;
            while n < 60 {
                let Some(f) = stream.next_frame(&stop)? else {
                    break;
                };
                let age_ms = (clock.now().saturating_sub(f.captured_at)) as f64 / 1e6;
                println!(
                    "{}x{} {:?} {} bytes, {age_ms:.1} ms old",
                    f.width,
                    f.height,
                    f.layout,
                    f.data.len()
                );
                n += 1;
            }
            println!("{n} frames in {:.2} s", start.elapsed().as_secs_f64());
        }
        [kind, spec] if kind == "audio" => {
            let mut source = open_audio(spec, &AudioOptions::default())?;
            let (tx, mut rx) = audio_ring(192_000);
            let mut stream = source.open(Arc::clone(&clock), tx)?;
            println!("rate {} Hz", stream.sample_rate());
            let stop = StopFlag::new();
            let raiser = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(3));
                    stop.raise();
                })
            };
            stream.wait(&stop)?;
            let _ = raiser.join();
            let mut buf = vec![0f32; rx.available()];
            let n = rx.pop_into(&mut buf);
            let rms = (buf[..n].iter().map(|v| v * v).sum::<f32>() / n.max(1) as f32).sqrt();
            println!("{n} samples, rms {rms:.4}, overruns {}", rx.overruns());
        }
        _ => eprintln!("usage: probe [video SPEC | audio SPEC]"),
    }
    Ok(())
}
