//! `churnwatch preview`: one template rendered as a customer would get it — the sample
//! customer, or a real one read from the store — so an operator sees a change to a
//! template before it goes out.

use std::path::Path;
use std::sync::Arc;

use crate::alert::MailContext;
use crate::config::Config;
use crate::mail::template::{sample_context, Rendered, Templates};
use crate::store::StoreError;

/// The customer id the sample stands for (its offer code is computed for this id).
pub const SAMPLE_ID: &str = "sample-customer";

/// What an email to customer `id` would say about them, read from the stores in `dir`;
/// `None` when no store knows them.
pub fn customer_context(
    cfg: &Config,
    dir: &Path,
    id: &str,
) -> Result<Option<MailContext>, StoreError> {
    crate::inspect::first_store(dir, |_, st| {
        Ok(st
            .inspect(Arc::new(cfg.engine.clone()), id)?
            .and_then(|found| found.engine.mail_context(id)))
    })
}

/// Renders `template` for `customer` (the sample when `None`), in `locale` if given,
/// else the customer's (with the usual fallback to the default locale). The offer code
/// is the one the rule sending this template would give this customer.
pub fn render(
    cfg: &Config,
    templates: &Templates,
    template: &str,
    locale: Option<&str>,
    customer: Option<(&str, MailContext)>,
) -> Result<Rendered, String> {
    if templates.locales(template).next().is_none() {
        return Err(format!(
            "no template `{template}` in {} (have: {})",
            cfg.mail.templates_dir.display(),
            templates.names().collect::<Vec<_>>().join(", ")
        ));
    }
    let (id, mut ctx) = customer.unwrap_or_else(|| {
        (
            SAMPLE_ID,
            sample_context(locale.unwrap_or(&cfg.mail.default_locale)),
        )
    });
    if let Some(l) = locale {
        if !templates.locales(template).any(|have| have == l) {
            return Err(format!(
                "template `{template}` has no locale `{l}` (have: {})",
                templates.locales(template).collect::<Vec<_>>().join(", ")
            ));
        }
        ctx.locale = l.to_string();
    }
    if let Some((rule, code)) = cfg.engine.offer_code_for(template) {
        ctx.offer_code = crate::alert::offer_code(&cfg.engine.offer_key, code, id, rule);
    }
    templates.render(template, &ctx, "0123456789abcdef0123456789abcdef")
}
