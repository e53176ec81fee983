//! Scopes: proof that a request was authenticated, and for whom.
//!
//! Neither type has a public constructor. They are built in [`crate::auth`] after a credential
//! was verified, so holding one means authentication happened.

use azotte_domain::tenant::{Environment, Mode};
use azotte_domain::{id::TenantId, Principal};

/// An authenticated principal acting inside one tenant environment.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub(crate) tenant_id: TenantId,
    pub(crate) environment: Environment,
    pub(crate) principal: Principal,
}

impl TenantScope {
    /// The tenant acted in.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
    /// The environment acted in.
    pub fn environment(&self) -> Environment {
        self.environment
    }
    /// The environment's mode.
    pub fn mode(&self) -> Mode {
        self.environment.mode()
    }
    /// Who acts.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// An authenticated platform operator, acting on the installation itself.
#[derive(Debug, Clone)]
pub struct PlatformScope {
    pub(crate) principal: Principal,
}

impl PlatformScope {
    /// Who acts.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the principal holds a platform role.
    pub fn has_role(&self, role: &str) -> bool {
        self.principal.roles.iter().any(|r| r == role)
    }
}
