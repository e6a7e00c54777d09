//! Host identity: an Ed25519 key pair, and the self-certifying endpoint identifier ([`Eid`])
//! that names a host by its public key.
//!
//! The text form of an EID is the 32-byte public key in lowercase RFC 4648 base32 without
//! padding: always 52 characters of `a-z2-7`. For the handshake, both keys are converted to
//! their X25519 (Montgomery) forms, as libsodium's `crypto_sign_ed25519_*_to_curve25519` do.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of an EID in bytes.
pub const EID_LEN: usize = 32;
/// Length of an EID in its text form.
pub const EID_TEXT_LEN: usize = 52;

fn base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    spec.encoding().expect("valid base32 specification")
}

/// A self-certifying endpoint identifier: the host's Ed25519 public key.
///
/// Anyone holding an EID can authenticate the host that owns it without a directory.
/// Construction checks that the bytes are a valid Ed25519 point.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Ord, PartialOrd)]
pub struct Eid([u8; EID_LEN]);

/// Why a string or byte string is not an EID.
#[derive(Debug, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum EidParseError {
    /// The text has the wrong number of characters.
    #[error("an EID is {EID_TEXT_LEN} characters of base32, got {0}")]
    Length(usize),
    /// The text contains a character outside lowercase base32 (`a-z`, `2-7`).
    #[error("invalid character {0:?} at position {1}: an EID is lowercase base32 (a-z, 2-7)")]
    Character(char, usize),
    /// The final character sets padding bits that must be zero.
    #[error("non-canonical base32: the last character sets bits beyond the 32-byte key")]
    NonCanonical,
    /// The bytes decode, but are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    NotAKey,
}

impl Eid {
    /// Wraps 32 bytes, checking that they are a valid Ed25519 public key.
    pub fn from_bytes(bytes: [u8; EID_LEN]) -> Result<Self, EidParseError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| EidParseError::NotAKey)?;
        Ok(Self(bytes))
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; EID_LEN] {
        &self.0
    }

    /// The Ed25519 verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        // Checked at construction.
        VerifyingKey::from_bytes(&self.0).expect("EID bytes were validated")
    }

    /// The X25519 public key that corresponds to this identity (birational map to Montgomery
    /// form). Used as the host's static key in the Noise handshake.
    pub fn x25519_public(&self) -> [u8; 32] {
        self.verifying_key().to_montgomery().to_bytes()
    }

    /// Checks a signature made by this host over `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8; 64]) -> bool {
        self.verifying_key()
            .verify(msg, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eid({self})")
    }
}

impl FromStr for Eid {
    type Err = EidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len != EID_TEXT_LEN {
            return Err(EidParseError::Length(len));
        }
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, 'a'..='z' | '2'..='7'))
        {
            return Err(EidParseError::Character(c, i));
        }
        let bytes = base32()
            .decode(s.as_bytes())
            .map_err(|_| EidParseError::NonCanonical)?;
        let bytes: [u8; EID_LEN] = bytes.try_into().map_err(|_| EidParseError::NonCanonical)?;
        Self::from_bytes(bytes)
    }
}

/// A host's long-term identity: an Ed25519 signing key.
pub struct Identity {
    signing: SigningKey,
    eid: Eid,
}

/// Why a key file could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file does not hold a key in the expected format.
    #[error("key file {path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file can be read by users other than its owner.
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600` on it")]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

const KEY_FILE_HEADER: &str = "sss-ed25519-secret-v1";

impl Identity {
    /// Generates a new identity from a cryptographically secure generator.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_secret_bytes(&SigningKey::generate(rng).to_bytes())
    }

    /// Rebuilds an identity from its 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(secret);
        let eid = Eid(signing.verifying_key().to_bytes());
        Self { signing, eid }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// This host's EID.
    pub fn eid(&self) -> Eid {
        self.eid
    }

    /// The X25519 static secret that corresponds to this identity (the clamped scalar derived
    /// from the Ed25519 seed). Its public key is [`Eid::x25519_public`].
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }

    /// Signs `msg` with the host key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// Writes the secret key to `path` (created or truncated) readable by the owner only.
    ///
    /// The format is one text line: `sss-ed25519-secret-v1 <base32 seed>`.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::io::Write;
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        #[cfg(unix)]
        {
            // `mode` applies only when the file is created; tighten an existing one too.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        let line = Zeroizing::new(format!(
            "{KEY_FILE_HEADER} {}\n",
            base32().encode(&*self.secret_bytes())
        ));
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key written by [`Identity::save`]. Refuses a file that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let shown = || path.display().to_string();
        let format = |reason| KeyFileError::Format {
            path: shown(),
            reason,
        };
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
                    path: shown(),
                    source,
                })?,
            );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| KeyFileError::Io {
                    path: shown(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: shown(),
                    mode: mode & 0o777,
                });
            }
        }
        let mut words = text.split_whitespace();
        if words.next() != Some(KEY_FILE_HEADER) {
            return Err(format("missing the `sss-ed25519-secret-v1` header"));
        }
        let encoded = words.next().ok_or_else(|| format("missing the key"))?;
        if words.next().is_some() {
            return Err(format("unexpected text after the key"));
        }
        let seed = Zeroizing::new(
            base32()
                .decode(encoded.as_bytes())
                .map_err(|_| format("the key is not lowercase base32"))?,
        );
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| format("the key is not 32 bytes"))?;
        Ok(Self::from_secret_bytes(&seed))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("eid", &self.eid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn text_form_is_52_lowercase_base32_chars() {
        let eid = identity(1).eid();
        let text = eid.to_string();
        assert_eq!(text.len(), EID_TEXT_LEN);
        assert!(text.chars().all(|c| matches!(c, 'a'..='z' | '2'..='7')));
        assert_eq!(text.parse::<Eid>().unwrap(), eid);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let text = identity(2).eid().to_string();
        assert_eq!("abc".parse::<Eid>(), Err(EidParseError::Length(3)));
        let upper = text.to_uppercase();
        assert!(matches!(
            upper.parse::<Eid>(),
            Err(EidParseError::Character(_, 0))
        ));
        let mut padded = text[..51].to_string();
        padded.push('=');
        assert_eq!(
            padded.parse::<Eid>(),
            Err(EidParseError::Character('=', 51))
        );
        let mut digit = text[..51].to_string();
        digit.push('1');
        assert_eq!(digit.parse::<Eid>(), Err(EidParseError::Character('1', 51)));
        // The 52nd character carries 4 bits of key and 1 padding bit: flip the padding bit.
        let last = text.as_bytes()[51];
        let idx = "abcdefghijklmnopqrstuvwxyz234567"
            .find(last as char)
            .unwrap();
        let bad = "abcdefghijklmnopqrstuvwxyz234567".as_bytes()[idx ^ 1] as char;
        let mut noncanonical = text[..51].to_string();
        noncanonical.push(bad);
        assert_eq!(
            noncanonical.parse::<Eid>(),
            Err(EidParseError::NonCanonical)
        );
    }

    #[test]
    fn x25519_forms_agree() {
        let id = identity(3);
        let secret = x25519_dalek::StaticSecret::from(*id.x25519_secret());
        let public = x25519_dalek::PublicKey::from(&secret);
        assert_eq!(public.to_bytes(), id.eid().x25519_public());
    }

    #[test]
    fn sign_and_verify() {
        let id = identity(4);
        let sig = id.sign(b"hello");
        assert!(id.eid().verify(b"hello", &sig));
        assert!(!id.eid().verify(b"hellO", &sig));
    }

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = std::env::temp_dir().join(format!("sss-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.key");
        let id = identity(5);
        id.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().eid(), id.eid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load(&path),
                Err(KeyFileError::Permissions { mode: 0o644, .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(KeyFileError::Format { .. })
        ));
        assert!(matches!(
            Identity::load(&dir.join("missing.key")),
            Err(KeyFileError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn eid_text_round_trip(seed in any::<[u8; 32]>()) {
            let eid = Identity::from_secret_bytes(&seed).eid();
            prop_assert_eq!(eid.to_string().parse::<Eid>(), Ok(eid));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Eid>();
        }
    }
}
