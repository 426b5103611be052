//! HTTP tests of the FHIR REST API, each run against PostgreSQL and SQLite.

mod common;

mod audit;
mod auth;
mod backend_services;
mod batched_creates;
mod batched_reads;

mod billing;
mod bundles;
mod changes;
mod conformance;
mod criteria;
mod crud;
mod email;
mod errors;
mod examples;
mod explorer;
mod federation;
mod formats;
mod gateway;
mod granular_scopes;
mod history;
mod ingest;
mod notify;
mod openapi;
mod process;
mod receiver;
mod search;
mod search_date;
mod search_ops;
mod search_params;
mod search_quantity;
mod search_reference;
mod search_results;
mod search_terminology;
mod smart_apps;
mod subscriptions;
mod tenancy;
mod tls;
mod topics;
mod user_management;
