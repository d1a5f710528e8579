//! Composite search parameters (`code-value-quantity=http://loinc.org|8480-6$gt100`): their
//! components must match *together*, on the same component of the same node, so they
//! cannot be answered from the per-type tables, where a blood-pressure panel's
//! "coded 8480-6" row and its "value > 100" row cannot be told apart from rows of two
//! different components.
//!
//! Storage: `search_composite` holds one row per component of each combination the
//! extractor produces. A combination is numbered within its resource (`combo`); its
//! components are rows `component = 0, 1, 2…` in the order of
//! `SearchParameter.component`. A search joins one alias per component on
//! `(resource_type, resource_id, param, combo)`, so all components of one match come from
//! the same combination. A component row uses the columns of its own type, with the same
//! names and meaning as in the per-type tables:
//!
//! | component type | columns |
//! |---|---|
//! | token | `system`, `code` |
//! | quantity | `low`, `high` (the value, or the Range bounds), `system`, `code`, `unit` |
//! | number | `low`, `high` |
//! | date | `date_low`, `date_high` (microseconds, inclusive) |
//! | string | `normalized`, `exact` |
//! | reference | `target_type`, `target_id`, `url` |
//! | uri | `url` |
//!
//! The same migration brings rows written before it in line with what the index writer
//! now stores: a number or quantity that is a single value is indexed as that value
//! (`low = high = value`; the precision of the *search* value decides matches, R4 search
//! "number"), and token `display` holds the lower-cased text `:text` searches. Composite
//! rows of resources stored before this migration appear when the resource is next
//! written.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000003_search_composite"
    }
}

fn script(text_type: &str, float_type: &str) -> String {
    let t = text_type;
    let f = float_type;
    format!(
        r#"
CREATE TABLE IF NOT EXISTS search_composite (
    resource_type {t} NOT NULL, resource_id {t} NOT NULL, param {t} NOT NULL,
    combo INTEGER NOT NULL, component INTEGER NOT NULL,
    system {t}, code {t}, unit {t}, normalized {t}, exact {t},
    target_type {t}, target_id {t}, url {t},
    low {f}, high {f}, date_low BIGINT, date_high BIGINT);
CREATE INDEX IF NOT EXISTS search_composite_value ON search_composite (resource_type, param, component, code);
CREATE INDEX IF NOT EXISTS search_composite_combo ON search_composite (resource_type, resource_id, param, combo, component);
UPDATE search_number SET low = value, high = value WHERE low <> value OR high <> value;
UPDATE search_quantity SET low = value WHERE value IS NOT NULL AND low > -1.0e308 AND low <> value;
UPDATE search_quantity SET high = value WHERE value IS NOT NULL AND high < 1.0e308 AND high <> value;
UPDATE search_token SET display = LOWER(display) WHERE display IS NOT NULL
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
