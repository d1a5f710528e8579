//! Search index: one table per search parameter type, holding the values extracted from
//! the current version of each resource (rewritten on every write, in the same
//! transaction). `resource_id` + `resource_type` point at `resources`.
//!
//! `Reference.identifier` values (for the `:identifier` modifier) are token rows whose
//! `param` is the reference parameter's code followed by `:identifier`.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000002_search_index"
    }
}

/// Column lists per table, in the SQL type names of each backend.
fn script(text_type: &str, float_type: &str) -> String {
    let t = text_type;
    let f = float_type;
    format!(
        r#"
CREATE TABLE IF NOT EXISTS search_token (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    system {t}, code {t}, display {t}, type_system {t}, type_code {t});
CREATE INDEX IF NOT EXISTS search_token_value ON search_token (resource_type, param, code, system);
CREATE INDEX IF NOT EXISTS search_token_resource ON search_token (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_string (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    normalized {t} NOT NULL, exact {t} NOT NULL);
CREATE INDEX IF NOT EXISTS search_string_value ON search_string (resource_type, param, normalized);
CREATE INDEX IF NOT EXISTS search_string_resource ON search_string (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_date (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    low BIGINT NOT NULL, high BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS search_date_value ON search_date (resource_type, param, low, high);
CREATE INDEX IF NOT EXISTS search_date_resource ON search_date (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_reference (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    target_type {t}, target_id {t}, version {t}, url {t} NOT NULL);
CREATE INDEX IF NOT EXISTS search_reference_value ON search_reference (resource_type, param, target_id, target_type);
CREATE INDEX IF NOT EXISTS search_reference_url ON search_reference (resource_type, param, url);
CREATE INDEX IF NOT EXISTS search_reference_target ON search_reference (target_type, target_id);
CREATE INDEX IF NOT EXISTS search_reference_resource ON search_reference (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_number (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    value {f} NOT NULL, low {f} NOT NULL, high {f} NOT NULL);
CREATE INDEX IF NOT EXISTS search_number_value ON search_number (resource_type, param, value);
CREATE INDEX IF NOT EXISTS search_number_resource ON search_number (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_quantity (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    value {f}, low {f} NOT NULL, high {f} NOT NULL, system {t}, code {t}, unit {t});
CREATE INDEX IF NOT EXISTS search_quantity_value ON search_quantity (resource_type, param, code, value);
CREATE INDEX IF NOT EXISTS search_quantity_resource ON search_quantity (resource_type, resource_id);
CREATE TABLE IF NOT EXISTS search_uri (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    value {t} NOT NULL);
CREATE INDEX IF NOT EXISTS search_uri_value ON search_uri (resource_type, param, value);
CREATE INDEX IF NOT EXISTS search_uri_resource ON search_uri (resource_type, resource_id)
"#
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let script = match manager.get_database_backend() {
            DbBackend::Postgres => script("TEXT", "DOUBLE PRECISION"),
            _ => script("TEXT", "REAL"),
        };
        crate::run_script(manager, &script).await
    }
}
