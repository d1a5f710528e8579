//! Search: the R4 search parameter registry and index-value extraction.
pub mod extract;
pub mod params;
