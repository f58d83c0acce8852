// Re-export error types from wa_rs_core for compatibility
pub use wa_rs_core::store::error::{Result, StoreError, db_err};
