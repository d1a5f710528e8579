//! Search: the R4 search parameter registry, index-value extraction, and search criteria
//! as SQL conditions.
pub mod compartment;
pub mod criteria;
pub mod extract;
pub mod include;
pub mod observation_stats;
pub mod params;
pub mod sort;
pub mod visibility;

#[cfg(test)]
mod plan_tests;
