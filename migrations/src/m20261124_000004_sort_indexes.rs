//! Wider per-resource indexes on the index tables: `(resource_type, resource_id, param,
//! value…)` instead of `(resource_type, resource_id)`. They still serve the deletes of a
//! resource's rows on every update, and they also answer `_sort` key lookups (the
//! smallest or largest value of one parameter of one resource) from the index alone.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000004_sort_indexes"
    }
}

const SCRIPT: &str = r#"
CREATE INDEX IF NOT EXISTS search_date_sort ON search_date (resource_type, resource_id, param, low, high);
DROP INDEX IF EXISTS search_date_resource;
CREATE INDEX IF NOT EXISTS search_string_sort ON search_string (resource_type, resource_id, param, normalized);
DROP INDEX IF EXISTS search_string_resource;
CREATE INDEX IF NOT EXISTS search_token_sort ON search_token (resource_type, resource_id, param, code);
DROP INDEX IF EXISTS search_token_resource;
CREATE INDEX IF NOT EXISTS search_number_sort ON search_number (resource_type, resource_id, param, value);
DROP INDEX IF EXISTS search_number_resource;
CREATE INDEX IF NOT EXISTS search_quantity_sort ON search_quantity (resource_type, resource_id, param, value);
DROP INDEX IF EXISTS search_quantity_resource;
CREATE INDEX IF NOT EXISTS search_uri_sort ON search_uri (resource_type, resource_id, param, value);
DROP INDEX IF EXISTS search_uri_resource
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_script(manager, SCRIPT).await
    }
}
