pub use wa_rs_core::store::traits::*;
