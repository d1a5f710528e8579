//! Indexes that let a search run from index entries alone.
//!
//! A search starts from its most selective condition (one patient's references, say) and
//! checks every other condition per resource with a seek in that resource's own index
//! entries. So that neither step reads table rows:
//! - the value indexes end with `resource_id`: the starting condition yields ids straight
//!   from the index, a count of one condition is answered from it, and a per-resource
//!   test that names every value column (a reference's type and id) is a single seek;
//! - the per-resource indexes start `(resource_type, resource_id, param…)`, so a
//!   per-resource test never scans a parameter's entries of every resource; the token one
//!   carries `system` as well as `code`, the reference one the target;
//! - `resources_current` holds what a search asks of a resource besides its content
//!   (deleted, last updated), so that the wide rows with the content are read for the
//!   page alone.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000005_covering_indexes"
    }
}

const SCRIPT: &str = r#"
CREATE INDEX IF NOT EXISTS resources_current ON resources (resource_type, id, deleted, last_updated);
CREATE INDEX IF NOT EXISTS search_token_match ON search_token (resource_type, param, code, system, resource_id);
DROP INDEX IF EXISTS search_token_value;
CREATE INDEX IF NOT EXISTS search_token_probe ON search_token (resource_type, resource_id, param, code, system);
DROP INDEX IF EXISTS search_token_sort;
CREATE INDEX IF NOT EXISTS search_string_match ON search_string (resource_type, param, normalized, resource_id);
DROP INDEX IF EXISTS search_string_value;
CREATE INDEX IF NOT EXISTS search_date_match ON search_date (resource_type, param, low, high, resource_id);
DROP INDEX IF EXISTS search_date_value;
CREATE INDEX IF NOT EXISTS search_reference_match ON search_reference (resource_type, param, target_id, target_type, resource_id);
DROP INDEX IF EXISTS search_reference_value;
CREATE INDEX IF NOT EXISTS search_reference_url_match ON search_reference (resource_type, param, url, resource_id);
DROP INDEX IF EXISTS search_reference_url;
CREATE INDEX IF NOT EXISTS search_reference_probe ON search_reference (resource_type, resource_id, param, target_type, target_id, url);
DROP INDEX IF EXISTS search_reference_resource;
CREATE INDEX IF NOT EXISTS search_number_match ON search_number (resource_type, param, value, resource_id);
DROP INDEX IF EXISTS search_number_value;
CREATE INDEX IF NOT EXISTS search_quantity_match ON search_quantity (resource_type, param, code, value, resource_id);
DROP INDEX IF EXISTS search_quantity_value;
CREATE INDEX IF NOT EXISTS search_uri_match ON search_uri (resource_type, param, value, resource_id);
DROP INDEX IF EXISTS search_uri_value;
CREATE INDEX IF NOT EXISTS search_composite_match ON search_composite (resource_type, param, component, code, resource_id);
DROP INDEX IF EXISTS search_composite_value
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_script(manager, SCRIPT).await
    }
}
