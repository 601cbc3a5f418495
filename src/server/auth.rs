//! API keys and roles. A key is a random secret the server never stores: the config holds its
//! SHA-256 (hex), and a request's `Authorization: Bearer KEY` is hashed and compared with every
//! configured hash in constant time. Roles are ordered: `reader` reads, `writer` also writes,
//! `admin` also sees `/metrics` and administration endpoints.
//!
//! Invariants:
//! 1. A key's plaintext is never stored, logged or echoed (only `hadal key new` prints it,
//!    once, to its own user).
//! 2. Checking a key takes the same steps whichever configured key it matches, or none: every
//!    hash is compared in full, with `subtle`'s constant-time equality.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::server::backend::{Error, Result};

/// Bytes of randomness in a generated key (256 bits).
const KEY_RANDOM_BYTES: usize = 32;
/// Prefix of generated keys, so a leaked one is recognisable in a secret scanner.
const KEY_PREFIX: &str = "hadal_";
/// A presented key longer than this is refused without hashing it.
const KEY_BYTES_MAX: usize = 512;

/// What a key may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Reads: `GET` keys and listings, `/v1/info`.
    Reader,
    /// Reads and writes: `PUT`, `DELETE`, `/v1/txn`.
    Writer,
    /// Everything, including `/metrics`.
    Admin,
}

impl KeyRole {
    /// `reader`, `writer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Reader => "reader",
            KeyRole::Writer => "writer",
            KeyRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyRole {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reader" => Ok(KeyRole::Reader),
            "writer" => Ok(KeyRole::Writer),
            "admin" => Ok(KeyRole::Admin),
            other => Err(format!(
                "unknown role {other:?}: use reader, writer or admin"
            )),
        }
    }
}

/// A configured key: a name for logs, a role, and the SHA-256 of the key in hex.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and messages (which client this is).
    pub name: String,
    /// What the key may do.
    pub role: KeyRole,
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the key, but there is no reason to spread it either.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// Checks the hash is 64 hex digits.
    pub fn check(&self) -> Result<()> {
        self.digest().map(|_| ())
    }

    fn digest(&self) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.sha256.trim(), &mut out).map_err(|_| {
            Error::Invalid(format!(
                "API key {:?}: sha256 must be 64 hex digits (the output of `hadal key hash`)",
                self.name
            ))
        })?;
        Ok(out)
    }

    /// Parses `ROLE:SHA256HEX` or `ROLE:SHA256HEX:NAME` (the `--api-key-hash` flag's form).
    pub fn parse_flag(s: &str) -> std::result::Result<ApiKey, String> {
        let mut parts = s.splitn(3, ':');
        let role = parts.next().unwrap_or_default();
        let Some(sha256) = parts.next() else {
            return Err("expected ROLE:SHA256 (e.g. writer:9f86d0…), optionally :NAME".into());
        };
        let role: KeyRole = role.parse()?;
        let name = parts
            .next()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{role}-key"));
        let key = ApiKey {
            name,
            role,
            sha256: sha256.to_owned(),
        };
        key.check().map_err(|e| e.to_string())?;
        Ok(key)
    }
}

/// The SHA-256 of `key` in hex: what goes into the config.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (`hadal_` and 64 hex digits).
pub fn generate_key() -> String {
    let bytes: [u8; KEY_RANDOM_BYTES] = rand::random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Who a request is, once its key was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The configured key's name (`None` while authentication is off).
    pub name: Option<String>,
    /// What the request may do.
    pub role: KeyRole,
}

/// The configured keys, as digests, ready to check requests against.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<(String, KeyRole, [u8; 32])>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("count", &self.keys.len())
            .finish()
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No key, a malformed `Authorization` header, or a key that matches none configured.
    Unauthenticated(String),
    /// A valid key whose role is below the one needed.
    Forbidden {
        /// The key's name.
        name: String,
        /// The key's role.
        role: KeyRole,
        /// The role the operation needs.
        needed: KeyRole,
    },
}

impl Keys {
    /// Digests of `keys` (each checked well-formed).
    pub fn new(keys: &[ApiKey]) -> Result<Keys> {
        let keys = keys
            .iter()
            .map(|k| Ok((k.name.clone(), k.role, k.digest()?)))
            .collect::<Result<_>>()?;
        Ok(Keys { keys })
    }

    /// Whether requests need a key at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a presented key (the part after `Bearer `) and the role the operation needs.
    /// With authentication off, everyone is an admin (allowed on loopback addresses only).
    pub fn authorize(
        &self,
        presented: Option<&str>,
        needed: KeyRole,
    ) -> std::result::Result<Principal, Denied> {
        if !self.enabled() {
            return Ok(Principal {
                name: None,
                role: KeyRole::Admin,
            });
        }
        let Some(presented) = presented else {
            return Err(Denied::Unauthenticated(
                "this server requires an API key: send `Authorization: Bearer KEY`".into(),
            ));
        };
        if presented.len() > KEY_BYTES_MAX {
            return Err(Denied::Unauthenticated("the API key is not valid".into()));
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Invariant 2: compare against every key, keep the best match, branch on nothing secret
        // inside the loop.
        let mut found: Option<(&str, KeyRole)> = None;
        for (name, role, want) in &self.keys {
            let equal: bool = want[..].ct_eq(&digest[..]).into();
            if equal && found.is_none_or(|(_, r)| *role > r) {
                found = Some((name, *role));
            }
        }
        let Some((name, role)) = found else {
            return Err(Denied::Unauthenticated("the API key is not valid".into()));
        };
        if role < needed {
            return Err(Denied::Forbidden {
                name: name.to_owned(),
                role,
                needed,
            });
        }
        Ok(Principal {
            name: Some(name.to_owned()),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, String, String) {
        let reader = generate_key();
        let admin = generate_key();
        let keys = Keys::new(&[
            ApiKey {
                name: "r".into(),
                role: KeyRole::Reader,
                sha256: hash_key(&reader),
            },
            ApiKey {
                name: "a".into(),
                role: KeyRole::Admin,
                sha256: hash_key(&admin),
            },
        ])
        .expect("keys");
        (keys, reader, admin)
    }

    #[test]
    fn roles_are_checked_against_the_hash_of_the_presented_key() {
        // Proves a key is matched by its hash, roles are ordered, and a wrong or missing key
        // is unauthenticated while a weak key is forbidden.
        let (keys, reader, admin) = keys();
        assert_eq!(
            keys.authorize(Some(&reader), KeyRole::Reader)
                .expect("reader reads")
                .name
                .as_deref(),
            Some("r")
        );
        assert!(matches!(
            keys.authorize(Some(&reader), KeyRole::Writer),
            Err(Denied::Forbidden {
                role: KeyRole::Reader,
                needed: KeyRole::Writer,
                ..
            })
        ));
        assert!(keys.authorize(Some(&admin), KeyRole::Admin).is_ok());
        assert!(matches!(
            keys.authorize(Some("hadal_nope"), KeyRole::Reader),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authorize(None, KeyRole::Reader),
            Err(Denied::Unauthenticated(_))
        ));
        // The hash itself is not a key.
        assert!(
            keys.authorize(Some(&hash_key(&reader)), KeyRole::Reader)
                .is_err()
        );
    }

    #[test]
    fn flag_form_and_hash_format_are_checked() {
        // Proves `--api-key-hash` parsing and that a malformed hash is refused by key name.
        let k = ApiKey::parse_flag(&format!("writer:{}:ci", "0f".repeat(32))).expect("flag");
        assert_eq!((k.role, k.name.as_str()), (KeyRole::Writer, "ci"));
        assert!(ApiKey::parse_flag("writer").is_err());
        assert!(ApiKey::parse_flag("boss:00").is_err());
        let e = ApiKey::parse_flag("reader:1234").expect_err("short hash");
        assert!(e.contains("64 hex"), "{e}");
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(generate_key().starts_with("hadal_"));
        assert!(
            Keys::new(&[])
                .expect("none")
                .authorize(None, KeyRole::Admin)
                .is_ok()
        );
    }
}
