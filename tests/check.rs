//! `churnwatch check` on broken configs: the exact output an operator sees is pinned, so
//! that reshaping the config code cannot silently change, drop or reorder a problem.
//!
//! Each case is a config under `tests/check/` (or none, for the environment cases) and the
//! expected exit code, stdout and stderr in `tests/check/CASE.out`. After a deliberate
//! change of the messages, `CHURNWATCH_BLESS=1 cargo test --test check` rewrites the
//! `.out` files; review their diff like code.

use std::path::Path;
use std::process::Command;

/// One pinned run: its name, the config file given with `--config` and the environment.
struct Case {
    name: &'static str,
    config: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "service_values",
        config: Some("tests/check/service_values.toml"),
        env: &[],
    },
    Case {
        name: "rule_values",
        config: Some("tests/check/rule_values.toml"),
        env: &[],
    },
    Case {
        name: "winback_fixed",
        config: Some("tests/check/winback_fixed.toml"),
        env: &[],
    },
    Case {
        name: "winback_empty",
        config: Some("tests/check/winback_empty.toml"),
        env: &[],
    },
    Case {
        name: "keys",
        config: Some("tests/check/keys.toml"),
        env: &[],
    },
    Case {
        name: "syntax",
        config: Some("tests/check/syntax.toml"),
        env: &[],
    },
    Case {
        name: "missing_template",
        config: Some("tests/check/missing_template.toml"),
        env: &[],
    },
    Case {
        name: "missing_file",
        config: Some("tests/check/absent.toml"),
        env: &[],
    },
    Case {
        name: "env_values",
        config: None,
        env: &[
            ("CHURNWATCH__RISK__DROPOUT", "1.5"),
            ("CHURNWATCH__SMTP__TLS", "ssl"),
            ("CHURNWATCH__DELIVERY__TRANSPORT", "smtp"),
            ("CHURNWATCH__SMTP__USERNAME", "cw"),
        ],
    },
    Case {
        name: "env_keys",
        config: None,
        env: &[
            ("CHURNWATCH__KAFKA__MAX_BATCH", "many"),
            ("CHURNWATCH__RULES__WINBACK__COLOUR", "blue"),
        ],
    },
];

/// What a run printed, in the `.out` layout.
fn run(case: &Case) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    // From an empty folder, so that no config/churnwatch.toml is picked up by default;
    // the case's file is named relative to the repository for stable paths in the text.
    let cwd = tempfile::tempdir().expect("scratch folder");
    c.current_dir(root);
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") {
            c.env_remove(k);
        }
    }
    c.arg("check");
    match case.config {
        Some(path) => {
            c.args(["--config", path]);
        }
        None => {
            c.current_dir(cwd.path());
            c.env(
                "CHURNWATCH__TEMPLATES__DIR",
                Path::new(root).join("templates"),
            );
        }
    }
    c.envs(case.env.iter().copied());
    let out = c.output().expect("churnwatch runs");
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status
            .code()
            .map_or_else(|| "signal".to_string(), |n| n.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_output_is_pinned_for_broken_configs() {
    let bless = std::env::var_os("CHURNWATCH_BLESS").is_some();
    let mut differ = Vec::new();
    for case in CASES {
        let got = run(case);
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/check")
            .join(format!("{}.out", case.name));
        if bless {
            std::fs::write(&file, &got).expect("write .out");
            continue;
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (CHURNWATCH_BLESS=1 writes it)", file.display()));
        if got != want {
            differ.push(format!(
                "== {} ==\n-- expected\n{want}-- got\n{got}",
                case.name
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn every_pinned_case_is_refused() {
    // A pinned case that passed `check` would pin nothing about the problems.
    for case in CASES {
        let got = run(case);
        assert!(
            !got.starts_with("exit: 0\n"),
            "{} passed check:\n{got}",
            case.name
        );
    }
}
