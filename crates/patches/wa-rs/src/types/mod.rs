// Re-export from wa_rs_core for compatibility
pub use wa_rs_core::types::*;

// Local type definitions
pub mod enc_handler;
