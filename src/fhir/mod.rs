//! FHIR REST semantics: interactions, Bundles, formats, the CapabilityStatement.

pub mod bundle;
pub mod capability;
pub mod parse;
pub mod profiles;
pub mod rest;
pub mod types;
pub mod xml;
