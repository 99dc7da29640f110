//! Email: templates, message building, and the transports that hand messages over.

pub mod mailer;
pub mod message;
pub mod quiet_hours;
pub mod sender;
pub mod settings;
pub mod smtp;
pub mod template;
pub mod transport;

/// What became of an email, as the `emails` metric's `outcome` label counts it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EmailOutcome {
    /// Accepted by the relay.
    Sent,
    /// Written as an `.eml` file.
    Written,
    /// Found already written (handed over again after a crash).
    AlreadyWritten,
    /// Failed for good (unbuildable, refused with 5xx).
    Failed,
    /// Still failing transiently at `smtp.max_retry_age`.
    Expired,
    /// Not sent: the customer cannot be reached any more.
    Suppressed,
    /// Waiting for the end of quiet hours.
    Deferred,
    /// Failed transiently; tried again later.
    Retried,
}

impl EmailOutcome {
    /// The `outcome` label (and, for the file transport, the `sends.jsonl` status).
    pub fn label(self) -> &'static str {
        match self {
            EmailOutcome::Sent => "sent",
            EmailOutcome::Written => "written",
            EmailOutcome::AlreadyWritten => "already_written",
            EmailOutcome::Failed => "failed",
            EmailOutcome::Expired => "expired",
            EmailOutcome::Suppressed => "suppressed",
            EmailOutcome::Deferred => "deferred",
            EmailOutcome::Retried => "retried",
        }
    }
}
