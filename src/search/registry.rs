//! The search-parameter registry (placeholder; generated tables land here).
