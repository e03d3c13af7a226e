//! Governance: what requests may spend and how fast. Prices and token estimates, budgets and
//! rate limits compiled once from the config, the metering of each request, and the ledger
//! types a store applies atomically.
//!
//! Pure: the store that keeps the counters lives in `gantry-store`, the adapter that calls it
//! in `gantry-ext-proc`.

pub mod estimate;
pub mod ledger;
pub mod metering;
pub mod prices;
pub mod scope;
pub mod spend_report;
pub mod windows;

pub use metering::{GovernancePolicy, Judgement, Metering};
pub use scope::{Caller, ScopeFacts};
