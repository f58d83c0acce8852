pub use wa_rs_core::net::{HttpClient, HttpRequest, HttpResponse};
