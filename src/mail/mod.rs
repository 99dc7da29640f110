//! Email: templates, message building, and the transports that hand messages over.

pub mod mailer;
pub mod message;
pub mod quiet_hours;
pub mod sender;
pub mod settings;
pub mod smtp;
pub mod template;
pub mod transport;
