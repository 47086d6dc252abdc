//! Under `EMOGATE_REQUIRE_FLEET` (CI), the fleet outputs must be built:
//! their tests (`fleet_mqtt`, `fleet_ros2`) are compiled only with the
//! `mqtt` and `ros2` features, and would otherwise vanish silently.

/// The fleet features this build lacks.
fn missing_features() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !cfg!(feature = "mqtt") {
        missing.push("emogate-engine/mqtt");
    }
    if !cfg!(feature = "ros2") {
        missing.push("emogate-engine/ros2");
    }
    missing
}

#[test]
fn fleet_features_are_on_when_required() {
    if std::env::var_os("EMOGATE_REQUIRE_FLEET").is_none() {
        return;
    }
    let missing = missing_features();
    assert!(
        missing.is_empty(),
        "EMOGATE_REQUIRE_FLEET is set but this build lacks {} (add them to FEATURES)",
        missing.join(", ")
    );
}
