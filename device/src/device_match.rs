//! Choosing a device by what the user typed: a camera by index or by a
//! fragment of its name ([`CameraSelector`]), any device by name ([`pick`]).
//!
//! Device names are long and host-specific ("HD Pro Webcam C920",
//! ALSA's `plughw:CARD=C920,DEV=0`), so a user types a fragment. Every
//! backend resolves it the same way: an exact label wins, then an exact
//! label ignoring case, then the first device with a label containing the
//! fragment (ignoring case), in the backend's enumeration order.

use std::fmt;

/// Which camera a `v4l:` spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSelector {
    /// `/dev/videoN`.
    Index(usize),
    /// A fragment of the driver's name (see [`pick`]).
    Name(String),
}

impl fmt::Display for CameraSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraSelector::Index(i) => write!(f, "{i}"),
            CameraSelector::Name(n) => f.write_str(n),
        }
    }
}

/// Index of the device whose labels (names, ids, descriptions) match
/// `wanted`, if any; see the module docs for the order of preference.
pub fn pick<S: AsRef<str>>(wanted: &str, candidates: &[Vec<S>]) -> Option<usize> {
    let any = |f: &dyn Fn(&str) -> bool| {
        candidates
            .iter()
            .position(|labels| labels.iter().any(|l| f(l.as_ref())))
    };
    let lower = wanted.to_lowercase();
    any(&|l| l == wanted)
        .or_else(|| any(&|l| l.to_lowercase() == lower))
        .or_else(|| any(&|l| l.to_lowercase().contains(&lower)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<Vec<&'static str>> {
        vec![
            vec!["default", "Default ALSA Output"],
            vec!["hw:CARD=C920,DEV=0", "HD Pro Webcam C920"],
            vec!["plughw:CARD=C920,DEV=0", "HD Pro Webcam C920"],
            vec!["null", "Discard all samples"],
            vec!["NULLX", "something"],
        ]
    }

    #[test]
    fn exact_then_case_insensitive_then_first_substring() {
        let d = devices();
        assert_eq!(pick("null", &d), Some(3));
        assert_eq!(pick("nullx", &d), Some(4), "case-insensitive exact");
        assert_eq!(
            pick("NULL", &d),
            Some(3),
            "ignoring case, the first equal label"
        );
        assert_eq!(pick("c920", &d), Some(1), "first substring match");
        assert_eq!(pick("plughw:CARD=C920", &d), Some(2));
        assert_eq!(pick("webcam", &d), Some(1));
        assert_eq!(pick("realsense", &d), None);
    }
}
