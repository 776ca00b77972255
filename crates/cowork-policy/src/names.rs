//! Validation of names that become path components: session names
//! (`/sessions/<name>`, the state directory) and mount names
//! (`/sessions/<name>/mnt/<mount>`).

/// Why a name cannot be used as a single path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} must not be \".\" or \"..\"")]
    Dots { what: &'static str, name: String },
    #[error("{what} {name:?} must not contain '/' or NUL")]
    Separator { what: &'static str, name: String },
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Longest accepted name (a filename component on common filesystems).
pub const MAX_NAME_LEN: usize = 255;

fn check_component(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots {
            what,
            name: name.into(),
        });
    }
    if name.contains('/') || name.contains('\0') {
        return Err(NameError::Separator {
            what,
            name: name.into(),
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// A Cowork session name such as `bold-sharp-clarke`.
pub fn validate_session_name(name: &str) -> Result<(), NameError> {
    check_component("session name", name)
}

/// A mount name such as `proj`, `.claude` or `uploads`.
pub fn validate_mount_name(name: &str) -> Result<(), NameError> {
    check_component("mount name", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_table() {
        let long = "x".repeat(256);
        let cases: [(&str, bool); 10] = [
            ("bold-sharp-clarke", true),
            (".claude", true),
            ("my project (1)", true),
            ("..hidden", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("nul\0byte", false),
            (&long, false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_session_name(name).is_ok(), ok, "{name:?}");
            assert_eq!(validate_mount_name(name).is_ok(), ok, "{name:?}");
        }
        assert_eq!(
            validate_session_name("../x").unwrap_err().to_string(),
            "session name \"../x\" must not contain '/' or NUL"
        );
    }
}
