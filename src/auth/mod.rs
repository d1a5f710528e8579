//! Authentication and authorisation (SMART on FHIR). Being built (issue 5). So far: SMART
//! scopes (`scopes`), registered backend-services clients (`clients`), the server's token
//! signing keys (`keys`) and the token endpoint (`token`). Requests are not checked yet:
//! `--auth smart` stays refused until every interaction enforces the token's scopes.
pub mod audit;
pub mod clients;
pub mod keys;
pub mod principal;
pub mod scopes;
pub mod token;
