//! Subscriptions (issue 6, DESIGN.md room `subscriptions`): matching committed changes, read
//! from the change log after commit (`store::changes`), against what customers subscribed to,
//! and delivering the notifications. This far: the criteria matcher.

pub mod criteria;
