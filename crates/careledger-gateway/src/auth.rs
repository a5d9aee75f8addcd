//! Bearer tokens: kept hashed (SHA-256) in a JSON file; each names a role and maybe a scope.

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

/// The token file, in memory, written through on change.
#[derive(Debug)]
pub struct TokenRegistry {
    path: Option<PathBuf>,
    entries: RwLock<Vec<TokenEntry>>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenRegistry {
    /// A registry kept only in memory (tests).
    pub fn in_memory() -> TokenRegistry {
        TokenRegistry {
            path: None,
            entries: RwLock::new(Vec::new()),
        }
    }

    /// Loads `path` (an absent file is an empty registry).
    pub fn load(path: &Path) -> std::io::Result<TokenRegistry> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(TokenRegistry {
            path: Some(path.to_path_buf()),
            entries: RwLock::new(entries),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().expect("lock").is_empty()
    }

    pub fn list(&self) -> Vec<TokenEntry> {
        self.entries.read().expect("lock").clone()
    }

    fn save(&self, entries: &[TokenEntry]) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?,
        )?;
        restrict(&tmp)?;
        std::fs::rename(&tmp, path)
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
        let mut entries = self.entries.write().expect("lock");
        if entries.iter().any(|e| e.name == name && !e.revoked) {
            return Err(std::io::Error::other(format!(
                "a token named {name} exists"
            )));
        }
        entries.push(TokenEntry {
            name: name.to_string(),
            role: role.as_string(),
            scope: scope.map(str::to_string),
            sha256: hash(&token),
            created_at: Utc::now(),
            expires_at,
            revoked: false,
        });
        self.save(&entries)?;
        Ok(token)
    }

    /// Revokes every live token named `name`; false if there was none.
    pub fn revoke(&self, name: &str) -> std::io::Result<bool> {
        let mut entries = self.entries.write().expect("lock");
        let mut found = false;
        for e in entries.iter_mut().filter(|e| e.name == name && !e.revoked) {
            e.revoked = true;
            found = true;
        }
        self.save(&entries)?;
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
        let digest = hash(token);
        let entries = self.entries.read().expect("lock");
        let entry = entries
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
