//! The catalog: `/v1/storefronts`, `/v1/entitlements`, `/v1/bundles`, `/v1/prices` and a
//! storefront's showcase `/v1/storefronts/{id}/catalog`.

mod bundles;
mod entitlements;
mod prices;
mod psp_accounts;
mod storefronts;

use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use azotte_domain::pagination::Limit;

use crate::error::ApiError;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(storefronts::router())
        .merge(entitlements::router())
        .merge(bundles::router())
        .merge(prices::router())
        .merge(psp_accounts::router())
}

const PROBLEM: &str = "application/problem+json";

/// Cursor pagination parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// Return items after this id (the previous page's `next_cursor`).
    starting_after: Option<String>,
}

/// A page size from a query parameter.
fn limit(v: Option<i64>) -> Result<u32, ApiError> {
    Limit::parse(v).map(Limit::get).map_err(|e| ApiError::validation(vec![e]))
}

/// Declares a page type: `data`, `has_more` and `next_cursor`.
macro_rules! page_of {
    ($name:ident, $item:ty) => {
        #[doc = concat!("A page of `", stringify!($item), "`.")]
        #[derive(serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            data: Vec<$item>,
            has_more: bool,
            /// Pass as `starting_after` to get the next page.
            next_cursor: Option<String>,
        }

        impl $name {
            fn new(data: Vec<$item>, has_more: bool) -> Self {
                let next_cursor = if has_more { data.last().map(|i| i.id.clone()) } else { None };
                $name { data, has_more, next_cursor }
            }
        }
    };
}
use page_of;
