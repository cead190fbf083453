//! Cgroups v1 and v2 (filled by the cgroups work).
