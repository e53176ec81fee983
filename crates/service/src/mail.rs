//! Outgoing messages. Until the notification issue lands, the console mailer prints them on
//! stdout — never through the logger, since they carry one-time tokens.

use std::sync::Mutex;

/// A message to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mail {
    /// An invitation into a tenant.
    Invitation { to: String, tenant: String, token: String },
    /// An account was locked after repeated failed logins.
    AccountLocked { to: String, until: chrono::DateTime<chrono::Utc> },
}

/// Sends messages.
pub trait Mailer: Send + Sync + std::fmt::Debug {
    /// Sends one message; failures are the mailer's to report.
    fn send(&self, mail: Mail);
}

/// Prints messages on stdout.
#[derive(Debug, Default)]
pub struct ConsoleMailer;

impl Mailer for ConsoleMailer {
    fn send(&self, mail: Mail) {
        match mail {
            Mail::Invitation { to, tenant, token } => println!(
                "[mail] to {to}: you are invited to tenant {tenant}. Accept: POST /v1/auth/invitations/accept \
                 {{\"tenant\":\"{tenant}\",\"token\":\"{token}\",\"password\":\"…\"}}"
            ),
            Mail::AccountLocked { to, until } => {
                println!("[mail] to {to}: your account is locked after repeated failed logins until {until}")
            }
        }
    }
}

/// Keeps messages in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryMailer(Mutex<Vec<Mail>>);

impl MemoryMailer {
    /// Every message sent so far.
    pub fn sent(&self) -> Vec<Mail> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Mailer for MemoryMailer {
    fn send(&self, mail: Mail) {
        if let Ok(mut m) = self.0.lock() {
            m.push(mail);
        }
    }
}
