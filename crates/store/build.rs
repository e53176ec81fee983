//! `sqlx::migrate!` embeds the migration files when this crate compiles; on stable Rust it
//! cannot tell Cargo it read them, so a new or edited migration alone would not rebuild the
//! crate and the binary would run the old set. Tell Cargo here.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
