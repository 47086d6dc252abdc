//! Choosing a device by a name the user typed.
//!
//! Device names are long and host-specific ("HD Pro Webcam C920",
//! ALSA's `plughw:CARD=C920,DEV=0`), so a user types a fragment. Every
//! backend resolves it the same way: an exact label wins, then an exact
//! label ignoring case, then the first device with a label containing the
//! fragment (ignoring case), in the backend's enumeration order.

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
