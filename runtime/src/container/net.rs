//! (filled by the hardening work)
