//! The FHIRPath subset used by the R4 search-parameter expressions (placeholder).
