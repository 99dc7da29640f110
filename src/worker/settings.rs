//! What a config reload changes ([`Live`]) and what only a restart does ([`Startup`])
//! (docs/design.md §14 Hot reload).
//!
//! The two are separate types so that a read says which it is: the worker's parts take
//! their restart-only values from [`Startup`] when they are built and keep them; every
//! decision reads the live ones from [`Live`], which alone holds the engine settings,
//! the mail settings, the templates and the CRR period.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClockMode, Config, KafkaSettings, MailSettings, StateSettings};
use crate::engine::settings::Settings;
use crate::event::Limits;
use crate::mail::template::Templates;
use crate::metrics::Metrics;
use crate::observe::Reloaded;

/// The settings of the config the worker started with that only a restart changes. It
/// gives no access to what a reload changes: that is [`Live`]'s.
pub(super) struct Startup<'a> {
    cfg: &'a Config,
}

impl<'a> Startup<'a> {
    /// The restart-only view of the config the worker starts with.
    pub(super) fn new(cfg: &'a Config) -> Startup<'a> {
        Startup { cfg }
    }

    /// Where the config was loaded from: a reload reads it again.
    pub(super) fn path(&self) -> Option<&'a Path> {
        self.cfg.path.as_deref()
    }

    /// Where the engines' clock comes from.
    pub(super) fn clock(&self) -> ClockMode {
        self.cfg.clock
    }

    /// How long finishing may take after a stop request or a disk fault.
    pub(super) fn shutdown_grace(&self) -> Duration {
        self.cfg.shutdown_grace
    }

    /// The Kafka settings: topics, batch and buffer bounds, idle time.
    pub(super) fn kafka(&self) -> &'a KafkaSettings {
        &self.cfg.kafka
    }

    /// The store's folder and checkpoint interval.
    pub(super) fn state(&self) -> &'a StateSettings {
        &self.cfg.state
    }

    /// The input limits: read only at start (docs/design.md §14 Hot reload).
    pub(super) fn limits(&self) -> &'a Limits {
        &self.cfg.limits
    }

    /// Emails the SMTP sender may hold before the rest wait in the store.
    pub(super) fn smtp_queue_limit(&self) -> usize {
        self.cfg.smtp.queue_limit
    }

    /// The keys whose change in `new` waits for a restart.
    pub(super) fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        new.restart_only_changes(self.cfg)
    }
}

/// What a config reload changes while running: thresholds and guards (the engines'
/// settings), templates and mail settings, the CRR period.
pub(super) struct Live<'a> {
    /// The live part of the config in force.
    cfg: crate::config::Live,
    /// None until a reload: `started_with` is used.
    templates: Option<Templates>,
    started_with: &'a Templates,
}

impl<'a> Live<'a> {
    /// The live part of the config the worker starts with.
    pub(super) fn new(cfg: &Config, templates: &'a Templates) -> Live<'a> {
        Live {
            cfg: cfg.live(),
            templates: None,
            started_with: templates,
        }
    }

    /// The engines' settings in force.
    pub(super) fn engine(&self) -> &Arc<Settings> {
        &self.cfg.engine
    }

    /// The mail settings emails are rendered with.
    pub(super) fn mail(&self) -> &MailSettings {
        &self.cfg.mail
    }

    /// The templates emails are rendered from.
    pub(super) fn templates(&self) -> &Templates {
        self.templates.as_ref().unwrap_or(self.started_with)
    }

    /// The CRR period, whole days.
    pub(super) fn crr_days(&self) -> u16 {
        self.cfg.crr_days
    }

    /// Reads the config file and templates again and swaps in what may change live,
    /// returning the new engine settings for every task; a config or template that does
    /// not validate is refused and the running one stays (None).
    pub(super) fn reload(
        &mut self,
        startup: &Startup<'_>,
        metrics: &Metrics,
    ) -> Option<Arc<Settings>> {
        let refuse = |why: String| {
            Reloaded::Refused { problems: &why }.emit(metrics);
            None
        };
        let new = match crate::config::load(startup.path()) {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string()),
        };
        let templates = match Templates::load(&new.mail) {
            Ok(t) => t,
            Err(problems) => return refuse(problems.join("; ")),
        };
        let problems = templates.check(&new.engine.template_names());
        if !problems.is_empty() {
            return refuse(problems.join("; "));
        }
        let fixed = startup.restart_only_changes(&new);
        self.cfg = new.live();
        self.templates = Some(templates);
        Reloaded::Applied {
            restart_only: &fixed,
        }
        .emit(metrics);
        Some(self.cfg.engine.clone())
    }
}
