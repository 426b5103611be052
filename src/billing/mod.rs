//! Monthly billing (issue 7, DESIGN.md room `billing`): the catalog, the days each device and
//! hub was active for each customer, Invoices, RPM Claims, payments and statements.
//!
//! - [`activity`]: from a Device's versions, the days of a month (in the customer's time zone)
//!   it was active for each customer (pure);
//! - [`price`]: money in minor units, proration and tax (pure);
//! - [`catalog`]: ChargeItemDefinitions read as prices, and the one that prices a device
//!   (pure);
//! - [`invoice`]: a customer's month as ChargeItems and one Invoice (pure);
//! - [`rpm`]: the remote-monitoring CPT codes a patient's period earns, by rules kept as data
//!   (pure);
//! - [`payment`]: payments recorded against invoices (`Invoice/[id]/$record-payment`);
//! - [`claims`]: RPM Claims per patient and ended 30-day period from the stored readings;
//! - [`run`]: a month's run over the store, through the one write path;
//! - [`statement`]: each issued invoice e-mailed to the recipient's billing contact;
//! - [`schedule`]: the run at each month's end inside `serve`, once across processes.

pub mod activity;
pub mod catalog;
pub mod claims;
pub mod invoice;
pub mod payment;
pub mod price;
pub mod rpm;
pub mod run;
pub mod schedule;
pub mod statement;

pub use activity::Month;
