//! README "Connecting to your cluster", checked against the code: every TOML block of
//! that section
//!
//! - parses as TOML;
//! - loads through churnwatch's own config loader (`config::load_with_env`), so each of
//!   its churnwatch keys is one churnwatch knows, with a valid value (the files its
//!   `*_file` keys name are stood in for by temporary ones);
//! - sets in `[kafka.client]`, `[kafka.consumer]` and `[kafka.producer]` only properties
//!   the vendored librdkafka documents (its `CONFIGURATION.md`, found through
//!   `cargo metadata`), each for a client that uses it and, for an enum, one of its
//!   values;
//! - is accepted by the linked librdkafka itself (`rd_kafka_conf_set` for every
//!   property, which also refuses TLS settings when it was built without OpenSSL).
//!
//! Copies of a block with one deliberate mistake each (a misspelt property, a value
//! out of range, a consumer property given to the producer, a misspelt churnwatch key,
//! broken TOML) must be refused, so the checks can fail. Nothing here uses the network.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

const README_SECTION: &str = "Connecting to your cluster";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of README.md's `##` section `title`, its subsections included.
fn section(readme: &str, title: &str) -> Vec<(usize, String)> {
    let mut lines = readme.lines().enumerate();
    let heading = format!("## {title}");
    assert!(
        lines.any(|(_, l)| l.trim_end() == heading),
        "README.md has no heading `{heading}`"
    );
    lines
        .take_while(|(_, l)| !(l.starts_with("# ") || l.starts_with("## ")))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// The ```toml blocks of `lines`: (README line of the fence, text).
fn toml_blocks(lines: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in lines {
        let fence = line.trim_start().starts_with("```");
        match open.take() {
            Some(block) if fence => blocks.push(block),
            Some((start, mut text)) => {
                text.push_str(line);
                text.push('\n');
                open = Some((start, text));
            }
            None if fence && line.trim() == "```toml" => open = Some((*n, String::new())),
            None => {}
        }
    }
    assert!(open.is_none(), "a ```toml block is not closed");
    blocks
}

/// One librdkafka property as CONFIGURATION.md documents it.
struct Property {
    /// `*` (every client), `C` (consumer) or `P` (producer).
    scope: String,
    /// The accepted values of an enum property, lower case (None: not an enum).
    values: Option<Vec<String>>,
}

/// Every property of the vendored librdkafka, global and topic level (a client's
/// configuration takes both), from the CONFIGURATION.md of the rdkafka-sys source
/// that `cargo metadata` names.
fn librdkafka_properties() -> BTreeMap<String, Property> {
    // Only this platform's packages: offline, cargo cannot resolve the others' (such as
    // Windows-only crates) unless they happen to be downloaded.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", host])
        .current_dir(manifest_dir())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "rdkafka-sys"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("rdkafka-sys is a dependency");
    let doc = Path::new(manifest).with_file_name("librdkafka/CONFIGURATION.md");
    let text = fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let mut props = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || cells[0] == "Property" || cells[0].starts_with("---") {
            continue;
        }
        let values = cells[5].contains("*Type: enum value*").then(|| {
            cells[2]
                .split(',')
                .map(|v| v.trim().to_ascii_lowercase())
                .collect()
        });
        props.insert(
            cells[0].to_string(),
            Property {
                scope: cells[1].to_string(),
                values,
            },
        );
    }
    assert!(
        props.len() > 150 && props.contains_key("security.protocol"),
        "too few properties read from {}: the table format changed?",
        doc.display()
    );
    props
}

/// TOML text as JSON, through the `config` crate churnwatch reads its files with.
fn parse_toml(text: &str) -> Result<Value, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| format!("not TOML: {e}"))
}

/// Every scalar of a JSON tree with its dotted key (librdkafka's property names).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Stand-in contents of a secret file: a token shaped like a JWT for OAUTHBEARER, a
/// random-looking value otherwise.
fn stand_in(key: &str) -> &'static str {
    if key.contains("oauthbearer") {
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjaHVybndhdGNoIiwiZXhwIjo0MTAyNDQ0ODAwfQ.\n"
    } else {
        "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8\n"
    }
}

/// Everything wrong with one block, empty when it passes every check of the module doc.
fn problems(block: &str, props: &BTreeMap<String, Property>) -> Vec<String> {
    let tree = match parse_toml(block) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut wrong = Vec::new();

    // churnwatch's loader, with the files the block names stood in for.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("churnwatch.toml");
    fs::write(&file, block).expect("write block");
    let mut scalars = Vec::new();
    flatten("", &tree, &mut scalars);
    let mut env = Vec::new();
    for (key, value) in &scalars {
        if key.ends_with("_file") && !value.is_empty() && !key.starts_with("kafka.client.") {
            let path = dir.path().join(key.replace('.', "-"));
            fs::write(&path, stand_in(key)).expect("stand-in secret");
            env.push((
                format!(
                    "CHURNWATCH__{}",
                    key.to_ascii_uppercase().replace('.', "__")
                ),
                path.display().to_string(),
            ));
        }
    }
    if let Err(e) = churnwatch::config::load_with_env(Some(&file), env) {
        wrong.push(format!("churnwatch's config loader: {e}"));
    }

    // librdkafka's properties, as documented and as the linked library takes them.
    let mut native = rdkafka::ClientConfig::new();
    for (table, scopes) in [
        ("client", ["*", "*"]),
        ("consumer", ["*", "C"]),
        ("producer", ["*", "P"]),
    ] {
        let mut set = Vec::new();
        flatten("", &tree["kafka"][table], &mut set);
        for (name, value) in set.into_iter().filter(|(n, _)| !n.is_empty()) {
            let Some(p) = props.get(&name) else {
                wrong.push(format!("[kafka.{table}] {name}: not a librdkafka property"));
                continue;
            };
            if !scopes.contains(&p.scope.as_str()) {
                wrong.push(format!(
                    "[kafka.{table}] {name}: a property of {} clients only",
                    if p.scope == "C" {
                        "consumer"
                    } else {
                        "producer"
                    }
                ));
            }
            if let Some(values) = &p.values {
                if !values.contains(&value.to_ascii_lowercase()) {
                    wrong.push(format!(
                        "[kafka.{table}] {name} = {value:?}: not one of {values:?}"
                    ));
                }
            }
            native.set(name, value);
        }
    }
    if let Err(e) = native.create_native_config() {
        wrong.push(format!("the linked librdkafka refuses the properties: {e}"));
    }
    wrong
}

/// The section's TOML blocks, at least one per provider the section covers.
fn readme_blocks() -> Vec<(usize, String)> {
    let readme = fs::read_to_string(manifest_dir().join("README.md")).expect("README.md");
    let blocks = toml_blocks(&section(&readme, README_SECTION));
    assert!(
        blocks.len() >= 6,
        "README \"{README_SECTION}\" has {} TOML blocks; expected Confluent Cloud, MSK \
         (SCRAM and IAM), Aiven, Redpanda and a private CA",
        blocks.len()
    );
    blocks
}

#[test]
fn every_toml_block_of_connecting_to_your_cluster_is_valid() {
    let props = librdkafka_properties();
    let mut failed = Vec::new();
    for (line, block) in readme_blocks() {
        for p in problems(&block, &props) {
            failed.push(format!("README.md:{line}: {p}"));
        }
    }
    assert!(
        failed.is_empty(),
        "README \"{README_SECTION}\":\n  {}",
        failed.join("\n  ")
    );
}

/// What every example shows: an encrypted connection, and any password read from a
/// file rather than written into the config.
#[test]
fn every_example_connects_over_tls_with_its_secrets_in_files() {
    for (line, block) in readme_blocks() {
        let tree = parse_toml(&block).unwrap_or_else(|e| panic!("README.md:{line}: {e}"));
        let client = &tree["kafka"]["client"];
        let protocol = client["security"]["protocol"].as_str().unwrap_or_default();
        assert!(
            ["SSL", "SASL_SSL"].contains(&protocol),
            "README.md:{line}: security.protocol is {protocol:?}, not TLS"
        );
        assert!(
            client["sasl"]["password"].is_null(),
            "README.md:{line}: sasl.password inline; use kafka.sasl_password_file"
        );
        if protocol == "SASL_SSL" {
            let kafka = &tree["kafka"];
            assert!(
                kafka["sasl_password_file"].is_string()
                    || kafka["oauthbearer_token_file"].is_string(),
                "README.md:{line}: SASL without a password or token file"
            );
        }
    }
}

/// Each check catches the mistake it is there for, on copies of the first example.
#[test]
fn a_wrong_property_key_or_value_is_caught() {
    let props = librdkafka_properties();
    let (_, block) = readme_blocks().swap_remove(0);
    assert!(
        block.contains("security.protocol = \"SASL_SSL\"") && block.contains("sasl_password_file"),
        "the first example changed; pick mistakes that fit it:\n{block}"
    );
    assert_eq!(problems(&block, &props), Vec::<String>::new());
    let mistakes = [
        (
            block.replace("security.protocol", "security.protocoll"),
            "security.protocoll: not a librdkafka property",
        ),
        (
            block.replace("\"SASL_SSL\"", "\"SASL_TLS\""),
            "security.protocol = \"SASL_TLS\": not one of",
        ),
        (
            format!("{block}\n[kafka.producer]\ngroup.instance.id = \"a\"\n"),
            "group.instance.id: a property of consumer clients only",
        ),
        (
            block.replace("sasl_password_file", "sasl_pasword_file"),
            "churnwatch's config loader",
        ),
        (block.replace("[kafka.client]", "[kafka.client"), "not TOML"),
    ];
    for (bad, want) in mistakes {
        let found = problems(&bad, &props);
        assert!(
            found.iter().any(|p| p.contains(want)),
            "expected a problem containing {want:?}, got {found:?} for:\n{bad}"
        );
    }
}
