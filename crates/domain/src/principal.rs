//! Who is acting.

use std::fmt;

use serde::Serialize;
use utoipa::ToSchema;

/// The kind of principal behind a request or job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A tenant user with a session.
    User,
    /// A machine credential of one tenant environment.
    ApiKey,
    /// An operator of the installation.
    PlatformUser,
    /// The platform itself (workers, schedulers).
    System,
    /// An external billing channel (app stores, partners).
    Channel,
}

impl PrincipalKind {
    /// The kind as it is serialized (`api_key`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "api_key",
            PrincipalKind::PlatformUser => "platform_user",
            PrincipalKind::System => "system",
            PrincipalKind::Channel => "channel",
        }
    }
}

/// An authenticated actor: kind, id and the roles it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Principal {
    /// What kind of actor this is.
    pub kind: PrincipalKind,
    /// The actor's id (user id, key id, `system`).
    pub id: String,
    /// Role names held in the current scope.
    pub roles: Vec<String>,
}

impl Principal {
    /// The platform itself, for work no human started.
    pub fn system() -> Self {
        Self { kind: PrincipalKind::System, id: "system".into(), roles: vec![] }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::PrincipalKind::*;

    #[test]
    fn a_kind_reads_as_it_serializes() {
        for k in [User, ApiKey, PlatformUser, System, Channel] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
