//! Noise protocol framework primitives for `Noise_IK_25519_ChaChaPoly_SHA256`.
