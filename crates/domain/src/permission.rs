//! Permissions and the built-in roles, declared in one place.
//!
//! A permission is a dotted name (`subscription.cancel`). Tenant roles grant tenant permissions;
//! platform roles grant platform permissions and, for acting inside a tenant, a tenant role's
//! worth of tenant permissions.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! permissions {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// Something a principal may be allowed to do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission { $($variant),+ }

        impl Permission {
            /// Every permission.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),+];

            /// The dotted name.
            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name),+ }
            }
        }

        impl FromStr for Permission {
            type Err = UnknownPermission;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($name => Ok(Permission::$variant),)+ _ => Err(UnknownPermission(s.chars().take(80).collect())) }
            }
        }
    };
}

permissions! {
    TenantRead => "tenant.read",
    UserRead => "user.read",
    UserInvite => "user.invite",
    UserManage => "user.manage",
    RoleRead => "role.read",
    RoleManage => "role.manage",
    ApiKeyRead => "api_key.read",
    ApiKeyManage => "api_key.manage",
    AuditRead => "audit.read",
    CatalogRead => "catalog.read",
    CatalogWrite => "catalog.write",
    PspManage => "psp.manage",
    CustomerRead => "customer.read",
    CustomerWrite => "customer.write",
    CustomerErase => "customer.erase",
    SubscriptionRead => "subscription.read",
    SubscriptionWrite => "subscription.write",
    SubscriptionCancel => "subscription.cancel",
    PaymentRead => "payment.read",
    PaymentCreate => "payment.create",
    PaymentRefund => "payment.refund",
    PaymentSafeMode => "payment.safe_mode",
    WebhookManage => "webhook.manage",
    PlatformTenantRead => "platform.tenant.read",
    PlatformTenantWrite => "platform.tenant.write",
    PlatformTenantAccess => "platform.tenant.access",
    PlatformUserManage => "platform.user.manage",
    PlatformKeysManage => "platform.keys.manage",
}

/// A name that is not a permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}`")]
pub struct UnknownPermission(pub String);

impl Permission {
    /// Whether this permission concerns the installation rather than one tenant.
    pub fn is_platform(self) -> bool {
        self.as_str().starts_with("platform.")
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Permission {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str())))
            .into()
    }
}
impl utoipa::ToSchema for Permission {}

/// A set of permissions.
pub type PermissionSet = BTreeSet<Permission>;

use Permission as P;

const READ: &[Permission] = &[
    P::TenantRead,
    P::UserRead,
    P::RoleRead,
    P::ApiKeyRead,
    P::CatalogRead,
    P::CustomerRead,
    P::SubscriptionRead,
    P::PaymentRead,
];

/// The built-in tenant roles.
pub const TENANT_ROLES: &[&str] =
    &["tenant_admin", "operator", "support_agent", "finance", "read_only", "service_account"];

/// The built-in platform roles.
pub const PLATFORM_ROLES: &[&str] = &["platform_admin", "platform_operator", "platform_auditor"];

/// The tenant permissions of a built-in tenant role; `None` if the name is not built in.
pub fn tenant_role_permissions(role: &str) -> Option<PermissionSet> {
    let mut set: PermissionSet = READ.iter().copied().collect();
    let extra: &[Permission] = match role {
        "tenant_admin" => {
            return Some(Permission::ALL.iter().copied().filter(|p| !p.is_platform()).collect())
        }
        "operator" => &[
            P::CatalogWrite,
            P::CustomerWrite,
            P::SubscriptionWrite,
            P::SubscriptionCancel,
            P::WebhookManage,
        ],
        "support_agent" => &[P::CustomerWrite, P::SubscriptionWrite, P::SubscriptionCancel],
        "finance" => &[P::PaymentRefund, P::AuditRead],
        "read_only" => &[],
        "service_account" => &[P::CustomerWrite, P::SubscriptionWrite, P::SubscriptionCancel],
        _ => return None,
    };
    set.extend(extra.iter().copied());
    if role == "read_only" {
        set.remove(&P::ApiKeyRead);
    }
    Some(set)
}

/// What a platform role may do: its platform permissions, and the tenant permissions it holds
/// when it acts inside a tenant (which also takes `platform.tenant.access`).
pub fn platform_role_permissions(role: &str) -> Option<(PermissionSet, PermissionSet)> {
    let (platform, tenant_role): (&[Permission], &str) = match role {
        "platform_admin" => (
            &[
                P::PlatformTenantRead,
                P::PlatformTenantWrite,
                P::PlatformTenantAccess,
                P::PlatformUserManage,
                P::PlatformKeysManage,
            ],
            "tenant_admin",
        ),
        "platform_operator" => (&[P::PlatformTenantRead, P::PlatformTenantAccess], "operator"),
        "platform_auditor" => (&[P::PlatformTenantRead, P::PlatformTenantAccess], "read_only"),
        _ => return None,
    };
    let mut tenant = tenant_role_permissions(tenant_role)?;
    if role == "platform_auditor" {
        tenant.insert(P::AuditRead);
    }
    Some((platform.iter().copied().collect(), tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = BTreeSet::new();
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), *p);
            assert!(seen.insert(p.as_str()), "duplicate {p}");
            assert!(p.as_str().contains('.'));
        }
        assert!("subscription.fly".parse::<Permission>().is_err());
    }

    #[test]
    fn built_in_roles() {
        let admin = tenant_role_permissions("tenant_admin").unwrap();
        assert!(admin.contains(&P::ApiKeyManage) && !admin.iter().any(|p| p.is_platform()));
        for role in TENANT_ROLES {
            let perms = tenant_role_permissions(role).unwrap();
            assert!(perms.is_subset(&admin), "{role} ⊆ tenant_admin");
        }
        let ro = tenant_role_permissions("read_only").unwrap();
        assert!(!ro.contains(&P::CustomerWrite) && !ro.contains(&P::ApiKeyManage));
        assert!(tenant_role_permissions("finance").unwrap().contains(&P::PaymentRefund));
        assert!(!tenant_role_permissions("support_agent").unwrap().contains(&P::PaymentRefund));
        assert!(tenant_role_permissions("nope").is_none());
        for role in PLATFORM_ROLES {
            let (platform, tenant) = platform_role_permissions(role).unwrap();
            assert!(platform.iter().all(|p| p.is_platform()) && tenant.iter().all(|p| !p.is_platform()));
        }
        let (aud, aud_t) = platform_role_permissions("platform_auditor").unwrap();
        assert!(!aud.contains(&P::PlatformTenantWrite) && aud_t.contains(&P::AuditRead));
    }
}
