//! Templates (README "Configuration"): `templates/<name>/<locale>.subject.txt`, `.text.txt`, `.html`,
//! rendered with minijinja in strict mode; `.html` autoescapes customer data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};

use super::settings::MailSettings;
use crate::alert::MailContext;

/// The three parts of every template, by file suffix.
pub const PARTS: [&str; 3] = ["subject.txt", "text.txt", "html"];

/// Locales every template must have (README "Configuration").
pub const REQUIRED_LOCALES: [&str; 2] = ["en", "ar"];

/// One rendered email.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Locale actually used after fallback.
    pub locale: String,
    /// Subject, one line, control characters removed.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// The loaded template set.
pub struct Templates {
    env: Environment<'static>,
    dir: PathBuf,
    locales: BTreeMap<String, BTreeSet<String>>,
    /// `name/locale` pairs with a part missing or broken: reported once by `scan`, not
    /// rendered again by `check`.
    unusable: BTreeSet<String>,
    settings: MailSettings,
}

/// Removes characters that could break a header line (CR, LF and other controls) or
/// reorder what a mail client shows (bidi embeddings, overrides, isolates and marks).
pub fn one_line(s: &str) -> String {
    s.chars()
        .filter(|c| !crate::event::is_bidi_control(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Templates {
    /// Loads every template under the configured folder. Problems name the file.
    pub fn load(settings: &MailSettings) -> Result<Templates, Vec<String>> {
        let (t, problems) = Templates::scan(settings);
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems)
        }
    }

    /// Reads every template it can and lists the problems of the others, so that
    /// `check` can go on to render what did load and report everything in one run.
    pub fn scan(settings: &MailSettings) -> (Templates, Vec<String>) {
        let mut t = Templates {
            env: strict_env(),
            dir: settings.templates_dir.clone(),
            locales: BTreeMap::new(),
            unusable: BTreeSet::new(),
            settings: settings.clone(),
        };
        let folders = match template_folders(&t.dir) {
            Ok(f) => f,
            Err(e) => {
                let problem = format!("{}: cannot read the templates folder: {e}", t.dir.display());
                return (t, vec![problem]);
            }
        };
        let mut problems = Vec::new();
        for folder in folders {
            t.add_folder(&folder, &mut problems);
        }
        (t, problems)
    }

    /// Loads one template's folder: every part it can, then which locales lack a part.
    fn add_folder(&mut self, folder: &Path, problems: &mut Vec<String>) {
        let Some(name) = folder
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return;
        };
        let files = match sorted_entries(folder) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{}: {e}", folder.display()));
                return;
            }
        };
        let mut parts: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for file in files {
            if let Some((locale, part)) = self.add_part(&name, &file, problems) {
                parts.entry(locale).or_default().insert(part);
            }
        }
        self.note_missing_parts(&name, folder, &parts, problems);
        self.locales.insert(name, parts.into_keys().collect());
    }

    /// Adds one file as a part; `(locale, part)` when it was read, even if it does not
    /// compile (that locale is then unusable, but its folder is not missing the part).
    fn add_part(
        &mut self,
        name: &str,
        file: &Path,
        problems: &mut Vec<String>,
    ) -> Option<(String, &'static str)> {
        let fname = file.file_name().and_then(|n| n.to_str())?;
        let Some((locale, part)) = PARTS
            .iter()
            .find_map(|p| fname.strip_suffix(&format!(".{p}")).map(|l| (l, *p)))
        else {
            problems.push(format!(
                "{}: not a template part (expected <locale>.subject.txt, <locale>.text.txt or <locale>.html)",
                file.display()
            ));
            return None;
        };
        match std::fs::read_to_string(file) {
            Ok(src) => {
                if let Err(e) = self.env.add_template_owned(format!("{name}/{fname}"), src) {
                    problems.push(format!("{}: {}", file.display(), describe(&e)));
                    self.unusable.insert(format!("{name}/{locale}"));
                }
                Some((locale.to_string(), part))
            }
            Err(e) => {
                problems.push(format!("{}: {e}", file.display()));
                None
            }
        }
    }

    /// A locale without all of [`PARTS`] cannot be rendered: say which are missing, and
    /// keep `check` from rendering it again.
    fn note_missing_parts(
        &mut self,
        name: &str,
        folder: &Path,
        parts: &BTreeMap<String, BTreeSet<&str>>,
        problems: &mut Vec<String>,
    ) {
        for (locale, have) in parts {
            if have.len() < PARTS.len() {
                self.unusable.insert(format!("{name}/{locale}"));
            }
            for part in PARTS.iter().filter(|p| !have.contains(*p)) {
                problems.push(format!(
                    "{}: missing {locale}.{part}",
                    folder.join("").display()
                ));
            }
        }
    }

    /// Template names found.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locales.keys().map(String::as_str)
    }

    /// Locales a template has.
    pub fn locales(&self, name: &str) -> impl Iterator<Item = &str> {
        self.locales
            .get(name)
            .into_iter()
            .flat_map(|s| s.iter().map(String::as_str))
    }

    /// The locale a template is rendered in: `en-GB` → `en` → the default locale.
    pub fn resolve_locale(&self, name: &str, requested: &str) -> Option<String> {
        let have = self.locales.get(name)?;
        let find = |l: &str| have.iter().find(|h| h.eq_ignore_ascii_case(l)).cloned();
        if !requested.is_empty() {
            if let Some(l) = find(requested) {
                return Some(l);
            }
            if let Some(lang) = requested.split(['-', '_']).next() {
                if let Some(l) = find(lang) {
                    return Some(l);
                }
            }
        }
        find(&self.settings.default_locale)
    }

    fn context(&self, m: &MailContext, alert_id: &str) -> Value {
        let unsubscribe_url = self
            .settings
            .unsubscribe_url
            .replace("{alert_id}", alert_id);
        minijinja::context! {
            shop_name => self.settings.shop_name.clone(),
            customer_name => one_line(&m.name),
            days_since_last_purchase => m.days_since_last_purchase,
            purchase_count => m.purchase_count,
            favourite_category => m.favourite_category.clone(),
            offer_code => m.offer_code.clone(),
            unsubscribe_url => unsubscribe_url,
            feedback_url => self.settings.feedback_url.clone(),
            milestone => m.milestone,
            years => m.years,
            ticket_id => m.ticket_id.clone(),
        }
    }

    /// Renders template `name` for a customer.
    pub fn render(&self, name: &str, m: &MailContext, alert_id: &str) -> Result<Rendered, String> {
        let locale = self.resolve_locale(name, &m.locale).ok_or_else(|| {
            format!(
                "template `{name}` has no locale `{}` nor the default `{}` in {}",
                m.locale,
                self.settings.default_locale,
                self.dir.display()
            )
        })?;
        let ctx = self.context(m, alert_id);
        let part = |p: &str| -> Result<String, String> {
            let tname = format!("{name}/{locale}.{p}");
            let t = self
                .env
                .get_template(&tname)
                .map_err(|e| format!("{}: {}", self.dir.join(&tname).display(), describe(&e)))?;
            t.render(&ctx)
                .map_err(|e| format!("{}: {}", self.dir.join(&tname).display(), describe(&e)))
        };
        Ok(Rendered {
            subject: one_line(&part("subject.txt")?),
            text: part("text.txt")?,
            html: part("html")?,
            locale,
        })
    }

    /// Checks that every template the rules use exists in the required locales and that
    /// every template renders in every locale with sample data. One problem per line.
    pub fn check(&self, required: &[&str]) -> Vec<String> {
        let mut problems = Vec::new();
        for name in required {
            let Some(have) = self.locales.get(*name) else {
                problems.push(format!(
                    "{}: template `{name}` used by the config does not exist",
                    self.dir.join(name).display()
                ));
                continue;
            };
            for l in REQUIRED_LOCALES
                .iter()
                .copied()
                .chain([self.settings.default_locale.as_str()])
            {
                if !have.contains(l) {
                    problems.push(format!(
                        "{}: template `{name}` lacks locale `{l}`",
                        self.dir.join(name).display()
                    ));
                }
            }
        }
        for (name, locales) in &self.locales {
            for locale in locales {
                if self.unusable.contains(&format!("{name}/{locale}")) {
                    continue;
                }
                for sample in samples(locale) {
                    if let Err(e) = self.render(name, &sample, "0123456789abcdef0123456789abcdef") {
                        problems.push(e);
                        break;
                    }
                }
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }
}

/// The sample customer of `preview` (every value filled) in `locale`.
pub fn sample_context(locale: &str) -> MailContext {
    let [_, full] = samples(locale);
    full
}

/// Sample customers for validation: every optional value empty, and every one filled.
fn samples(locale: &str) -> [MailContext; 2] {
    [
        MailContext {
            locale: locale.to_string(),
            email: "sample@example.com".into(),
            ..MailContext::default()
        },
        MailContext {
            email: "sample@example.com".into(),
            name: "Sample <Customer> & Co".into(),
            locale: locale.to_string(),
            days_since_last_purchase: 75,
            purchase_count: 10,
            favourite_category: "books".into(),
            offer_code: "SAMPLE10".into(),
            milestone: 10,
            years: 2,
            ticket_id: "T-1".into(),
            timezone: "Asia/Riyadh".into(),
        },
    ]
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// Strict, so a misspelled variable fails `check` instead of rendering empty.
fn strict_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(false);
    env
}

/// The entries of a folder in name order, so problems come out the same every run.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The template folders under `dir`. Dot entries are not templates: a Kubernetes
/// ConfigMap mount holds `..data` and `..<timestamp>` folders next to the projected ones.
fn template_folders(dir: &Path) -> std::io::Result<impl Iterator<Item = PathBuf>> {
    let visible = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
    };
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(move |p| p.is_dir() && visible(p)))
}
