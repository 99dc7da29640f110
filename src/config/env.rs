//! `CHURNWATCH__SECTION__KEY` environment variables as overrides of the files.

use super::ConfigError;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 3] = [
    "delivery.holdout_rules",
    "kafka.topics",
    "rules.thank_you.milestones",
];

/// Applies `CHURNWATCH__SECTION__KEY=value` variables as overrides. Values stay text
/// (serde converts them where a number or bool is wanted), so a secret like `0012345`
/// is kept verbatim; list keys are split on commas and trimmed.
pub(super) fn apply_env(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("CHURNWATCH__")?;
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            Some((key, v))
        })
        .collect();
    vars.sort();
    for (key, value) in vars {
        let result = if LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            builder.set_override(key.as_str(), items)
        } else {
            builder.set_override(key.as_str(), value)
        };
        builder = result.map_err(|e| ConfigError::Key {
            key: format!("CHURNWATCH__ environment: {key}"),
            message: e.to_string(),
        })?;
    }
    Ok(builder)
}
