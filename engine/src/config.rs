//! `emogate run --config FILE`: the run's settings as TOML, so a board's
//! service unit names one file. Command-line flags override it.
//!
//! ```toml
//! model = "models/emogate-ref.onnx"   # relative paths: from the config's folder
//! backend = "tract"
//! threads = 2
//! hop_ms = 250
//! stale_ms = 1000
//! missing = "zero"
//! active = "affect-gate"
//! outputs = ["jsonl:/var/lib/emogate/events.jsonl", "http:127.0.0.1:8080"]
//! [adapters]
//! affect-gate = "models/adapters/affect-gate"
//! [video]
//! source = "v4l:0"
//! [audio]
//! source = "mic:default"
//! ```
//!
//! Unknown keys are errors (a misspelt `hop_ms` would otherwise be
//! silently ignored on a board nobody is watching).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors reading a config file (the file, and the key or line at fault),
/// or a setting out of range (the flag or key, and the range).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// `setting` names where the value came from: a flag (`--hop-ms`), a
    /// key and its file (`hop_ms in /etc/emogate/config.toml`), or the
    /// model's manifest.
    #[error("{setting} {value:?}: expected {expected}")]
    Range {
        setting: String,
        value: f64,
        expected: String,
    },
}

/// The longest hop `emogate run` accepts, in ms (one minute): the audio
/// ring holds the window plus four hops of capture.
pub const MAX_HOP_MS: f64 = 60_000.0;

/// The longest staleness limit `emogate run` accepts, in ms (one hour).
pub const MAX_STALE_MS: f64 = 3_600_000.0;

/// `ms` milliseconds as a [`Duration`]: above 0 and at most `max_ms`.
///
/// Refuses NaN, infinities, zero, negative values, values over `max_ms`
/// and values too small to be a whole nanosecond, all of which would
/// otherwise panic in `Duration::from_secs_f64` or stall the pipeline.
///
/// # Errors
/// [`ConfigError::Range`] naming `setting`, the value and the range.
pub fn millis(setting: &str, ms: f64, max_ms: f64) -> Result<Duration, ConfigError> {
    let out_of_range = || ConfigError::Range {
        setting: setting.to_string(),
        value: ms,
        expected: format!("a number of milliseconds above 0 and at most {max_ms}"),
    };
    // `!(a && b)` rather than `<= 0.0 || > max`: NaN fails every comparison.
    if !(ms > 0.0 && ms <= max_ms) {
        return Err(out_of_range());
    }
    match Duration::try_from_secs_f64(ms / 1e3) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(out_of_range()),
    }
}

/// A capture source in the config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `v4l:INDEX|NAME`, `gst:PIPELINE`, `mic:NAME`, or a file.
    pub source: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
}

/// `[mqtt]`: settings of `mqtt://` and `mqtts://` outputs that do not
/// belong on a command line (the password above all).
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker password. Prefer `password_env` where the config file is
    /// readable by others.
    pub password: Option<String>,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM file of the CA(s) that signed the broker's certificate
    /// (`mqtts://`); without it, the system's roots are not consulted and
    /// `mqtts://` is refused.
    pub ca_file: Option<PathBuf>,
    /// QoS of event messages: 0 (at most once) or 1 (at least once,
    /// the default).
    pub qos: Option<u8>,
    /// This device's name in topics; the hostname by default.
    pub device_id: Option<String>,
    /// Messages kept while the broker is unreachable; the oldest are
    /// dropped (and counted) beyond it. Default 10000.
    pub buffer: Option<usize>,
    /// Seconds between keep-alive pings (default 30): how soon the broker
    /// notices a dead link and publishes the last will.
    pub keep_alive_s: Option<u64>,
}

/// Shows whether a password is set, never the password.
impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("ca_file", &self.ca_file)
            .field("qos", &self.qos)
            .field("device_id", &self.device_id)
            .field("buffer", &self.buffer)
            .field("keep_alive_s", &self.keep_alive_s)
            .finish()
    }
}

/// `[ros2]`: settings of `ros2:` outputs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ros2Config {
    /// IP addresses of the interfaces DDS uses (discovery, multicast,
    /// advertised locators), e.g. `["127.0.0.1"]` to stay on the host or
    /// the robot's internal network; all interfaces when absent.
    pub interfaces: Option<Vec<std::net::IpAddr>>,
    /// The ROS 2 node name (default `emogate`).
    pub node_name: Option<String>,
    /// Accept control requests on `/emogate/control` (default false: DDS
    /// without its security plugins lets anyone on the domain publish).
    pub control: Option<bool>,
}

/// Everything `emogate run` can take from a file. Every field is
/// optional: flags fill or override.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub backend: Option<String>,
    pub threads: Option<usize>,
    pub ep: Option<Vec<String>>,
    pub ep_strict: Option<bool>,
    pub ort_lib: Option<PathBuf>,
    pub trt_cache: Option<PathBuf>,
    pub hop_ms: Option<f64>,
    pub stale_ms: Option<f64>,
    pub missing: Option<String>,
    pub pace: Option<String>,
    #[serde(rename = "loop")]
    pub looped: Option<bool>,
    pub active: Option<String>,
    #[serde(default)]
    pub adapters: BTreeMap<String, PathBuf>,
    pub half_life: Option<f64>,
    pub confidence_floor: Option<f32>,
    pub frame_id: Option<String>,
    pub video: Option<SourceConfig>,
    pub audio: Option<SourceConfig>,
    pub outputs: Option<Vec<String>>,
    /// `unix:PATH` or `http` (see `--control`).
    pub control: Option<String>,
    pub stall_ms: Option<f64>,
    pub max_consecutive_errors: Option<u32>,
    pub mqtt: Option<MqttConfig>,
    pub ros2: Option<Ros2Config>,
    /// `largest`, `all` or a count (see `--faces`).
    pub faces: Option<String>,
    pub face_detector: Option<PathBuf>,
    pub detect_every: Option<u32>,
    pub track_timeout_ms: Option<f64>,
    /// The voice activity detector, or `off` (see `--vad`).
    pub vad: Option<String>,
    pub require_speech: Option<f32>,
    /// `slots` or `replan` (see `--switch-by`).
    pub switch_by: Option<String>,
}

impl RunConfig {
    /// Reads `path`, resolving relative paths against its folder.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the offending key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: RunConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            self.model.as_mut(),
            self.manifest.as_mut(),
            self.ort_lib.as_mut(),
            self.trt_cache.as_mut(),
            self.face_detector.as_mut(),
            self.mqtt.as_mut().and_then(|m| m.ca_file.as_mut()),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for p in self.adapters.values_mut() {
            fix(p);
        }
        for s in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            if !emogate_device::spec::is_live(&s.source) && Path::new(&s.source).is_relative() {
                s.source = base.join(&s.source).display().to_string();
            }
        }
        if let Some(vad) = self.vad.as_mut()
            && vad != "off"
            && Path::new(vad.as_str()).is_relative()
        {
            *vad = base.join(vad.as_str()).display().to_string();
        }
        if let Some(control) = self.control.as_mut()
            && let Some(rest) = control.strip_prefix("unix:")
            && Path::new(rest).is_relative()
        {
            *control = format!("unix:{}", base.join(rest).display());
        }
        if let Some(outputs) = self.outputs.as_mut() {
            for o in outputs {
                if let Some(rest) = o.strip_prefix("jsonl:")
                    && rest != "-"
                    && Path::new(rest).is_relative()
                {
                    *o = format!("jsonl:{}", base.join(rest).display());
                }
            }
        }
    }
}

impl RunConfig {
    /// The keys whose values differ from `other`'s, except `adapters` and
    /// `active`, which a running engine can apply: what a reload must
    /// report as needing a restart.
    pub fn changed_keys(&self, other: &RunConfig) -> Vec<&'static str> {
        // Destructured so that a new field cannot be forgotten here.
        let RunConfig {
            model,
            manifest,
            backend,
            threads,
            ep,
            ep_strict,
            ort_lib,
            trt_cache,
            hop_ms,
            stale_ms,
            missing,
            pace,
            looped,
            active: _,
            adapters: _,
            half_life,
            confidence_floor,
            frame_id,
            video,
            audio,
            outputs,
            control,
            stall_ms,
            max_consecutive_errors,
            mqtt,
            ros2,
            faces,
            face_detector,
            detect_every,
            track_timeout_ms,
            vad,
            require_speech,
            switch_by,
        } = self;
        let mut keys = Vec::new();
        let mut check = |key: &'static str, same: bool| {
            if !same {
                keys.push(key);
            }
        };
        check("model", *model == other.model);
        check("manifest", *manifest == other.manifest);
        check("backend", *backend == other.backend);
        check("threads", *threads == other.threads);
        check("ep", *ep == other.ep);
        check("ep_strict", *ep_strict == other.ep_strict);
        check("ort_lib", *ort_lib == other.ort_lib);
        check("trt_cache", *trt_cache == other.trt_cache);
        check("hop_ms", *hop_ms == other.hop_ms);
        check("stale_ms", *stale_ms == other.stale_ms);
        check("missing", *missing == other.missing);
        check("pace", *pace == other.pace);
        check("loop", *looped == other.looped);
        check("half_life", *half_life == other.half_life);
        check(
            "confidence_floor",
            *confidence_floor == other.confidence_floor,
        );
        check("frame_id", *frame_id == other.frame_id);
        check("video", *video == other.video);
        check("audio", *audio == other.audio);
        check("outputs", *outputs == other.outputs);
        check("control", *control == other.control);
        check("stall_ms", *stall_ms == other.stall_ms);
        check(
            "max_consecutive_errors",
            *max_consecutive_errors == other.max_consecutive_errors,
        );
        check("mqtt", *mqtt == other.mqtt);
        check("ros2", *ros2 == other.ros2);
        check("faces", *faces == other.faces);
        check("face_detector", *face_detector == other.face_detector);
        check("detect_every", *detect_every == other.detect_every);
        check(
            "track_timeout_ms",
            *track_timeout_ms == other.track_timeout_ms,
        );
        check("vad", *vad == other.vad);
        check("require_speech", *require_speech == other.require_speech);
        check("switch_by", *switch_by == other.switch_by);
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_what_needs_a_restart_and_skips_adapters() {
        let a = RunConfig {
            hop_ms: Some(250.0),
            active: Some("affect-gate".into()),
            ..RunConfig::default()
        };
        let mut b = a.clone();
        b.adapters.insert("x".into(), "/x".into());
        b.active = None;
        assert!(a.changed_keys(&b).is_empty());
        b.hop_ms = Some(100.0);
        b.outputs = Some(vec!["jsonl:-".into()]);
        b.looped = Some(true);
        assert_eq!(a.changed_keys(&b), ["hop_ms", "loop", "outputs"]);
    }

    #[test]
    fn millis_takes_the_range_and_names_the_setting_outside_it() {
        assert_eq!(
            millis("--hop-ms", 250.0, MAX_HOP_MS).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            millis("--hop-ms", MAX_HOP_MS, MAX_HOP_MS).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            millis("--hop-ms", 0.001, MAX_HOP_MS).unwrap(),
            Duration::from_micros(1)
        );
        for (v, shown) in [
            (1e300, "1e300"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-5.0, "-5.0"),
            (0.0, "0.0"),
            (60_000.5, "60000.5"),
            (1e-9, "1e-9"),
        ] {
            let e = millis("hop_ms in config.toml", v, MAX_HOP_MS)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "hop_ms in config.toml {shown}: expected a number of milliseconds \
                     above 0 and at most 60000"
                )
            );
        }
    }

    #[test]
    fn reads_the_deploy_example_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            r#"
model = "models/emogate-ref.onnx"
backend = "tract"
threads = 2
hop_ms = 250
missing = "skip"
outputs = ["jsonl:events.jsonl", "jsonl:-", "http:127.0.0.1:8080"]
[adapters]
affect-gate = "models/adapters/affect-gate"
[video]
source = "v4l:0"
width = 640
[audio]
source = "sample/voice.wav"
"#,
        )
        .unwrap();
        let c = RunConfig::load(&path).unwrap();
        assert_eq!(c.model.unwrap(), dir.path().join("models/emogate-ref.onnx"));
        assert_eq!(
            c.adapters["affect-gate"],
            dir.path().join("models/adapters/affect-gate")
        );
        assert_eq!(c.video.as_ref().unwrap().source, "v4l:0");
        assert_eq!(c.video.unwrap().width, Some(640));
        assert_eq!(
            c.audio.unwrap().source,
            dir.path().join("sample/voice.wav").display().to_string()
        );
        let outputs = c.outputs.unwrap();
        assert_eq!(
            outputs[0],
            format!("jsonl:{}", dir.path().join("events.jsonl").display())
        );
        assert_eq!(outputs[1], "jsonl:-");
        assert_eq!(c.missing.as_deref(), Some("skip"));
    }

    #[test]
    fn reads_mqtt_and_ros2_tables_and_never_shows_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(
            &path,
            "[mqtt]\npassword = \"hunter2\"\nca_file = \"ca.pem\"\nqos = 0\n\
             [ros2]\ninterfaces = [\"127.0.0.1\"]\ncontrol = true\n",
        )
        .unwrap();
        let c = RunConfig::load(&path).unwrap();
        let mqtt = c.mqtt.as_ref().unwrap();
        assert_eq!(mqtt.ca_file.as_ref().unwrap(), &dir.path().join("ca.pem"));
        assert_eq!(mqtt.qos, Some(0));
        assert!(!format!("{c:?}").contains("hunter2"));
        let ros2 = c.ros2.unwrap();
        assert_eq!(
            ros2.interfaces.unwrap(),
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(ros2.control, Some(true));
        std::fs::write(&path, "[mqtt]\npasword = \"x\"\n").unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("fleet.toml") && e.contains("pasword"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "hop_msec = 250\n").unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("hop_msec"), "{e}");
        std::fs::write(&path, "threads = \"two\"\n").unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("threads"), "{e}");
        let e = RunConfig::load(&dir.path().join("none.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.toml"), "{e}");
    }
}
