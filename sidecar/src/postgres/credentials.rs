//! The database credentials, read from the Secrets the operator mounts at
//! `<SECRETS_DIR>/<kind>/{username,password}` (contract.rs). IO: reads files only.

use std::path::{Path, PathBuf};

/// A role and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct UserPassword {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPassword")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The three roles pgpilot manages and the application database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The bootstrap superuser (`initdb --username`); the sidecar connects as it over the local socket.
    pub superuser: UserPassword,
    /// `LOGIN REPLICATION`: streaming, `pg_basebackup`, and `pg_rewind` (granted the functions it needs).
    pub replication: UserPassword,
    /// Owner of [`Credentials::database`].
    pub app: UserPassword,
    pub database: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
}

impl CredentialsError {
    pub fn category(&self) -> &'static str {
        match self {
            CredentialsError::Read { .. } => "CredentialsRead",
            CredentialsError::Empty { .. } => "CredentialsEmpty",
        }
    }
}

impl Credentials {
    /// Reads `superuser`, `replication` and `app` under `dir` (normally `contract::SECRETS_DIR`).
    /// `database` comes from the spec's bootstrap section.
    pub fn load(dir: &Path, database: &str) -> Result<Self, CredentialsError> {
        Ok(Self {
            superuser: read_pair(&dir.join("superuser"))?,
            replication: read_pair(&dir.join("replication"))?,
            app: read_pair(&dir.join("app"))?,
            database: database.to_owned(),
        })
    }
}

fn read_pair(dir: &Path) -> Result<UserPassword, CredentialsError> {
    Ok(UserPassword {
        username: read_value(&dir.join("username"))?,
        password: read_value(&dir.join("password"))?,
    })
}

/// A Secret key's file; one trailing newline (as `kubectl create secret --from-file` may leave) is dropped.
fn read_value(path: &Path) -> Result<String, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.into(),
        source,
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text).to_owned();
    if value.is_empty() {
        return Err(CredentialsError::Empty { path: path.into() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_each_kind_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("pgpilot-creds-{}", std::process::id()));
        for (kind, user) in [
            ("superuser", "postgres"),
            ("replication", "standby"),
            ("app", "app"),
        ] {
            std::fs::create_dir_all(dir.join(kind)).unwrap();
            std::fs::write(dir.join(kind).join("username"), user).unwrap();
            std::fs::write(dir.join(kind).join("password"), format!("{user}-pw\n")).unwrap();
        }
        let c = Credentials::load(&dir, "appdb").unwrap();
        assert_eq!(c.superuser.username, "postgres");
        assert_eq!(c.replication.password, "standby-pw");
        assert_eq!(c.database, "appdb");
        assert!(
            !format!("{c:?}").contains("-pw"),
            "Debug must not print passwords"
        );

        std::fs::write(dir.join("app").join("password"), "").unwrap();
        assert!(matches!(
            Credentials::load(&dir, "appdb"),
            Err(CredentialsError::Empty { .. })
        ));
        std::fs::remove_file(dir.join("app").join("password")).unwrap();
        assert!(matches!(
            Credentials::load(&dir, "appdb"),
            Err(CredentialsError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
