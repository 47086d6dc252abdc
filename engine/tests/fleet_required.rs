//! Under `EMOGATE_REQUIRE_FLEET` (CI), the fleet outputs must be built:
//! their tests (`fleet_mqtt`, `fleet_ros2`) are compiled only with the
//! `mqtt` and `ros2` features, and would otherwise vanish silently.

#[test]
fn fleet_features_are_on_when_required() {
    if std::env::var_os("EMOGATE_REQUIRE_FLEET").is_none() {
        return;
    }
    assert!(
        cfg!(feature = "mqtt") && cfg!(feature = "ros2"),
        "EMOGATE_REQUIRE_FLEET is set but emogate-engine was built without \
         its `mqtt` and `ros2` features (add emogate-engine/mqtt,emogate-engine/ros2 to FEATURES)"
    );
}
