//! The `mqtt` sink (being built: see issue 5).

#[derive(Debug, thiserror::Error)]
#[error("the mqtt sink is not built yet")]
pub struct MqttSinkError;
