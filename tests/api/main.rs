//! HTTP tests of the FHIR REST API, each run against PostgreSQL and SQLite.

mod common;

mod bundles;
mod crud;
mod errors;
mod examples;
mod formats;
mod history;
mod process;
