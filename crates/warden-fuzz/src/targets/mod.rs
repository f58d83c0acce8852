//! The targets: what an input is fed to, and the rules checked on each answer.

mod config;
mod control;
mod http;
mod record;

pub use config::DaemonToml;
pub use control::Control;
pub use http::Http;
pub use record::SessionToml;

/// A supervisor whose every connection logs in at once (the scripted link), with admission
/// out of the way, in a temporary folder that lives as long as the returned guard.
pub async fn scripted_supervisor() -> std::io::Result<(warden_core::Supervisor, tempfile::TempDir)>
{
    use warden_core::scripted::{Script, ScriptedLink};
    let dir = tempfile::tempdir()?;
    let mut config = warden_core::SupervisorConfig::new(dir.path().join("sessions"));
    config.admission = warden_core::AdmissionConfig {
        max_in_flight: 10_000,
        per_second: 1_000_000.0,
        burst: 10_000,
    };
    let link = ScriptedLink::new(Script::login("15551234567@s.whatsapp.net"));
    let (supervisor, _) = warden_core::Supervisor::start(config, std::sync::Arc::new(link))
        .await
        .map_err(std::io::Error::other)?;
    Ok((supervisor, dir))
}

/// What a target made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it was accepted (else refused with a clear error).
    pub accepted: bool,
    /// Its kind, for the fuzzer's feedback: what it was accepted as, or which error.
    pub kind: String,
}

impl Outcome {
    /// Accepted as `kind`.
    pub fn accepted(kind: impl Into<String>) -> Self {
        Self {
            accepted: true,
            kind: kind.into(),
        }
    }

    /// Refused with `message` (its shape, digits and quoted parts dropped, is the kind).
    pub fn refused(prefix: &str, message: &str) -> Self {
        Self {
            accepted: false,
            kind: format!("{prefix}:{}", shape(message)),
        }
    }
}

/// A message's shape: its last line (a TOML error's description follows the quoted source),
/// without numbers or quoted text, so that "line 3" and "line 7" are one outcome.
pub fn shape(message: &str) -> String {
    let last = message
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    let mut out = String::new();
    let mut quoted = false;
    for c in last.chars() {
        match c {
            '"' | '`' => quoted = !quoted,
            _ if quoted => {}
            '0'..='9' => {}
            c => out.push(c),
        }
        if out.len() >= 48 {
            break;
        }
    }
    out
}

/// A fuzzing target.
#[async_trait::async_trait]
pub trait Target: Send {
    /// Its name, which is also its corpus folder.
    fn name(&self) -> &'static str;
    /// Words the mutator inserts.
    fn dictionary(&self) -> &'static [&'static [u8]];
    /// Feeds one input; `Err` is a violation of a rule, with what went wrong.
    async fn run(&mut self, input: &[u8]) -> Result<Outcome, String>;
    /// After the last input: checks what must still hold (the daemon still answers).
    async fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// How many panics the process has seen, on any thread (counted from the first call on).
pub fn panics() -> usize {
    use std::sync::Once;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Runs `f`, turning a panic into a violation.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| format!("{what} panicked: {}", panic_text(&panic)))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The password the corpora's proxy URLs carry.
pub const SECRET: &str = "S3cretPw";

/// Whether `message` shows a password as a `user:password@` of `input` holds it. (Where the
/// mutator mangled a URL's `:` or `@` away, the text is no longer a password: what is left may
/// be quoted.)
pub fn leaks_password(input: &str, message: &str) -> bool {
    let userinfo = format!(":{SECRET}@");
    input.contains(&userinfo) && message.contains(&userinfo)
}
