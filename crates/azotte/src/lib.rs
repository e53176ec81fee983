//! The `azotte` binary's library half: configuration, telemetry and the application wiring,
//! shared by `main.rs` and the integration tests.

pub mod app;
pub mod config;
pub mod telemetry;

pub use app::{Application, StartError};
pub use config::Config;
