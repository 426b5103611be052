//! Device readings in (issue 5; DESIGN.md room `ingest`): the GATT decoders, and later the hub,
//! cellular and PHD endpoints, normalisation to profiled Observations, and the device registry.

pub mod gatt;
