//! App names: the one piece of user input that reaches file paths, so it is validated before
//! anything touches the filesystem. `^[a-z][a-z0-9-]{1,29}$` (DESIGN.md).

use std::fmt;
use std::str::FromStr;

/// A validated app name. Holding one proves the name is safe to use in paths and log prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a valid app name: use 2 to 30 characters, lowercase letters, digits and dashes, starting with a letter")]
pub struct InvalidAppName(pub String);

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppName {
    type Err = InvalidAppName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && (2..=30).contains(&s.len()) {
            Ok(AppName(s.to_string()))
        } else {
            // Keep the echoed name printable and short: it may be hostile input.
            let shown: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
            Err(InvalidAppName(shown))
        }
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_heroku_style_names() {
        for ok in ["hello", "my-app", "a1", "app-2-go", "abcdefghijklmnopqrstuvwxyz0123"] {
            assert!(ok.parse::<AppName>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "a",
            "Hello",
            "1app",
            "-app",
            "my_app",
            "app.git",
            "../etc",
            "a/b",
            "app name",
            "app;rm",
            "abcdefghijklmnopqrstuvwxyz01234",
            "ünï",
            "app\n",
        ] {
            assert!(bad.parse::<AppName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_names_the_input() {
        let err = "Bad_Name".parse::<AppName>().unwrap_err();
        assert!(err.to_string().contains("'Bad_Name'"));
    }
}
