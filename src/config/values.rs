//! Value types of the serde layer that more than one section uses.

use serde::Deserialize;

/// A duration for the service's own timing (sub-second allowed: `"500ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait(pub std::time::Duration);

impl<'de> Deserialize<'de> for Wait {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Wait).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"500ms\" or \"30s\": {e}"
            ))
        })
    }
}

/// A librdkafka property value as written in TOML or the environment.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ClientValue {
    /// A nested table: its keys are joined to the parent's with `.`.
    Table(std::collections::BTreeMap<String, ClientValue>),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}
