//! Warehouse tests: the hand-made ledger under sqllogictest files, the balance identity over
//! random histories, frozen `known_at` answers, and region scopes.

mod balance_props;
mod derive_props;
mod incremental;
mod known_at;
mod ledger;
mod local_days;
mod publish;
mod scope;
mod slt;
