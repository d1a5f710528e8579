//! Integration tests: each test starts the real server on port 0 with a fresh database
//! (SQLite, or PostgreSQL when FHIRGATE_TEST_DATABASE_URL is set) and talks HTTP to it.
mod api;
