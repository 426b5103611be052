//! HTTP tests of the FHIR REST API, each run against PostgreSQL and SQLite.

mod common;

mod bundles;
mod crud;
mod errors;
mod formats;
mod history;
