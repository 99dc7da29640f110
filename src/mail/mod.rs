//! Email: templates, message building, and the transports that hand messages over.

pub mod mailer;
pub mod message;
pub mod template;
pub mod transport;
