//! What capture devices this machine has, for `emogate devices`.
//!
//! Listing must work on a robot with nothing plugged in and on a CI box
//! without a sound card, so every backend error becomes a note and an
//! empty list, never a failure.

#[cfg(feature = "mic")]
use cpal::traits::{DeviceTrait, HostTrait};

/// One device and the spec that selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human name (driver's or ALSA's description).
    pub name: String,
    /// What to pass as `--video` / `--audio` (e.g. `v4l:0`, `mic:hw:CARD=C920,DEV=0`).
    pub spec: String,
    /// Formats, sizes, rates, one per line.
    pub details: Vec<String>,
}

/// Everything [`list_devices`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    pub cameras: Vec<DeviceInfo>,
    pub microphones: Vec<DeviceInfo>,
    /// Why a list is empty or short, and sources that cannot be listed.
    pub notes: Vec<String>,
}

/// Lists cameras (V4L2, with the `v4l` feature) and microphones (cpal's
/// default host). Never fails and never panics: a backend that cannot be
/// queried adds a note instead.
pub fn list_devices() -> DeviceList {
    let mut list = DeviceList::default();
    list_microphones(&mut list);
    list_cameras(&mut list);
    if cfg!(feature = "gstreamer") {
        list.notes.push(
            "GStreamer pipelines are not listed: pass any pipeline as gst:PIPELINE \
             (on Jetson CSI: gst:nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! appsink)"
                .into(),
        );
    } else {
        list.notes
            .push("built without the gstreamer feature: gst: sources are unavailable".into());
    }
    list
}

#[cfg(not(feature = "mic"))]
fn list_microphones(list: &mut DeviceList) {
    list.notes
        .push("built without the mic feature: microphones (mic:) are unavailable".into());
}

#[cfg(feature = "mic")]
fn list_microphones(list: &mut DeviceList) {
    // cpal's backends call into C libraries; a panic there must not take
    // the CLI down with it.
    let found = std::panic::catch_unwind(|| {
        let host = cpal::default_host();
        let mut notes = Vec::new();
        let mut mics = Vec::new();
        let devices = match host.input_devices() {
            Ok(d) => d,
            Err(e) => {
                notes.push(format!(
                    "cannot list microphones ({}): {e}",
                    host.id().name()
                ));
                return (mics, notes);
            }
        };
        for device in devices {
            let id = crate::mic::device_id(&device);
            let name = device
                .description()
                .map(|d| d.name().to_string())
                .unwrap_or_else(|_| id.clone());
            let details = match device.supported_input_configs() {
                Ok(configs) => summarize(
                    configs.filter(|c| crate::mic::convertible(c.sample_format())),
                    &device,
                ),
                Err(e) => vec![format!("formats unknown: {e}")],
            };
            mics.push(DeviceInfo {
                name,
                spec: format!("mic:{id}"),
                details,
            });
        }
        if mics.is_empty() {
            notes.push(format!("no microphones found ({})", host.id().name()));
        } else if host.default_input_device().is_none() {
            notes.push("no default input device: name one with mic:NAME".into());
        }
        (mics, notes)
    });
    match found {
        Ok((mics, notes)) => {
            list.microphones = mics;
            list.notes.extend(notes);
        }
        Err(_) => list
            .notes
            .push("listing microphones panicked inside the audio backend".into()),
    }
}

#[cfg(feature = "mic")]
/// A device's input configurations in three or four lines (ALSA plugins
/// report hundreds: every format times every channel count).
fn summarize(
    configs: impl Iterator<Item = cpal::SupportedStreamConfigRange>,
    device: &cpal::Device,
) -> Vec<String> {
    let mut formats: Vec<String> = Vec::new();
    let (mut min_ch, mut max_ch) = (u16::MAX, 0u16);
    let (mut min_rate, mut max_rate) = (u32::MAX, 0u32);
    for c in configs {
        let f = c.sample_format().to_string();
        if !formats.contains(&f) {
            formats.push(f);
        }
        min_ch = min_ch.min(c.channels());
        max_ch = max_ch.max(c.channels());
        min_rate = min_rate.min(c.min_sample_rate());
        max_rate = max_rate.max(c.max_sample_rate());
    }
    if formats.is_empty() {
        return vec!["no PCM formats".into()];
    }
    let range = |lo: u64, hi: u64| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}–{hi}")
        }
    };
    let mut lines = vec![
        format!("formats: {}", formats.join(", ")),
        format!("channels: {}", range(min_ch.into(), max_ch.into())),
        format!("rates: {} Hz", range(min_rate.into(), max_rate.into())),
    ];
    if let Ok(d) = device.default_input_config() {
        lines.push(format!(
            "default: {} {} ch {} Hz",
            d.sample_format(),
            d.channels(),
            d.sample_rate()
        ));
    }
    lines
}

#[cfg(feature = "v4l")]
fn list_cameras(list: &mut DeviceList) {
    use crate::camera::{capture_modes, video_nodes};
    let nodes = video_nodes();
    if nodes.is_empty() {
        list.notes
            .push("no cameras found (no V4L2 devices in /sys/class/video4linux)".into());
        return;
    }
    for node in nodes {
        let path = node.path();
        let found = std::panic::catch_unwind(|| -> Result<Option<Vec<String>>, String> {
            let dev = v4l::Device::new(node.index).map_err(|e| format!("cannot open: {e}"))?;
            let caps = dev.query_caps().map_err(|e| format!("cannot query: {e}"))?;
            if !caps
                .capabilities
                .contains(v4l::capability::Flags::VIDEO_CAPTURE)
            {
                return Ok(None);
            }
            let modes = capture_modes(&dev, (640, 480, 30.0))
                .map_err(|e| format!("cannot list formats: {e}"))?;
            Ok(Some(
                modes
                    .iter()
                    .map(|m| format!("{:?} {}x{} @ {:.0} fps", m.format, m.width, m.height, m.fps))
                    .collect(),
            ))
        });
        match found {
            Ok(Ok(Some(details))) => list.cameras.push(DeviceInfo {
                name: node.name.clone(),
                spec: format!("v4l:{}", node.index),
                details,
            }),
            // Metadata nodes of UVC cameras: not cameras.
            Ok(Ok(None)) => {}
            Ok(Err(e)) => list
                .notes
                .push(format!("{} ({}): {e}", path.display(), node.name)),
            Err(_) => list
                .notes
                .push(format!("{}: querying it panicked", path.display())),
        }
    }
    if list.cameras.is_empty() {
        list.notes.push("no V4L2 capture devices usable".into());
    }
}

#[cfg(not(feature = "v4l"))]
fn list_cameras(list: &mut DeviceList) {
    list.notes
        .push("built without the v4l feature: cameras are not listed".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_never_fails_and_explains_empty_lists() {
        let list = list_devices();
        if list.cameras.is_empty() {
            assert!(
                list.notes
                    .iter()
                    .any(|n| n.contains("camera") || n.contains("V4L2")),
                "{list:?}"
            );
        }
        for d in list.cameras.iter().chain(&list.microphones) {
            assert!(
                crate::spec::parse_video(&d.spec).is_ok()
                    || crate::spec::parse_audio(&d.spec).is_ok(),
                "{d:?}"
            );
        }
        if list.microphones.is_empty() {
            assert!(
                list.notes.iter().any(|n| n.contains("microphone")),
                "{list:?}"
            );
        }
    }
}
