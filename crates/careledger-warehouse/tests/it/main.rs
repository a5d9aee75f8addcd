//! Warehouse tests: the hand-made ledger under sqllogictest files, the balance identity over
//! random histories, and frozen `known_at` answers.

mod balance_props;
mod known_at;
mod ledger;
mod slt;
