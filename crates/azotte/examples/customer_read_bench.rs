//! Customer read cost of the PII vault: reading customers through the service (customer key
//! opened through the tenant key, personal fields decrypted) against reading the same fields
//! from a plain table without encryption, in the same run, on the same SQLite database.
//! Usage: `customer_read_bench [N] [ROUNDS]` (default 2,000 customers, 5 rounds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use azotte::Config;
use azotte_domain::id::TenantId;
use azotte_domain::tenant::Environment;
use azotte_domain::Clock;
use azotte_service::customers::{self, Address, CustomerInput};
use azotte_service::mail::MemoryMailer;
use sqlx::Connection;

#[derive(sqlx::FromRow)]
#[allow(dead_code)]
struct Plain {
    id: String,
    email: String,
    phone: String,
    first_name: String,
    last_name: String,
    street: String,
    city: String,
    postal_code: String,
    country: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
    let overrides = vec![
        ("secret_key", "5e".repeat(32)),
        ("master_key", "6d".repeat(32)),
        ("database_url", url.clone()),
        ("data_dir", dir.path().display().to_string()),
    ];
    let config = Config::load(None, Vec::new(), &overrides).unwrap();
    let ctx =
        azotte::app::context(&config, Clock::system(), Arc::new(MemoryMailer::default())).await.unwrap();

    // A tenant, written directly (the bench needs no platform user), and a system scope in it.
    let tenant = TenantId::new();
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    sqlx::query("INSERT INTO tenants (id, slug, name, status, created_at, updated_at) VALUES (?, 'bench', 'Bench', 'active', ?, ?)")
        .bind(tenant.to_string())
        .bind(&now)
        .bind(&now)
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE plain_customers (id TEXT PRIMARY KEY, email TEXT, phone TEXT, first_name TEXT, last_name TEXT, \
         street TEXT, city TEXT, postal_code TEXT, country TEXT)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let scope =
        azotte_store::auth::system_scope(&ctx.db, tenant, Environment::Development, "bench").await.unwrap();

    eprintln!("creating {n} customers…");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let input = CustomerInput {
            email: Some(format!("customer{i}@example.org")),
            phone: Some(format!("+49151{i:08}")),
            first_name: Some(format!("First{i}")),
            last_name: Some(format!("Last{i}")),
            address: Some(Address {
                street: format!("Street {i}"),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
            country: Some("DE".into()),
            language: Some("de".into()),
            ..Default::default()
        };
        let cu = customers::create(&ctx, &scope, &format!("ext-{i}"), input).await.unwrap();
        sqlx::query("INSERT INTO plain_customers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&cu.id)
            .bind(cu.personal.email.as_deref())
            .bind(cu.personal.phone.as_deref())
            .bind(cu.personal.first_name.as_deref())
            .bind(cu.personal.last_name.as_deref())
            .bind("Street")
            .bind("Berlin")
            .bind("10115")
            .bind("DE")
            .execute(&mut c)
            .await
            .unwrap();
        ids.push(cu.id);
    }
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();

    let (mut vault_secs, mut plain_secs) = (0f64, 0f64);
    for _ in 0..rounds {
        let t = Instant::now();
        for id in &ids {
            let cu = customers::get(&ctx, &scope, id).await.unwrap();
            std::hint::black_box(cu);
        }
        vault_secs += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for id in &ids {
            let mut tx = pool.begin().await.unwrap();
            let p: Plain = sqlx::query_as("SELECT * FROM plain_customers WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            std::hint::black_box(p);
        }
        plain_secs += t.elapsed().as_secs_f64();
    }
    let reads = (n * rounds) as f64;
    println!("customers:                            {n} × {rounds} rounds, SQLite");
    println!("plain table (one read transaction):   {:.0} reads/s", reads / plain_secs);
    println!("service read with the PII vault:      {:.0} reads/s", reads / vault_secs);
    println!("ratio vault / plain:                  {:.2}", plain_secs / vault_secs);
}
