//! Scopes: proof that a request was authenticated, and for whom.
//!
//! Neither type has a public constructor. They are built in [`crate::auth`] after a credential
//! was verified, so holding one means authentication happened. Authorization is a method on
//! the scope: `scope.require(Permission::…)`.

use azotte_domain::id::{SessionId, TenantId};
use azotte_domain::permission::{Permission, PermissionSet};
use azotte_domain::tenant::{Environment, Mode};
use azotte_domain::Principal;
use chrono::{DateTime, Utc};

/// The credential a request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user's access token, from a session family.
    Session {
        /// The session family (refresh token lineage).
        family_id: SessionId,
        /// Authentication methods used (`pwd`, `otp`).
        amr: Vec<String>,
        /// When MFA was last completed in this session.
        mfa_at: Option<DateTime<Utc>>,
    },
    /// An API key.
    ApiKey {
        /// The key's record id.
        id: String,
        /// Storefronts the key is restricted to; empty means all.
        storefront_ids: Vec<String>,
    },
    /// An invitation token being redeemed.
    Invitation,
    /// Work the platform does itself in a tenant (a scheduled job), named.
    System { job: String },
}

/// A permission the principal lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing permission {0}")]
pub struct Denied(pub Permission);

/// An authenticated principal acting inside one tenant environment.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub(crate) tenant_id: TenantId,
    pub(crate) environment: Environment,
    pub(crate) principal: Principal,
    pub(crate) permissions: PermissionSet,
    pub(crate) credential: Credential,
    /// Set when a platform principal acts inside the tenant.
    pub(crate) platform_access: bool,
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
    /// How the principal authenticated.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
    /// Whether a platform operator acts inside this tenant.
    pub fn is_platform_access(&self) -> bool {
        self.platform_access
    }
    /// Every permission held here.
    pub fn permissions(&self) -> &PermissionSet {
        &self.permissions
    }
    /// Whether the principal holds a permission.
    /// Whether the credential may touch this storefront: API keys can be restricted to some
    /// storefronts; people and unrestricted keys reach all of them.
    pub fn storefront_allowed(&self, storefront_id: &str) -> bool {
        match &self.credential {
            Credential::ApiKey { storefront_ids, .. } if !storefront_ids.is_empty() => {
                storefront_ids.iter().any(|s| s == storefront_id)
            }
            _ => true,
        }
    }

    /// The storefronts an API key is restricted to, or `None` when unrestricted.
    pub fn storefront_restriction(&self) -> Option<&[String]> {
        match &self.credential {
            Credential::ApiKey { storefront_ids, .. } if !storefront_ids.is_empty() => Some(storefront_ids),
            _ => None,
        }
    }

    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// The scope of a system job (`job`) that this request starts in its own tenant
    /// environment: what [`crate::auth::system_scope`] builds, without reading the tenant again
    /// (the request authenticated against it a moment ago).
    pub fn for_job(&self, job: &str) -> TenantScope {
        TenantScope {
            tenant_id: self.tenant_id,
            environment: self.environment,
            principal: Principal {
                kind: azotte_domain::PrincipalKind::System,
                id: job.to_owned(),
                roles: vec![],
            },
            permissions: azotte_domain::permission::tenant_role_permissions("tenant_admin")
                .unwrap_or_default(),
            credential: Credential::System { job: job.to_owned() },
            platform_access: false,
        }
    }
    /// The one place tenant authorization is decided.
    pub fn require(&self, p: Permission) -> Result<(), Denied> {
        if self.can(p) {
            Ok(())
        } else {
            tracing::warn!(permission = p.as_str(), principal = %self.principal, tenant_id = %self.tenant_id, "authorization denied");
            Err(Denied(p))
        }
    }
}

/// An authenticated platform operator (or any user session without a tenant).
#[derive(Debug, Clone)]
pub struct PlatformScope {
    pub(crate) principal: Principal,
    pub(crate) permissions: PermissionSet,
    pub(crate) credential: Credential,
}

impl PlatformScope {
    /// Who acts.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    /// How the principal authenticated.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
    /// The one place platform authorization is decided.
    pub fn require(&self, p: Permission) -> Result<(), Denied> {
        if self.permissions.contains(&p) {
            Ok(())
        } else {
            tracing::warn!(permission = p.as_str(), principal = %self.principal, "authorization denied");
            Err(Denied(p))
        }
    }
}
