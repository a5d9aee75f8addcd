//! Bearer tokens: kept hashed (SHA-256) in a JSON file; each names a role and maybe a scope.
//! The file is read again when it changes, so `careledger token create|revoke` take effect on
//! a running server with its next request (see [`TokenRegistry`]).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::Problem;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Ingest only, its own source's records.
    Source(String),
    Analyst,
    Dashboard,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "analyst" => Some(Role::Analyst),
            "dashboard" => Some(Role::Dashboard),
            "admin" => Some(Role::Admin),
            _ => {
                let source = text.strip_prefix("source:")?;
                careledger_model::vocabulary()
                    .list("sources")
                    .contains(source)
                    .then(|| Role::Source(source.to_string()))
            }
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Role::Source(s) => format!("source:{s}"),
            Role::Analyst => "analyst".into(),
            Role::Dashboard => "dashboard".into(),
            Role::Admin => "admin".into(),
        }
    }
}

/// One stored token (only its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    pub name: String,
    pub role: String,
    /// Region code prefix the token is limited to, if any.
    #[serde(default)]
    pub scope: Option<String>,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked: bool,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub scope: Option<String>,
}

/// The token file, in memory, written through on change, and read again when it changes.
///
/// `careledger token create|revoke` rewrite the file while a server runs. Before each
/// authentication the registry compares the file's identity (device, inode, length, change
/// and modification times: one `stat`) with what it last read, and reads it again if it
/// differs, so a revocation or a new token takes effect with the next request. A file that
/// cannot be read or parsed fails closed: every token is refused (503, logged as an error)
/// until the file changes again, never served from the entries read before. A file that is
/// gone is an empty registry (every token is unknown).
#[derive(Debug)]
pub struct TokenRegistry {
    path: Option<PathBuf>,
    state: RwLock<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    entries: Vec<TokenEntry>,
    /// The file as it was when `entries` were read (None: kept in memory only).
    seen: Option<FileState>,
    /// Why the file could not be used, if it could not: every token is refused.
    broken: Option<String>,
}

/// What one `stat` of the token file says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    Missing,
    Present(Stamp),
    Unreadable(String),
}

/// Identity of one version of the file: a rewrite by rename changes the inode, an edit in
/// place the times and usually the length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    unix: (u64, u64, i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            unix: (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()),
        }
    }
}

fn observe(path: &Path) -> FileState {
    match std::fs::metadata(path) {
        Ok(m) => FileState::Present(Stamp::of(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Missing,
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

/// Reads the file: what it was (from the open file, so it matches the bytes read) and its
/// entries, or why they cannot be had.
fn read_file(path: &Path) -> (FileState, Result<Vec<TokenEntry>, String>) {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (FileState::Missing, Ok(Vec::new()));
        }
        Err(e) => return (FileState::Unreadable(e.to_string()), Err(e.to_string())),
    };
    let state = match file.metadata() {
        Ok(m) => FileState::Present(Stamp::of(&m)),
        Err(e) => return (FileState::Unreadable(e.to_string()), Err(e.to_string())),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        return (state, Err(e.to_string()));
    }
    let entries = serde_json::from_slice::<Vec<TokenEntry>>(&bytes)
        .map_err(|e| format!("not a token list: {e}"));
    (state, entries)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenRegistry {
    /// A registry kept only in memory (tests).
    pub fn in_memory() -> TokenRegistry {
        TokenRegistry {
            path: None,
            state: RwLock::new(Loaded::default()),
        }
    }

    /// Loads `path` (an absent file is an empty registry); a file that cannot be read or
    /// parsed is an error.
    pub fn load(path: &Path) -> std::io::Result<TokenRegistry> {
        let (seen, entries) = read_file(path);
        let entries = entries
            .map_err(|e| std::io::Error::other(format!("token file {}: {e}", path.display())))?;
        Ok(TokenRegistry {
            path: Some(path.to_path_buf()),
            state: RwLock::new(Loaded {
                entries,
                seen: Some(seen),
                broken: None,
            }),
        })
    }

    /// Reads the file again if it changed since it was last read (one `stat` otherwise).
    pub fn refresh(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let now = observe(path);
        if self.state.read().expect("lock").seen.as_ref() == Some(&now) {
            return;
        }
        let mut state = self.state.write().expect("lock");
        if state.seen.as_ref() == Some(&observe(path)) {
            return; // another request read it meanwhile
        }
        let (seen, result) = read_file(path);
        match result {
            Ok(entries) => {
                if seen == FileState::Missing {
                    tracing::warn!(path = %path.display(), "the token file is gone: every token is refused");
                } else {
                    tracing::info!(path = %path.display(), tokens = entries.len(), "read the token file again after a change");
                }
                state.entries = entries;
                state.broken = None;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the token file cannot be used: every token is refused until it is fixed");
                state.entries.clear();
                state.broken = Some(e);
            }
        }
        state.seen = Some(seen);
    }

    pub fn is_empty(&self) -> bool {
        self.refresh();
        self.state.read().expect("lock").entries.is_empty()
    }

    pub fn list(&self) -> Vec<TokenEntry> {
        self.refresh();
        self.state.read().expect("lock").entries.clone()
    }

    fn save(&self, state: &mut Loaded) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&state.entries).map_err(std::io::Error::other)?,
        )?;
        restrict(&tmp)?;
        std::fs::rename(&tmp, path)?;
        state.seen = Some(observe(path));
        Ok(())
    }

    /// The entries for a change, after reading the file again if it changed (a change made
    /// by another process is kept); refused while the file is unusable.
    fn for_change(&self) -> std::io::Result<std::sync::RwLockWriteGuard<'_, Loaded>> {
        self.refresh();
        let state = self.state.write().expect("lock");
        if let Some(e) = &state.broken {
            return Err(std::io::Error::other(format!(
                "the token file cannot be used ({e}); fix or remove it first"
            )));
        }
        Ok(state)
    }

    /// Creates a token that does not expire; returns its plain text (shown once, never
    /// stored).
    pub fn create(&self, name: &str, role: &Role, scope: Option<&str>) -> std::io::Result<String> {
        self.create_with_expiry(name, role, scope, None)
    }

    /// Creates a token refused from `expires_at` on (`None`: never); returns its plain text.
    pub fn create_with_expiry(
        &self,
        name: &str,
        role: &Role,
        scope: Option<&str>,
        expires_at: Option<DateTime<Utc>>,
    ) -> std::io::Result<String> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!("cl_{}", hex::encode(bytes));
        let mut state = self.for_change()?;
        if state.entries.iter().any(|e| e.name == name && !e.revoked) {
            return Err(std::io::Error::other(format!(
                "a token named {name} exists"
            )));
        }
        state.entries.push(TokenEntry {
            name: name.to_string(),
            role: role.as_string(),
            scope: scope.map(str::to_string),
            sha256: hash(&token),
            created_at: Utc::now(),
            expires_at,
            revoked: false,
        });
        self.save(&mut state)?;
        Ok(token)
    }

    /// Revokes every live token named `name`; false if there was none.
    pub fn revoke(&self, name: &str) -> std::io::Result<bool> {
        let mut state = self.for_change()?;
        let mut found = false;
        for e in state
            .entries
            .iter_mut()
            .filter(|e| e.name == name && !e.revoked)
        {
            e.revoked = true;
            found = true;
        }
        self.save(&mut state)?;
        Ok(found)
    }

    /// Resolves the `Authorization: Bearer …` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let unauthorized = |detail: &str| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail.to_string())
        };
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("missing Authorization header; send Authorization: Bearer <token>")
        })?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim_start().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
            })
            .ok_or_else(|| unauthorized("Authorization must be Bearer <token>"))?;
        if token.is_empty() {
            return Err(unauthorized(
                "Authorization: Bearer carries no token; send Authorization: Bearer <token>",
            ));
        }
        self.authenticate_token(token)
    }

    /// Resolves a token given by itself (the password of a PostgreSQL or Flight SQL
    /// connection).
    pub fn authenticate_token(&self, token: &str) -> Result<Principal, Problem> {
        let unauthorized = |detail: &str| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail.to_string())
        };
        if token.is_empty() {
            return Err(unauthorized("no token was given"));
        }
        let digest = hash(token);
        self.refresh();
        let state = self.state.read().expect("lock");
        if state.broken.is_some() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token-file-unusable",
                "the server cannot read its token file, so it refuses every token until an operator fixes it",
            ));
        }
        let entry = state
            .entries
            .iter()
            .find(|e| e.sha256 == digest)
            .ok_or_else(|| unauthorized("unknown token"))?;
        if entry.revoked {
            return Err(unauthorized("this token has been revoked"));
        }
        if let Some(t) = entry.expires_at.filter(|t| *t <= Utc::now()) {
            return Err(unauthorized(&format!(
                "this token expired at {}; ask an administrator for a new one",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let role =
            Role::parse(&entry.role).ok_or_else(|| unauthorized("token has an unknown role"))?;
        Ok(Principal {
            name: entry.name.clone(),
            role,
            scope: entry.scope.clone(),
        })
    }
}

#[cfg(unix)]
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
