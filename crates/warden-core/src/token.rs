//! Session tokens: the only way to name a session, validated before anything touches the filesystem.

use std::fmt;

use rand::Rng;

/// The longest token accepted.
pub const MAX_TOKEN_LEN: usize = 64;

/// Length of the tokens [`Token::generate`] makes.
const GENERATED_LEN: usize = 24;

/// A validated session token: `[A-Za-z0-9_-]{1,64}`.
///
/// A `Token` can only be built by validation, so no token can name a path outside `sessions/`
/// (no `/`, no `.`, never empty).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

/// Why a string is not a valid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string was empty.
    #[error("a session token cannot be empty")]
    Empty,
    /// The string was longer than [`MAX_TOKEN_LEN`].
    #[error("a session token has at most {MAX_TOKEN_LEN} characters, got {0}")]
    TooLong(usize),
    /// The string held a character outside `[A-Za-z0-9_-]`.
    #[error("a session token may only hold letters, digits, '_' and '-', found {0:?}")]
    BadCharacter(char),
}

impl Token {
    /// Validates `s` as a token.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(len));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(TokenError::BadCharacter(bad));
        }
        Ok(Self(s.to_owned()))
    }

    /// A new random token (24 alphanumeric characters from the OS-seeded CSPRNG, about 142 bits).
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let s = (0..GENERATED_LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(s)
    }

    /// The token as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.0)
    }
}

impl std::str::FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for Token {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), TokenError>) {
        assert_eq!(Token::parse(input).map(|_| ()), expected, "input {input:?}");
    }

    #[test]
    fn validation() {
        check("shop1", Ok(()));
        check("A-z_09", Ok(()));
        check(&"a".repeat(64), Ok(()));
        check("", Err(TokenError::Empty));
        check(&"a".repeat(65), Err(TokenError::TooLong(65)));
        check("../x", Err(TokenError::BadCharacter('.')));
        check("a/b", Err(TokenError::BadCharacter('/')));
        check("..", Err(TokenError::BadCharacter('.')));
        check("a b", Err(TokenError::BadCharacter(' ')));
        check("é", Err(TokenError::BadCharacter('é')));
        check("a\0", Err(TokenError::BadCharacter('\0')));
    }

    #[test]
    fn generated_tokens_are_valid_and_distinct() {
        let a = Token::generate();
        let b = Token::generate();
        assert!(Token::parse(a.as_str()).is_ok());
        assert_eq!(a.as_str().len(), GENERATED_LEN);
        assert_ne!(a, b);
    }
}
