//! careledger's vocabulary: code lists, table contracts, regions, resident IDs, pseudonyms,
//! column-wise validation and the status rule. No IO, no async: everything here is a pure
//! function of its inputs (the contract files are compiled in with `include_str!`).

pub mod codes;
pub mod local_time;
pub mod pseudonym;
pub mod region;
pub mod resident_id;
pub mod schema;
pub mod sheets;
pub mod status;
pub mod validate;

pub use codes::{Code, CodeList, Vocabulary, vocabulary};
pub use local_time::LocalZone;
pub use pseudonym::PseudonymKey;
pub use region::{Region, RegionLevel, RegionTable, regions};
pub use resident_id::{IdError, ResidentId, contains_id_like, mask_id, redact_ids};
pub use schema::{FieldKind, FieldSpec, Table, TableSpec};
pub use sheets::{SheetProfile, sheet_headers};
pub use status::{RuleParams, StatusEpisode, derive_episodes};
pub use validate::{
    MAX_MESSAGE_CHARS, RowError, ValidatedBatch, ValidationContext, epoch_days, from_epoch_days,
    validate_batch, validate_batch_refusing, validate_batch_scoped,
};

/// The version of the contract in `schemas/` that this build speaks.
pub const SCHEMA_VERSION: &str = "v1";
